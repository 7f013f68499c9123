"""Datasets in the Udacity landmark layout: scanning, decoding, caching, downloading."""

from landmark.data.datasets import (
    TensorImageDataset,
    default_val_split,
    split_unknown,
    stratified_split,
)
from landmark.data.imageio import ImageError, load_image
from landmark.data.layout import DatasetError, Split, display_name, scan_split

__all__ = ["DatasetError", "ImageError", "Split", "TensorImageDataset", "default_val_split",
           "display_name", "load_image", "scan_split", "split_unknown", "stratified_split"]

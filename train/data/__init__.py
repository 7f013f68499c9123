"""Datasets in the Udacity landmark layout: scanning, splitting, caching, downloading."""

from train.data.datasets import (
    TensorImageDataset,
    default_val_split,
    split_unknown,
    stratified_split,
)
from train.data.layout import DatasetError, Split, scan_split

__all__ = ["DatasetError", "Split", "TensorImageDataset", "default_val_split", "scan_split",
           "split_unknown", "stratified_split"]

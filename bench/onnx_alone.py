"""The ONNX file alone, on crops already decoded: the limit both bench.service and
bench.int8 compare against, measured one way."""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from landmark.predict import Predictor
from landmark.runtime import INPUT


def onnx_input(pred: Predictor, path: Path) -> np.ndarray:
    """A photo as the `.onnx` file takes it: decoded, resized, preprocessed."""
    return pred.module.pre(pred.prepare(pred.load(path))[None].float() / 255).contiguous().numpy()


def onnx_rate(path: Path, crops: list[np.ndarray], threads: int) -> float:
    """Crops a second through the ONNX file at `path` called from `threads` threads, each
    with its share of the cores, after 8 warm-up calls."""
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, (os.cpu_count() or 1) // threads)
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def run(x: np.ndarray) -> object:
        return session.run(None, {INPUT: x})
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(run, crops[:8]))
        start = time.perf_counter()
        list(pool.map(run, crops))
        return len(crops) / (time.perf_counter() - start)

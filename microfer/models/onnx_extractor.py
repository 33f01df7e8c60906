"""A network feature path exported to ONNX, run by onnxruntime: numpy in, numpy out.

What a bundle's `predict` uses instead of torch + timm: importing those two costs about
4 s and 1 GB before the first clip, onnxruntime about 0.2 s and 60 MB. The graph is
exported from the same extractor at `train` time (`MobileViTExtractor.to_onnx`), so the
features agree with torch's to float rounding; `tests/test_predict.py` holds them to it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import numpy as np

from microfer.errors import BundleError, MicroferError


def onnxruntime_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("onnxruntime") is not None


class OnnxExtractor:
    """(N, 3, S, S) float32 inputs -> (N, D) float32 features through an ONNX file."""

    def __init__(self, path, num_threads: Optional[int] = None, batch_size: int = 32):
        import onnxruntime as ort

        self.path = Path(path)
        options = ort.SessionOptions()
        options.log_severity_level = (
            3  # its warnings about unused initialisers are not the user's business
        )
        if num_threads:
            options.intra_op_num_threads = int(num_threads)
            options.inter_op_num_threads = 1
        try:
            self._session = ort.InferenceSession(
                str(self.path), options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
            raise BundleError(
                f"{self.path}: not a usable ONNX model ({str(exc).splitlines()[0]})"
            ) from None
        inputs = self._session.get_inputs()
        if len(inputs) != 1 or len(inputs[0].shape) != 4:
            raise BundleError(
                f"{self.path}: expected one (N, 3, S, S) input, found "
                f"{[(i.name, i.shape) for i in inputs]}"
            )
        self._input = inputs[0].name
        self.crop_size = inputs[0].shape[-1]
        self.batch_size = int(batch_size)

    def settings(self) -> dict[str, Any]:
        return {"onnx": self.path.name}

    def __call__(self, inputs: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(inputs, dtype=np.float32)
        if x.ndim != 4 or x.shape[1] != 3:
            raise MicroferError(f"extractor expects inputs of shape (N, 3, H, W), got {x.shape}")
        if isinstance(self.crop_size, int) and x.shape[-2:] != (self.crop_size, self.crop_size):
            raise MicroferError(
                f"{self.path.name}: exported for {self.crop_size} px inputs, got "
                f"{x.shape[-2]}x{x.shape[-1]}"
            )
        return np.concatenate(
            [
                self._session.run(None, {self._input: x[i : i + self.batch_size]})[0]
                for i in range(0, len(x), self.batch_size)
            ]
        ).astype(np.float32, copy=False)

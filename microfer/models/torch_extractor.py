"""What every torch feature extractor shares: a frozen network cut at one layer whose feature
map (N, C, h, w) is pooled; numpy in, numpy out; its weights as a state dict (bundles) and
its whole feature path as ONNX (`predict` without torch).

Subclasses build `self._net` (eval mode) and set `variant`, `layer`, `pool` ("avg" or
"grid2"), `input_size`, `batch_size`, `device` and `channels`.
"""

from __future__ import annotations

import numpy as np

from microfer.errors import BundleError, MicroferError

POOLS = ("avg", "grid2")


class TorchExtractor:
    """The shared half of a frozen torch extractor (see the module docstring)."""

    def _settle(
        self,
        variant: str,
        layer: str,
        pool: str,
        input_size: int,
        seed: int,
        batch_size: int,
        num_threads,
        device: str,
    ) -> None:
        """Check the pooling, set the common attributes and torch's thread count."""
        import torch

        if pool not in POOLS:
            raise MicroferError(f"unknown pooling {pool!r}; expected one of {', '.join(POOLS)}")
        if num_threads:
            torch.set_num_threads(int(num_threads))
        self.variant, self.layer, self.pool = variant, layer, pool
        self.input_size, self.seed, self.batch_size = int(input_size), int(seed), int(batch_size)
        self.device = torch.device(device)

    def settings(self) -> dict:
        """What determines the features (used for feature-cache keys)."""
        return {
            "variant": self.variant,
            "layer": self.layer,
            "pool": self.pool,
            "input_size": self.input_size,
            "seed": self.seed,
            "block_weights_sha256": (getattr(self, "block_meta", None) or {}).get("weights_sha256"),
        }

    @property
    def feature_dim(self) -> int:
        return self.channels * (4 if self.pool == "grid2" else 1)

    def state_dict(self) -> dict:
        """Weights of the network up to `layer` (timm key names, CPU tensors), e.g. for a model bundle."""
        return {k: v.detach().cpu().contiguous() for k, v in self._net.state_dict().items()}

    def load_state_dict(self, state: dict, source: str = "network weights") -> None:
        """Load weights saved by `state_dict()` of an extractor with the same settings (strict).

        Raises BundleError naming `source` when keys or shapes differ. Values may be torch
        tensors or numpy arrays (a loaded bundle holds numpy arrays).
        """
        import torch

        expected = self._net.state_dict()
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        if missing or unexpected:
            raise BundleError(
                f"{source}: keys do not match {self.variant} up to {self.layer} "
                f"(missing {missing[:5]}, unexpected {unexpected[:5]})"
            )
        bad = [k for k, v in expected.items() if tuple(state[k].shape) != tuple(v.shape)]
        if bad:
            raise BundleError(
                f"{source}: {len(bad)} tensors have the wrong shape for {self.variant} "
                f"(e.g. {bad[0]}: {tuple(state[bad[0]].shape)}, expected {tuple(expected[bad[0]].shape)})"
            )
        self._net.load_state_dict(
            {k: torch.as_tensor(v).to(self.device) for k, v in state.items()}, strict=True
        )
        self._net.eval()

    def _pool(self, fmap):
        import torch.nn.functional as F

        if self.pool == "avg":
            return fmap.mean(dim=(2, 3))
        return F.adaptive_avg_pool2d(fmap, 2).flatten(1)

    def to_onnx(self, crop_size: int) -> bytes:
        """The whole feature path (resize to input_size, network, pooling) as an ONNX model.

        `crop_size` is the side of the inputs it will be given (the prepared face crop): the
        graph resizes from it exactly as `__call__` does, so onnxruntime gives the same
        features without importing torch. The batch dimension stays free.
        """
        import io
        import warnings

        import torch
        import torch.nn.functional as F

        extractor = self

        class FeaturePath(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.net = extractor._net

            def forward(self, x):
                if x.shape[-1] != extractor.input_size:
                    x = F.interpolate(
                        x,
                        size=(extractor.input_size, extractor.input_size),
                        mode="bilinear",
                        align_corners=False,
                    )
                return extractor._pool(self.net(x))

        probe = torch.zeros(1, 3, int(crop_size), int(crop_size))
        buf = io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter(
                "ignore"
            )  # tracer notes on timm's shape arithmetic: constants here
            torch.onnx.export(
                FeaturePath().eval(),
                (probe,),
                buf,
                input_names=["input"],
                output_names=["features"],
                dynamic_axes={"input": {0: "n"}, "features": {0: "n"}},
                opset_version=17,
                dynamo=False,
            )
        return buf.getvalue()

    def __call__(self, inputs: np.ndarray) -> np.ndarray:
        import torch
        import torch.nn.functional as F

        x = np.asarray(inputs, dtype=np.float32)
        if x.ndim != 4 or x.shape[1] != 3:
            raise MicroferError(f"extractor expects inputs of shape (N, 3, H, W), got {x.shape}")
        out = np.zeros((x.shape[0], self.feature_dim), np.float32)
        with torch.inference_mode():
            for start in range(0, x.shape[0], self.batch_size):
                batch = torch.from_numpy(
                    np.ascontiguousarray(x[start : start + self.batch_size])
                ).to(self.device)
                if batch.shape[-2:] != (self.input_size, self.input_size):
                    batch = F.interpolate(
                        batch,
                        size=(self.input_size, self.input_size),
                        mode="bilinear",
                        align_corners=False,
                    )
                out[start : start + len(batch)] = self._pool(self._net(batch)).float().cpu().numpy()
        return out

    extract = __call__

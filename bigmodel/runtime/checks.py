"""Input checks done before any backend sees an array: shape, dtype, range, finiteness."""

from __future__ import annotations

import numpy as np

from bigmodel.errors import InputError
from bigmodel.manifest import BATCH, DataSpec, TensorSpec

_FLOATS = (np.float16, np.float32, np.float64)


def prepare(spec: TensorSpec, value, data: DataSpec, what: str) -> np.ndarray:
    """`value` as a C-contiguous array of the graph's dtype and shape (batch axis added for one sample).

    uint8 images are scaled by the data spec (x / scale); other floats are cast. Anything else,
    a wrong shape, an empty batch or a NaN/Inf is an InputError naming expected and got.
    """
    x = np.asarray(value)
    expected = tuple(spec.shape)
    if x.dtype == np.uint8 and spec.kind == "image":
        x = x.astype(np.float32) / np.float32(data.scale)
    elif x.dtype not in _FLOATS and not np.issubdtype(x.dtype, np.integer):
        raise InputError(f"{what}: expected float32 (or uint8 images) of shape {_fmt(expected)}; got dtype {x.dtype}")
    if x.ndim == len(expected) - 1:
        x = x[None]
    if x.ndim != len(expected) or any(e != BATCH and e != g for e, g in zip(expected, x.shape, strict=True)):
        hint = f" (latent size is {expected[1]})" if spec.kind == "latent" else ""
        raise InputError(f"{what}: expected shape {_fmt(expected)}{hint}; got {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise InputError(f"{what}: expected at least one sample; got an empty batch of shape {tuple(x.shape)}")
    x = np.ascontiguousarray(x, dtype=spec.dtype)
    if not np.isfinite(x).all():
        bad = int(np.size(x) - np.isfinite(x).sum())
        raise InputError(f"{what}: expected finite values; got {bad} NaN/Inf value(s)")
    return x


def _fmt(shape: tuple) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ")"

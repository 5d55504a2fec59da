"""Input checks done before any backend sees an array: dtype, shape, batch, finiteness.

Everything that depends only on the manifest (dtype, expected shape, uint8 scaling) is computed
once per graph input at load; `Input.prepare` does only the per-call work.
"""

from __future__ import annotations

import math

import numpy as np

from bigmodel.errors import InputError
from bigmodel.manifest import BATCH, DataSpec, TensorSpec


class Input:
    """One graph input's contract, compiled from its TensorSpec and the bundle's data spec."""

    __slots__ = ("name", "what", "dtype", "shape", "tail", "rank", "kind", "u8_div", "u8_add", "f32")

    def __init__(self, spec: TensorSpec, data: DataSpec, what: str):
        self.name = spec.name
        self.what = what
        self.dtype = np.dtype(spec.dtype)
        self.shape = tuple(spec.shape)
        if not self.shape or self.shape[0] != BATCH or BATCH in self.shape[1:]:
            from bigmodel.errors import BundleError

            raise BundleError(f"{what}: expected a shape with one leading 'batch' axis; got {list(self.shape)}")
        self.tail = tuple(int(d) for d in self.shape[1:])
        self.rank = len(self.shape)
        self.kind = spec.kind
        self.f32 = self.dtype == np.float32
        lo, hi = data.value_range
        # uint8 pixels -> the data range: lo + x / (scale / (hi - lo)); for [0, 1] exactly the x / scale
        # that bigmodel.data applied to the training images
        self.u8_div = np.float32(data.scale / (hi - lo))
        self.u8_add = np.float32(lo)

    def prepare(self, value) -> np.ndarray:
        """`value` as a C-contiguous array of the graph's dtype with a batch axis, or InputError."""
        x = value if type(value) is np.ndarray else np.asarray(value)
        dt = x.dtype
        if dt != self.dtype:
            if dt == np.uint8 and self.kind == "image":
                x = x.astype(np.float32)
                x /= self.u8_div
                if self.u8_add:
                    x += self.u8_add
                x = x.astype(self.dtype, copy=False)
            elif dt.kind == "f":
                x = x.astype(self.dtype)
            else:
                accepted = "float32 (or uint8 images)" if self.kind == "image" else "float32"
                raise InputError(f"{self.what}: expected {accepted} of shape {self.fmt()}; got dtype {dt}")
        shape = x.shape
        if len(shape) == self.rank - 1 and shape == self.tail:  # one sample without the batch axis
            x = x[None]
            shape = x.shape
        elif len(shape) != self.rank or shape[1:] != self.tail:
            hint = f" (latent size {self.tail[0]})" if self.kind == "latent" and len(self.tail) == 1 else ""
            raise InputError(f"{self.what}: expected shape {self.fmt()}{hint}; got {shape}")
        if shape[0] == 0:
            raise InputError(f"{self.what}: expected at least one sample; got an empty batch of shape {shape}")
        if not x.flags.c_contiguous:
            x = np.ascontiguousarray(x)
        if not _all_finite_fast(x, self.f32):
            bad = int(x.size - np.count_nonzero(np.isfinite(x)))
            if bad:
                raise InputError(f"{self.what}: expected finite values; got {bad} NaN/Inf value(s) of {x.size}")
        return x

    def fmt(self) -> str:
        return "(" + ", ".join(str(s) for s in self.shape) + ")"


_TINY = 64
_SMALL = 8192
_ZEROS = np.zeros(_SMALL, np.float32)
_ZEROS.flags.writeable = False


def _all_finite_fast(x: np.ndarray, f32: bool) -> bool:
    """True if every value of contiguous `x` is finite; False means "maybe not" (check exactly).

    One pass, no temporary array, no floating-point warnings on valid input. Tiny arrays (one
    code): a sum of Python floats (doubles, so float32 values cannot overflow it) -- in between
    onnxruntime calls this beats any numpy call, whose dispatch has been evicted from the caches.
    Small float32 arrays: the dot product with zeros is 0 unless a value is NaN or Inf (0 * Inf =
    NaN) and cannot overflow. Larger: a sum, finite unless a value is NaN/Inf or the sum overflows.
    """
    flat = x.ravel()  # a view: x is C-contiguous
    n = flat.size
    if n <= _TINY:
        return math.isfinite(sum(flat.tolist()))
    if f32 and n <= _SMALL:
        return math.isfinite(flat.dot(_ZEROS[:n]))
    with np.errstate(over="ignore", invalid="ignore"):
        return math.isfinite(np.add.reduce(flat))


def prepare(spec: TensorSpec, value, data: DataSpec, what: str) -> np.ndarray:
    """One-off form of `Input(spec, data, what).prepare(value)`."""
    return Input(spec, data, what).prepare(value)

"""Input checks done before any backend sees an array: dtype, shape, batch, finiteness, value range;
and the check that outputs came back finite.

Everything that depends only on the manifest (dtype, expected shape, uint8 scaling, range bounds) is
computed once per graph input at load; `Input.prepare` does only the per-call work: for images one
min and one max (NaN and Inf fail them too), for codes one finiteness pass, for class labels one
min and one max against [0, classes).
"""

from __future__ import annotations

import math
import os

import numpy as np

from bigmodel.errors import InputError
from bigmodel.manifest import BATCH, DataSpec, TensorSpec


class Input:
    """One graph input's contract, compiled from its TensorSpec and the bundle's data spec."""

    __slots__ = ("name", "what", "dtype", "shape", "tail", "rank", "kind", "u8_div", "u8_add", "f32", "lo", "hi",
                 "range_text", "range_name", "classes", "prepare")

    def __init__(self, spec: TensorSpec, data: DataSpec, what: str, check_range: bool = True):
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
        # an image's own range (a DCGAN generator's tanh: [-1, 1]), else the bundle's data range
        lo, hi = (float(v) for v in spec.range) if spec.range else data.value_range
        self.range_name = "its declared range" if spec.range else "the data range"
        # uint8 pixels -> that range: lo + x / (scale / (hi - lo)); for [0, 1] exactly the x / scale
        # that bigmodel.data applied to the training images
        self.u8_div = np.float32(data.scale / (hi - lo))
        self.u8_add = np.float32(lo)
        # float images must lie in their range, give or take RANGE_SLACK of it (rounding, fp16 round trips)
        self.lo = self.hi = None
        if check_range and self.kind == "image":
            slack = RANGE_SLACK * (hi - lo)
            self.lo, self.hi = lo - slack, hi + slack
        self.range_text = f"[{lo:g}, {hi:g}]"
        self.classes = spec.classes
        if self.kind == "label":  # class ids, always checked (an id out of range is no value a model has)
            if self.dtype.kind not in "iu" or self.tail:
                from bigmodel.errors import BundleError

                raise BundleError(f"{what}: a label input is integer class ids of shape (batch,); the manifest "
                                  f"says {spec.dtype} {list(self.shape)}")
            self.lo, self.hi = 0, (int(spec.classes) - 1 if spec.classes else np.iinfo(self.dtype).max)
            self.range_text = f"[0, {spec.classes})" if spec.classes else "[0, ...)"
        # prepare(value): `value` as a C-contiguous array of the graph's dtype with a batch axis, or InputError
        self.prepare = self._compile_prepare()

    def _compile_prepare(self):
        """The `prepare` closure: the common call (a C-contiguous batch of the graph's dtype whose values
        pass) checked with every constant bound at load and no other call; anything else, or values
        that fail the fast check, goes to `_convert`, which converts, re-checks exactly and explains."""
        ndarray, dtype, rank, tail, f32 = np.ndarray, self.dtype, self.rank, self.tail, self.f32
        lo, hi = self.lo, self.hi
        convert, finite_flat = self._convert, _all_finite_flat

        if lo is not None:
            def prepare_image(value) -> np.ndarray:
                if type(value) is ndarray and value.dtype is dtype:
                    shape = value.shape
                    if len(shape) == rank and shape[1:] == tail and shape[0] and value.flags.c_contiguous:
                        flat = value.ravel()  # a view; min/max propagate NaN: one comparison covers NaN, Inf, range
                        if _min(flat) >= lo and _max(flat) <= hi:
                            return value
                return convert(value)

            return prepare_image

        def prepare(value) -> np.ndarray:
            if type(value) is ndarray and value.dtype is dtype:
                shape = value.shape
                if len(shape) == rank and shape[1:] == tail and shape[0] and value.flags.c_contiguous:
                    if finite_flat(value.ravel(), f32):
                        return value
            return convert(value)

        return prepare

    def _check_values(self, x: np.ndarray) -> np.ndarray:
        """`x` (C-contiguous, graph dtype) if its values are finite and, for images, in the data range."""
        flat = x.ravel()  # a view; 1-D reductions are numpy's fastest path
        if self.lo is not None:
            # min/max propagate NaN, so one comparison covers NaN, Inf and the range
            if not (_min(flat) >= self.lo and _max(flat) <= self.hi):
                self._refuse(x)
        elif not _all_finite_flat(flat, self.f32):
            self._refuse(x)
        return x

    def _convert(self, value) -> np.ndarray:
        """`prepare` for everything but the common call: other dtypes, one sample, lists, strided arrays."""
        x = value if type(value) is np.ndarray else _as_array(value, self.what)
        dt = x.dtype
        checked = False  # True once the values are known finite and in range (uint8 pixels are)
        if dt != self.dtype:
            if self.dtype.kind in "iu":  # class ids (or other integer inputs): integers only, never floats
                if dt.kind not in "iu":
                    raise InputError(f"{self.what}: expected integer {self._ids()} of shape {self.fmt()}; "
                                     f"got dtype {dt}")
                x = x.astype(self.dtype)  # an id too big for it wraps: refused by the range check below
            elif dt == np.uint8 and self.kind == "image":
                x = x.astype(np.float32)
                x /= self.u8_div
                if self.u8_add:
                    x += self.u8_add
                x = x.astype(self.dtype, copy=False)
                checked = True
            elif dt.kind == "f":
                with np.errstate(over="ignore"):  # float64 beyond float32: Inf, refused below without a warning
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
        return x if checked else self._check_values(x)

    def _ids(self) -> str:
        return "class ids (int64)" if self.kind == "label" else str(self.dtype)

    def _refuse(self, x: np.ndarray) -> None:
        """Raise the InputError that explains why `x` failed the fast check (if it really fails)."""
        if self.kind == "label":
            out = (x < self.lo) | (x > self.hi)
            if out.any():
                first = _first_index(out, x.shape)
                raise InputError(f"{self.what}: expected class ids in {self.range_text}; got values from "
                                 f"{int(x.min())} to {int(x.max())}, the first outside at index {first[0]} "
                                 f"({int(x[first])})")
            return
        finite = np.isfinite(x)
        bad = int(x.size - np.count_nonzero(finite))
        if bad:
            first = _first_index(~finite, x.shape)
            raise InputError(f"{self.what}: expected finite values; got {bad} NaN/Inf value(s) of {x.size}, "
                             f"the first at index {first}")
        if self.lo is None:
            return
        out = (x < self.lo) | (x > self.hi)
        if out.any():
            first = _first_index(out, x.shape)
            raise InputError(f"{self.what}: expected values in {self.range_name} {self.range_text}; got values from "
                             f"{float(x.min()):.4g} to {float(x.max()):.4g}, the first outside at index {first} "
                             f"({float(x[first]):.4g}); pass uint8 pixels or float images scaled to the range "
                             "(or load(..., check_values=False) for the raw model)")

    def fmt(self) -> str:
        return "(" + ", ".join(str(s) for s in self.shape) + ")"


RANGE_SLACK = 0.05  # of the data range's width
_min = np.minimum.reduce
_max = np.maximum.reduce
_vdot = np.vdot
_TINY = 64
_SMALL = 1 << 16
_ZEROS = np.zeros(_SMALL, np.float32)  # 256 KiB, read-only; its slices are the zero vectors of the dot check
_ZEROS.flags.writeable = False
# size -> _ZEROS[:size] for the sizes met (calls repeat them): `np.vdot(x.ravel(), ZERO_VIEWS[x.size])` is 0
# unless x holds NaN or Inf (0 * Inf = NaN); model.py inlines that check on its per-call path. np.vdot, unlike
# np.dot, does not turn the invalid-operation flag of 0 * Inf into a RuntimeWarning
ZERO_VIEWS: dict[int, np.ndarray] = {}
F32 = np.dtype(np.float32)


def _all_finite_flat(flat: np.ndarray, f32: bool) -> bool:
    """True if every value of 1-D `flat` is finite; False means "maybe not" (check exactly). One pass.

    Tiny arrays (one code): a sum of Python floats (doubles: float16/32 values cannot overflow
    it), no numpy call and no floating-point warning. Float32 up to _SMALL values: the dot product
    with zeros (np.vdot: no warning), 0 unless a value is NaN or Inf (0 * Inf = NaN), and it cannot
    overflow. Larger: a sum, finite unless a value is NaN/Inf or the sum overflows.
    """
    n = flat.size
    if n <= _TINY:
        return math.isfinite(sum(flat.tolist()))
    if f32 and n <= _SMALL:
        zeros = ZERO_VIEWS.get(n)
        if zeros is None:
            zeros = _ZEROS[:n]
            if len(ZERO_VIEWS) < 256:
                ZERO_VIEWS[n] = zeros
        return math.isfinite(_vdot(flat, zeros))
    with np.errstate(over="ignore", invalid="ignore"):
        return math.isfinite(np.add.reduce(flat))


def _as_array(value, what: str) -> np.ndarray:
    """np.asarray(value), with numpy's ValueError/TypeError (ragged lists, odd objects) as InputError."""
    try:
        x = np.asarray(value)
    except (ValueError, TypeError) as e:
        raise InputError(f"{what}: expected an array of numbers; got a {type(value).__name__} numpy cannot make "
                         f"one rectangular array of ({str(e).splitlines()[0][:120]})") from e
    if x.dtype == object:
        raise InputError(f"{what}: expected an array of numbers; got a {type(value).__name__} of mixed or "
                         "ragged items")
    return x


def _first_index(mask: np.ndarray, shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(int(i) for i in np.unravel_index(int(np.argmax(mask)), shape))


def check_finite_output(out: np.ndarray, what: str) -> np.ndarray:
    """`out` if every value is finite, else InputError naming the first sample that came back NaN/Inf."""
    if _all_finite_flat(out.ravel(), out.dtype is F32):  # ravel: a view of a contiguous output
        return out
    finite = np.isfinite(out)
    if finite.all():
        return out
    rows = np.flatnonzero(~finite.reshape(len(out), -1).all(axis=1))
    raise InputError(f"{what} came back non-finite (NaN/Inf) for {len(rows)} of {len(out)} sample(s), the first at "
                     f"batch index {int(rows[0])}: its input lies far outside what the model was trained on "
                     "(prior codes are within about ±5); pass load(..., check_values=False) for the raw outputs")


SEED_MAX = 2**63 - 1


def check_sample_request(n, seed, bytes_per_sample: int) -> None:
    """InputError unless n is a positive integer whose codes and images fit in half the free memory,
    and seed is None or an integer from 0 to 2**63-1 -- checked before anything is allocated."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise InputError(f"n must be a positive integer; got {n!r}")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))
                             or not 0 <= seed <= SEED_MAX):
        raise InputError(f"seed must be None or an integer from 0 to 2**63-1; got {seed!r}")
    need = int(n) * bytes_per_sample
    free = available_memory()
    if free is not None and need > free // 2:
        raise InputError(f"n={int(n):,} samples need about {need / 2**30:.1f} GiB for codes and images; this "
                         f"machine has {free / 2**30:.1f} GiB available (at most half of it is used): "
                         f"draw at most {max(1, free // 2 // bytes_per_sample):,} at a time")


def available_memory() -> int | None:
    """Bytes of memory available to new allocations (Linux MemAvailable), or None where unknown."""
    try:
        with open("/proc/meminfo", "rb") as f:
            for line in f:
                if line.startswith(b"MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def prepare(spec: TensorSpec, value, data: DataSpec, what: str) -> np.ndarray:
    """One-off form of `Input(spec, data, what).prepare(value)`."""
    return Input(spec, data, what).prepare(value)

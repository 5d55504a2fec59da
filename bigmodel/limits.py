"""Bounds that protect the machine: every size, count, thread and duration option is checked against
what this machine's memory and cores allow, before any work (standard library only).

A value past its bound is an InputError naming the option, the bound and where it comes from (a
quarter of the memory for what one command holds at once; four threads per core; a day of timing).
"""

from __future__ import annotations

import math
import os

from bigmodel.errors import InputError

SEED_MAX = 2**63 - 1  # numpy's and torch's generators take any seed in 0..2**63-1
MAX_SECONDS = 24 * 3600.0  # one timed setting (bench --duration, tune --seconds): a day at most
MEMORY_SHARE = 4  # what one command may hold at once: a quarter of the machine's memory
THREADS_PER_CORE = 4


def memory_bytes() -> int:
    """The machine's physical memory in bytes (16 GiB where the system does not say)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 16 << 30


def max_threads() -> int:
    """The most CPU threads an option may ask for: more than a few per core only waits (or hangs)."""
    return max(4, THREADS_PER_CORE * (os.cpu_count() or 1))


def _integer(value) -> bool:
    return not isinstance(value, bool) and isinstance(value, int | _np_integer())


def _np_integer():
    try:
        import numpy

        return numpy.integer
    except ImportError:  # pragma: no cover (numpy is a dependency)
        return int


def gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"


def check_count(value, flag: str, most: int, least: int = 1, why: str = "") -> int:
    """An integer option from `least` to `most` (`why` says where the bound comes from)."""
    if not _integer(value) or not least <= value <= most:
        reason = f" ({why})" if why else ""
        raise InputError(f"{flag} must be an integer from {least:,} to {most:,}{reason}; got {value!r}")
    return int(value)


def check_items(value, flag: str, bytes_each: int, what: str, least: int = 1) -> int:
    """A count of `what` (each about `bytes_each` bytes held at once) that fits a quarter of the memory."""
    budget = memory_bytes() // MEMORY_SHARE
    most = max(least, budget // max(1, int(bytes_each)))
    return check_count(value, flag, most, least,
                       f"{what} of about {bytes_each:,} bytes each must fit in {gib(budget)}, a quarter of "
                       f"this machine's {gib(memory_bytes())} of memory")


def check_threads(value, flag: str = "--threads") -> int | None:
    """None (the default) or 1 up to four threads per core."""
    if value is None:
        return None
    return check_count(value, flag, max_threads(), why=f"{THREADS_PER_CORE} per core of this machine's "
                                                         f"{os.cpu_count() or 1}")


def check_seed(value, flag: str = "--seed") -> int:
    return check_count(value, flag, SEED_MAX, least=0, why="numpy's and torch's seeds are 0 to 2**63-1")


def check_seconds(value, flag: str, most: float = MAX_SECONDS) -> float:
    """A duration: a finite number of seconds above 0 and at most `most`."""
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = math.nan
    if isinstance(value, bool) or not (math.isfinite(seconds) and 0 < seconds <= most):
        raise InputError(f"{flag} must be a number of seconds above 0 and at most {most:g}; got {value!r}")
    return seconds


COPIES_HELD = 8  # a timed batch: inputs and outputs of each backend side by side, plus the reference's


def sample_bytes(manifest, roles=None) -> int:
    """Bytes of one sample's inputs and outputs, for the largest of `roles` (default all) of a manifest."""
    import numpy as np

    sizes = []
    for role in roles or manifest.roles:
        spec = manifest.roles[role]
        total = 0
        for t in [*spec.inputs, *spec.outputs]:
            dims = [int(d) for d in t.shape[1:] if not isinstance(d, str)]
            total += math.prod(dims) * np.dtype(t.dtype).itemsize
        sizes.append(total)
    return max(sizes, default=1)


def check_batch_sizes(batch_sizes, manifest, roles=None, flag: str = "--batch-sizes") -> tuple[int, ...]:
    """Positive batch sizes whose inputs and outputs (COPIES_HELD of them) fit a quarter of the memory."""
    if not batch_sizes:
        raise InputError(f"{flag} must name at least one batch size; got none")
    each = COPIES_HELD * sample_bytes(manifest, roles)
    return tuple(check_items(b, flag, each, "batches of samples") for b in batch_sizes)


MAX_IMAGE_PIXELS = 8192 * 8192  # one image of an image folder (Pillow's own bomb guard starts at 89 M)


def check_npy(path, error: type[InputError] = InputError) -> None:
    """A .npy file whose header parses, declares a plain dtype, the bytes the file really holds and an
    array that fits a quarter of the memory; read before any array is allocated."""
    import numpy as np

    try:
        with open(path, "rb") as f:
            fmt = np.lib.format
            version = fmt.read_magic(f)
            read = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
            shape, _, dtype = read(f)
            offset = f.tell()
        size = os.path.getsize(path)
    except OSError:
        raise
    except Exception as e:  # numpy raises ValueError, SyntaxError, tokenize.TokenError, ... on a broken header
        raise error(f"{path}: expected a .npy array file; its header does not parse ({type(e).__name__}: "
                    f"{str(e)[:120]})") from e
    if dtype.hasobject:
        raise error(f"{path}: expected a .npy array file of numbers; got dtype {dtype} (objects are never unpickled)")
    declared = math.prod(shape) * dtype.itemsize
    budget = memory_bytes() // MEMORY_SHARE
    if declared > budget:
        raise error(f"{path}: its header declares shape {tuple(shape)} ({gib(declared)}); expected at most "
                    f"{gib(budget)}, a quarter of this machine's {gib(memory_bytes())} of memory")
    if declared > size - offset:
        raise error(f"{path}: its header declares shape {tuple(shape)} ({declared:,} bytes) but the file holds "
                    f"{size - offset:,}; expected a complete .npy file")


def check_image_pixels(path, width: int, height: int, error: type[InputError] = InputError) -> None:
    if width * height > MAX_IMAGE_PIXELS:
        raise error(f"{path}: an image of {width}x{height} pixels; expected at most {MAX_IMAGE_PIXELS:,} pixels "
                    "(8192x8192) per image")

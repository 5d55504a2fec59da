"""Shared fixtures: tiny real data and one trained run directory per (family, arch), made once a session.

`mnist5k` is the mnist-5k dataset (seed-0 split); `mnist_npy` 320 of its digits as a small .npy file.

`trained_run(family, arch)` is for every test that needs a real checkpoint (training, export,
runtime, parity): 1 epoch on the first 512 mnist-5k training images, batch 64, seed 0, on CPU.

    def test_something(trained_run):
        run_dir = trained_run("vae", "mlp")   # Path holding checkpoint.pt, config.json, ...
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import pytest
from gpu_policy import pytest_runtest_makereport  # noqa: F401  (BIGMODEL_REQUIRE_GPU=1: GPU skips fail)

pytest_plugins = ["pytester"]

# Tiny models gain nothing from intra-op threads, and on a small shared CI box (2 vCPUs) OpenMP's
# spinning barriers make them many times slower whenever a vCPU is busy elsewhere. Set before torch
# is imported; subprocesses (CLI, torchrun) inherit it. An explicit OMP_NUM_THREADS wins.
os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parents[1]

TRAINED_RUN_IMAGES = 512
TRAINED_RUN_BATCH = 64


@pytest.fixture(scope="session", autouse=True)
def manifests_follow_the_schema():
    """Every manifest this test process saves is validated against the JSON Schema the package ships.

    jsonschema comes with the `test` extra; a venv made before it was added runs unvalidated (and the
    schema tests in test_runtime.py skip, naming the install).
    """
    import json

    try:
        import jsonschema
    except ImportError:
        yield None
        return

    from bigmodel.manifest import Manifest, manifest_schema

    validator = jsonschema.Draft202012Validator(manifest_schema())
    save = Manifest.save

    def validated_save(self: Manifest, bundle_dir):
        validator.validate(json.loads(self.to_json()))  # raises ValidationError: the writing test fails
        return save(self, bundle_dir)

    Manifest.save = validated_save
    yield validator
    Manifest.save = save


@pytest.fixture(scope="session")
def mnist5k():
    """The mnist-5k dataset split with seed 0 (4,500 train / 500 validation float32 images)."""
    from bigmodel.data import load_data

    return load_data("mnist-5k", seed=0)


@pytest.fixture(scope="session")
def mnist_npy(tmp_path_factory, mnist5k) -> Path:
    """320 real mnist-5k digits as a uint8 (N, 28, 28) .npy file: real data that loads in milliseconds.

    For runs that need many short trainings (resume, determinism, CLI): `--dataset PATH` splits it
    into 288 training and 32 validation images.
    """
    import numpy as np

    path = tmp_path_factory.mktemp("data") / "mnist320.npy"
    np.save(path, np.rint(mnist5k.train[:320, 0] * 255).astype(np.uint8))
    return path


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> Callable[[str, str], Path]:
    """Factory: `trained_run(family, arch="mlp")` -> a run directory trained once per session."""
    from bigmodel.training.loop import TrainSettings, train

    cache: dict[tuple[str, str], Path] = {}

    def get(family: str, arch: str = "mlp") -> Path:
        key = (family, arch)
        if key not in cache:
            out = tmp_path_factory.mktemp(f"run-{family}-{arch}")
            settings = TrainSettings(family=family, arch=arch, dataset="mnist-5k", epochs=1,
                                     batch_size=TRAINED_RUN_BATCH, max_train=TRAINED_RUN_IMAGES, seed=0,
                                     device="cpu", out=str(out))
            cache[key] = train(settings).out
        return cache[key]

    return get



CALIBRATION = ("--calibration", "64")  # int8 static bundles of the session calibrate on 64 images


@pytest.fixture(scope="session")
def cli_exported(trained_run, tmp_path_factory) -> Callable[..., tuple[CliRun, Path]]:
    """Factory: `cli_exported(family, precision, mode, *extra)` -> (the CLI's result, the bundle path) of
    `bigmodel export RUN --out RUN/bundle-PRECISION-MODE --precision PRECISION --int8-mode MODE EXTRA...`,
    run once per session through the real entry point on a copy of `trained_run(family, "mlp")`.

    The bundle exists (checkpoint.pt beside it, in RUN) only when the export passed; a refused export
    (exit 1) leaves nothing. test_precision checks every verdict; `exported` serves the passed ones.
    """
    import shutil

    runs: dict[str, Path] = {}
    cache: dict[tuple[str, ...], tuple[CliRun, Path]] = {}

    def get(family: str, precision: str, mode: str, *extra: str) -> tuple[CliRun, Path]:
        key = (family, precision, mode, *extra)
        if key not in cache:
            if family not in runs:
                runs[family] = tmp_path_factory.mktemp(f"cli-{family}-mlp")
                shutil.copy(trained_run(family, "mlp") / "checkpoint.pt", runs[family] / "checkpoint.pt")
            out = runs[family] / f"bundle-{precision}-{mode}"
            r = cli("export", runs[family], "--out", out, "--precision", precision, "--int8-mode", mode, *extra)
            cache[key] = (r, out)
        return cache[key]

    return get


@pytest.fixture(scope="session")
def exported(trained_run, cli_exported, tmp_path_factory) -> Callable[..., Path]:
    """Factory: `exported(family, arch="mlp", precision="fp32")` -> a bundle folder with its run's
    checkpoint.pt beside it (where parity and bench look), exported once per session for every module.

    fp32: `export_bundle` with 16 probes. fp16 and int8 (static, 64 calibration images) MLP bundles are
    `cli_exported`'s, the very exports test_precision checks. Shared by every test that reads a bundle:
    copy it (shutil.copytree) before altering anything.
    """
    import shutil

    from bigmodel.export import ExportOptions, export_bundle

    cache: dict[tuple[str, str, str], Path] = {}

    def get(family: str, arch: str = "mlp", precision: str = "fp32") -> Path:
        key = (family, arch, precision)
        if key not in cache:
            if precision != "fp32" and arch == "mlp":
                r, bundle = cli_exported(family, precision, "static", *(CALIBRATION if precision == "int8" else ()))
                assert r.code == 0, f"the shared {family} {precision} export failed:\n{r.text}"
                cache[key] = bundle
            else:
                folder = tmp_path_factory.mktemp(f"bundle-{family}-{arch}-{precision}")
                shutil.copy(trained_run(family, arch) / "checkpoint.pt", folder / "checkpoint.pt")
                opts = ExportOptions(out=folder / "bundle", precision=precision, probes=16, calibration=64)
                cache[key] = export_bundle(folder / "checkpoint.pt", opts).bundle
        return cache[key]

    return get


class CliRun(NamedTuple):
    code: int
    out: str
    err: str

    @property
    def text(self) -> str:
        return self.out + self.err


def cli(*args: str | os.PathLike) -> CliRun:
    """`bigmodel ARGS` through the real entry point in this process: exit code, stdout, stderr.

    In-process (no interpreter start, no second torch import); tests that need a fresh interpreter
    (torch must stay unimported, torchrun) spawn one themselves.
    """
    from bigmodel.cli import main

    out, err = io.StringIO(), io.StringIO()
    argv, sys.argv = sys.argv, ["bigmodel", *map(str, args)]
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            main()
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        sys.argv = argv
    return CliRun(code, out.getvalue(), err.getvalue())


def run_cli(*args: str | os.PathLike) -> tuple[int, str]:
    """`cli(ARGS)` as (exit code, stdout + stderr)."""
    r = cli(*args)
    return r.code, r.text

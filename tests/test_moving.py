"""Runs that survive moving: a run trained on a .npy records the data's path, its path relative to the run
and its sha256, so export finds it where the run and data moved together, or at `--dataset PATH` given again
(checked against the hash); when neither works, one line says the data is gone and how to give it."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import cli
from test_cli_train import one_line_error

from bigmodel.errors import DataError
from bigmodel.eval.run import target_spec


@pytest.fixture
def home(tmp_path, mnist5k) -> Path:
    """tmp/a holding data/x.npy (160 14x14 digits) and runs/x, a 1-epoch VAE trained on it; tmp/other.npy."""
    home = tmp_path / "a"
    (home / "data").mkdir(parents=True)
    digits = np.rint(mnist5k.train[:320, 0, ::2, ::2] * 255).astype(np.uint8)
    np.save(home / "data" / "x.npy", digits[:160])
    np.save(tmp_path / "other.npy", digits[160:])
    r = cli("train", "vae", "--dataset", home / "data" / "x.npy", "--out", home / "runs" / "x", "--epochs", "1",
            "--batch-size", "32", "--device", "cpu")
    assert r.code == 0, r.text
    return home


def tree(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def source(bundle: Path) -> str:
    return json.loads((bundle / "manifest.json").read_text())["data"]["source"]


def test_run_and_data_moved_together_export_and_eval(home, tmp_path):
    record = json.loads((home / "runs" / "x" / "config.json").read_text())["dataset"]
    assert record["path"] == str(home / "data" / "x.npy") and record["relative"] == "../../data/x.npy"
    assert record["images"] == 160 and len(record["sha256"]) == 64
    moved = tmp_path / "b"
    home.rename(moved)
    r = cli("export", moved / "runs" / "x")
    assert r.code == 0, r.text
    bundle = moved / "runs" / "x" / "bundle"
    assert source(bundle) == str(moved / "data" / "x.npy")
    moved.rename(tmp_path / "c")  # the bundle moved with its data: eval finds the data too
    assert target_spec(tmp_path / "c" / "runs" / "x" / "bundle").source == str(tmp_path / "c" / "data" / "x.npy")
    assert target_spec(tmp_path / "c" / "runs" / "x").source == str(tmp_path / "c" / "data" / "x.npy")
    shutil.copy(tmp_path / "other.npy", tmp_path / "c" / "data" / "x.npy")  # other images in its place
    with pytest.raises(DataError, match="the run's data changed"):
        target_spec(tmp_path / "c" / "runs" / "x" / "bundle")


def test_only_the_data_moved_is_one_line_naming_it(home, tmp_path):
    (home / "data").rename(tmp_path / "data")
    run = home / "runs" / "x"
    before = tree(run)
    line = one_line_error(cli("export", run))
    assert f"the run's data is gone: {home / 'data' / 'x.npy'}" in line, line
    assert "validation images" in line and "--dataset PATH" in line and "\x1b" not in line, line
    assert tree(run) == before


def test_dataset_given_again_is_checked_against_the_hash(home, tmp_path):
    moved = tmp_path / "moved.npy"
    (home / "data" / "x.npy").rename(moved)
    run = home / "runs" / "x"
    before = tree(run)
    line = one_line_error(cli("export", run, "--dataset", tmp_path / "other.npy"))
    assert "expected the images this run was made from" in line and "got other images" in line, line
    assert tree(run) == before
    r = cli("export", run, "--dataset", moved)
    assert r.code == 0, r.text
    assert source(run / "bundle") == str(moved)


def test_builtin_datasets_are_unaffected(trained_run, tmp_path):
    shutil.copy(trained_run("vae") / "checkpoint.pt", tmp_path / "checkpoint.pt")
    line = one_line_error(cli("export", tmp_path, "--dataset", "digits"))
    assert "built-in mnist-5k" in line, line
    assert not (tmp_path / "bundle").exists()


def _foreign(folder: Path) -> dict[str, Path]:
    import torch

    torch.save(torch.nn.Linear(3, 2).state_dict(), folder / "state_dict.pt")
    torch.save({"state_dict": torch.nn.Linear(3, 2).state_dict(), "epoch": 3, "pytorch-lightning_version": "2.1"},
               folder / "lightning.ckpt")
    (folder / "random.pt").write_bytes(np.random.default_rng(0).bytes(3000))
    torch.save({"net": torch.nn.Linear(2, 2)}, folder / "module.pt")
    (folder / "plain").mkdir()
    (folder / "plain" / "notes.txt").write_text("not a run\n")
    return {"state_dict": folder / "state_dict.pt", "lightning": folder / "lightning.ckpt",
            "random": folder / "random.pt", "module": folder / "module.pt", "folder": folder / "plain"}


@pytest.mark.parametrize("kind", ["state_dict", "lightning", "random", "module", "folder"])
def test_foreign_checkpoints_and_folders_are_named(kind, tmp_path):
    path = _foreign(tmp_path)[kind]
    before = tree(tmp_path)
    line = one_line_error(cli("export", path))
    assert line.startswith(f"error: {path} is not a bigmodel run (no "), line
    assert line.endswith("; to export your own model see docs/own-model.md"), line
    assert "\x1b" not in line and "Weights only load failed" not in line and len(line) < 300 + len(str(path)), line
    assert {"state_dict": "plain state dict", "lightning": "Lightning checkpoint", "random": "torch.load fails",
            "module": "pickles Python objects", "folder": "no checkpoint.pt"}[kind] in line, line
    assert tree(tmp_path) == before


@pytest.mark.parametrize("kind", ["state_dict", "folder"])
def test_eval_names_foreign_inputs_too(kind, tmp_path):
    path = _foreign(tmp_path)[kind]
    line = one_line_error(cli("eval", path))
    assert line == (f"error: {path} is not a bigmodel run (nor a bundle folder: no manifest.json, no config.json + "
                    "checkpoint.pt); to export your own model see docs/own-model.md"), line

"""`bigmodel train` and `bigmodel models` through the real command line, and data-parallel training under torchrun."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CliRun, cli

from bigmodel.data import load_data
from bigmodel.models import create_model, list_models
from bigmodel.models.checkpoint import load_checkpoint

REPO = Path(__file__).resolve().parents[1]


def one_line_error(r: CliRun) -> str:
    """Assert exit status 2 and exactly one line on stderr, no traceback; return that line."""
    assert r.code == 2, r
    assert "Traceback" not in r.text
    lines = r.err.strip().splitlines()
    assert len(lines) == 1, r.err
    return lines[0]


# ---- bad input: one line naming what was expected and what came, exit status 2 ---------------------


def _bad_inputs(tmp: Path, good_npy: Path) -> dict[str, tuple[list[str], list[str]]]:
    """Case name -> (arguments after `bigmodel train`, facts the error line must state)."""
    from PIL import Image

    (tmp / "not.npz").write_text("x,y\n1,2\n")
    np.savez(tmp / "flat.npz", x=np.zeros((20, 64), np.uint8))
    nan = np.random.default_rng(0).random((20, 8, 8)).astype(np.float32)
    nan[3, 4, 5] = np.nan
    np.save(tmp / "nan.npy", nan)
    folder = tmp / "mixed"
    folder.mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(folder / "a.png")
    Image.fromarray(np.zeros((12, 10), np.uint8)).save(folder / "b.png")
    spoiled = tmp / "spoiled"
    spoiled.mkdir()
    (spoiled / "checkpoint.pt").write_bytes(b"PK\x03\x04 not really a zip, cut short")

    data = ["--dataset", str(good_npy), "--device", "cpu", "--out", str(tmp / "never"), "--epochs", "1"]
    return {
        "unknown-family": (["flow", *data], ["'flow'", "expected one of: aae, ae, gan, vae"]),
        "unknown-arch": (["vae", "--arch", "resnet", *data], ["'resnet'", "expected one of: mlp, conv"]),
        "unknown-dataset": (["vae", "--dataset", "imagenet-21k", "--out", str(tmp / "never")],
                            ["'imagenet-21k'", "mnist-5k", "digits", ".npz/.npy", "folder of images"]),
        "npz-not-a-zip": (["ae", *data, "--dataset", str(tmp / "not.npz")],
                          ["not.npz", "expected a .npz (zip) archive", "got another file"]),
        "npz-wrong-rank": (["ae", *data, "--dataset", str(tmp / "flat.npz")],
                           ["flat.npz['x']", "(N, H, W) or (N, C, H, W)", "got shape (20, 64)"]),
        "mixed-image-sizes": (["ae", *data, "--dataset", str(folder)],
                              ["expected all images the same size", "a.png 8x8", "b.png 10x12"]),
        "nan-in-data": (["ae", *data, "--dataset", str(tmp / "nan.npy")], ["nan.npy", "expected finite", "NaN"]),
        "latent-dim-0": (["vae", *data, "--latent-dim", "0"], ["latent_dim", "positive integer", "got 0"]),
        "batch-larger-than-data": (["vae", *data, "--batch-size", "1000"],
                                   ["between 1 and the 288 training images", "got 1000"]),
        "corrupt-checkpoint": (["vae", "--out", str(spoiled), "--resume", "--epochs", "2"],
                               [str(spoiled / "checkpoint.pt"), "is not a bigmodel run", "no readable checkpoint"]),
    }


@pytest.fixture(scope="module")
def bad_input_runs(tmp_path_factory, mnist_npy) -> dict[str, tuple[CliRun, list[str], Path]]:
    """Every bad-input case through the real CLI entry point, in this process."""
    tmp = tmp_path_factory.mktemp("bad")
    cases = _bad_inputs(tmp, mnist_npy)
    return {name: (cli("train", *args), facts, tmp) for name, (args, facts) in cases.items()}


BAD = ["unknown-family", "unknown-arch", "unknown-dataset", "npz-not-a-zip", "npz-wrong-rank",
       "mixed-image-sizes", "nan-in-data", "latent-dim-0", "batch-larger-than-data", "corrupt-checkpoint"]


@pytest.mark.parametrize("case", BAD)
def test_bad_input_is_one_line_and_exit_2(case: str, bad_input_runs) -> None:
    run, facts, tmp = bad_input_runs[case]
    line = one_line_error(run)
    assert line.startswith("error: ")
    for fact in facts:
        assert fact in line, (fact, line)
    assert not (tmp / "never").exists()  # nothing was trained or written


# ---- bigmodel models ------------------------------------------------------------------------------


def test_models_lists_every_family_and_arch_one_line_each() -> None:
    r = cli("models")
    assert r.code == 0, r.err
    header, *rows = r.out.strip().splitlines()
    assert header.split()[:3] == ["family", "arch", "roles"]
    assert len(rows) == 8
    assert sorted(tuple(row.split()[:2]) for row in rows) == sorted((m.family, m.arch) for m in list_models())

    r = cli("models", "--json")
    assert r.code == 0, r.err
    entries = json.loads(r.out)
    assert len(entries) == 8
    assert {(e["family"], e["arch"]) for e in entries} == {(m.family, m.arch) for m in list_models()}
    by_family = {e["family"]: e for e in entries}
    assert by_family["aae"]["roles"] == ["encoder", "decoder", "discriminator"]
    assert by_family["vae"]["latent_dim"] == 20 and by_family["vae"]["settings"]["beta"] == 1.0
    assert by_family["gan"]["settings"]["lr"] == 2e-4


# ---- a real run through the CLI -------------------------------------------------------


def test_train_through_the_cli_writes_the_run_directory(mnist_npy, tmp_path) -> None:
    out = tmp_path / "aae"
    args = ["train", "aae", "--dataset", str(mnist_npy), "--batch-size", "64", "--latent-dim", "4", "--lr", "0.002",
            "--prior", "mixture", "--seed", "3", "--device", "cpu", "--out", str(out)]
    r = cli(*args, "--epochs", "1")
    assert r.code == 0, r.err
    assert "done" in r.out
    names = {p.name for p in out.iterdir()}
    assert names == {"checkpoint.pt", "config.json", "metrics.jsonl", "samples.png", "reconstructions.png",
                     "curves.png"}
    config = json.loads((out / "config.json").read_text())
    assert config["config"]["latent_dim"] == 4 and config["config"]["lr"] == 0.002
    assert config["config"]["prior"] == "mixture" and config["latent"]["prior"] == "mixture"
    assert config["settings"]["seed"] == 3 and config["data_spec"]["n_train"] == 288

    state = load_checkpoint(out)
    assert state["epoch"] == 1 and state["config"]["latent_dim"] == 4 and state["family"] == "aae"
    record = json.loads((out / "metrics.jsonl").read_text())
    assert record["epoch"] == 1 and set(record["train"]) == {"recon", "d_loss", "g_loss"}


# ---- data-parallel under torchrun ------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def one_process_data_parallel(dataset: str, family: str, world: int, batch: int, epochs: int, seed: int = 0):
    """What `world` ranks of the loop must compute, in one process: the same shuffled order on every rank,
    rank r training on order[r::world] with its own noise, gradients averaged before each step."""
    data = load_data(dataset, seed=seed)
    train_x = torch.from_numpy(data.train)
    torch.manual_seed(seed)
    model = create_model(family, "mlp", data.spec).train()
    (opt,) = model.optimizers().values()
    shuffle = torch.Generator().manual_seed(seed)
    noises = [torch.Generator().manual_seed(seed + 1 + r) for r in range(world)]
    batches = len(train_x) // world // batch
    for _ in range(epochs):
        order = torch.randperm(len(train_x), generator=shuffle)
        for b in range(batches):
            opt.zero_grad(set_to_none=True)
            for r in range(world):
                x = train_x[order[r::world][b * batch : (b + 1) * batch]]
                model.train_step(x, noises[r], lambda name, loss: (loss / world).backward())
            opt.step()
    return {k: v.detach() for k, v in model.state_dict().items()}


def test_torchrun_two_processes_train_data_parallel(mnist_npy, tmp_path) -> None:
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
           "--master-port", str(free_port()), "-m", "bigmodel", "train", "vae", "--dataset", str(mnist_npy),
           "--epochs", "2", "--batch-size", "32", "--seed", "0", "--device", "cpu", "--out", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Traceback" not in r.stderr

    # Only rank 0 writes and reports.
    assert {p.name for p in out.iterdir()} == {"checkpoint.pt", "config.json", "metrics.jsonl", "samples.png",
                                              "reconstructions.png", "curves.png"}
    assert r.stdout.count("done") == 1 and "nothing to do" not in r.stdout
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in records] == [1, 2]

    # The loss falls.
    assert records[1]["train"]["loss"] < records[0]["train"]["loss"]
    assert records[1]["val"]["loss"] < records[0]["val"]["loss"]

    # Each rank trained on its own shard and gradients were averaged: the weights are those of one process
    # doing exactly that, and not those of a single rank on its own.
    ddp = load_checkpoint(out)["state_dict"]
    expected = one_process_data_parallel(str(mnist_npy), "vae", world=2, batch=32, epochs=2)
    alone = one_process_data_parallel(str(mnist_npy), "vae", world=1, batch=32, epochs=2)
    for k in ddp:
        torch.testing.assert_close(ddp[k], expected[k], rtol=0, atol=1e-4, msg=k)
    assert max(float((ddp[k] - alone[k]).abs().max()) for k in ddp) > 1e-3

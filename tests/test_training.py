"""bigmodel.training: the run directory, determinism, resume equivalence and checkpoints."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from PIL import Image

from bigmodel.errors import CheckpointError, ConfigError
from bigmodel.models import list_models
from bigmodel.models.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from bigmodel.progress import Progress
from bigmodel.training.loop import TrainSettings, train

MODELS = [pytest.param(m.family, m.arch, id=f"{m.family}-{m.arch}") for m in list_models()]
RUN_FILES = {"checkpoint.pt", "config.json", "metrics.jsonl", "samples.png", "curves.png"}
TIMING = ("seconds", "samples_per_s")


@pytest.fixture
def small(mnist_npy):
    """small(out, family, arch, **kw): fast in-process runs on 256 of the 288 training digits in
    `mnist_npy`, batch 64 (4 steps an epoch), 1 epoch, seed 0, CPU."""

    def make(out: Path, family: str = "vae", arch: str = "mlp", **kw) -> TrainSettings:
        base = dict(family=family, arch=arch, dataset=str(mnist_npy), epochs=1, batch_size=64, max_train=256,
                    seed=0, device="cpu", out=str(out))
        return TrainSettings(**{**base, **kw})

    return make


def like_trained_run(out: Path, family: str, arch: str, **kw) -> TrainSettings:
    """The settings of conftest's `trained_run` fixture, into `out`."""
    base = dict(family=family, arch=arch, dataset="mnist-5k", epochs=1, batch_size=64, max_train=512, seed=0,
                device="cpu", out=str(out))
    return TrainSettings(**{**base, **kw})


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run)["state_dict"]


def assert_same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k


def assert_same_nested(a, b, where: str = "") -> None:
    """Bit-for-bit equality of nested dicts/lists of tensors and plain values."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for k in a:
            assert_same_nested(a[k], b[k], f"{where}/{k}")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same_nested(x, y, f"{where}/{i}")
    else:
        assert a == b, where


def metrics(run: Path) -> list[dict]:
    """metrics.jsonl without the wall-clock fields."""
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING} for line in lines]


def leftovers(run: Path) -> list[str]:
    """Anything in a run directory that is not a finished artifact (temporary files of atomic writes)."""
    return sorted(p.name for p in run.iterdir() if p.name not in RUN_FILES | {"reconstructions.png"})


# ---- the run directory ---------------------------------------------------------------------------


@pytest.mark.parametrize(("family", "arch"), MODELS)
def test_run_directory_holds_every_artifact(family: str, arch: str, trained_run) -> None:
    run = trained_run(family, arch)
    names = {p.name for p in run.iterdir()}
    encodes = family != "gan"
    assert names == RUN_FILES | ({"reconstructions.png"} if encodes else set())

    # config.json and metrics.jsonl are JSON and agree with the checkpoint.
    config = json.loads((run / "config.json").read_text())
    state = load_checkpoint(run)
    assert (config["family"], config["arch"]) == (family, arch) == (state["family"], state["arch"])
    assert config["config"] == state["config"]
    assert config["data_spec"] == state["data_spec"]
    assert config["data_spec"]["shape"] == [1, 28, 28] and config["data_spec"]["n_train"] == 512
    assert config["latent"]["dim"] == state["config"]["latent_dim"]
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1] and state["epoch"] == 1
    record = lines[0]
    assert record["train"].keys() == record["val"].keys() - {"d_acc"}
    assert all(math.isfinite(v) for v in [*record["train"].values(), *record["val"].values()])
    assert record["samples_per_s"] > 0 and record["seconds"] > 0

    # Pictures are real PNGs: an 8x8 grid of samples; 4 pairs of rows (inputs over outputs).
    for name in ("samples.png", "curves.png") + (("reconstructions.png",) if encodes else ()):
        with Image.open(run / name) as im:
            assert im.format == "PNG" and im.width > 100 and im.height > 100, name
    with Image.open(run / "samples.png") as s:
        assert s.width == s.height
    if encodes:
        with Image.open(run / "reconstructions.png") as r, Image.open(run / "samples.png") as s:
            assert r.size == s.size


@pytest.mark.parametrize(("family", "arch"), MODELS)
def test_checkpoint_is_weights_only_and_rebuilds_the_model(family: str, arch: str, trained_run) -> None:
    path = trained_run(family, arch) / "checkpoint.pt"
    raw = torch.load(path, map_location="cpu", weights_only=True)  # would raise on any pickled object

    def plain(v, where):
        if isinstance(v, dict):
            for k, x in v.items():
                assert isinstance(k, (str, int)), where
                plain(x, f"{where}/{k}")
        elif isinstance(v, (list, tuple)):
            for i, x in enumerate(v):
                plain(x, f"{where}/{i}")
        else:
            assert v is None or isinstance(v, (torch.Tensor, str, int, float, bool)), (where, type(v))

    plain(raw, "")
    assert raw["format"] == "bigmodel-checkpoint"
    assert set(raw["optimizers"]) == set(model_from_checkpoint(raw).optimizers())
    assert set(raw["rng"]) == {"shuffle", "noise"}

    model = model_from_checkpoint(raw)
    assert not model.training
    assert_same_tensors({k: v for k, v in model.state_dict().items()}, raw["state_dict"])


# ---- determinism ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("family", "arch"), [("vae", "mlp"), ("aae", "mlp"), ("gan", "conv")])
def test_same_seed_gives_the_same_weights_bit_for_bit(family: str, arch: str, trained_run, tmp_path) -> None:
    """A second run with the fixture's settings reproduces its checkpoint exactly."""
    first = trained_run(family, arch)
    again = train(like_trained_run(tmp_path / "again", family, arch)).out
    a, b = load_checkpoint(first), load_checkpoint(again)
    assert_same_tensors(a["state_dict"], b["state_dict"])
    assert_same_nested(a["optimizers"], b["optimizers"], "optimizers")
    assert_same_nested(a["rng"], b["rng"], "rng")
    assert metrics(first) == metrics(again)


@pytest.mark.parametrize(("family", "arch"), [("vae", "mlp"), ("aae", "mlp")])
def test_different_seed_gives_different_weights(family: str, arch: str, trained_run, tmp_path) -> None:
    a = weights(trained_run(family, arch))
    b = weights(train(like_trained_run(tmp_path / "seed1", family, arch, seed=1)).out)
    float_keys = [k for k, v in a.items() if v.is_floating_point() and v.numel() > 1]
    assert float_keys
    assert all(not torch.equal(a[k], b[k]) for k in float_keys)


# ---- resume --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("family", "arch", "model"),
    [("ae", "mlp", {}), ("vae", "mlp", {}), ("vae", "conv", {"width": 8}), ("gan", "mlp", {}),
     ("aae", "mlp", {"prior": "mixture"})],
    ids=["ae", "vae", "vae-conv-batchnorm", "gan", "aae-mixture"],
)
def test_resume_ends_where_an_uninterrupted_run_ends(family: str, arch: str, model: dict, tmp_path, small) -> None:
    straight = train(small(tmp_path / "straight", family, arch, epochs=2, model=model)).out
    resumed = tmp_path / "resumed"
    train(small(resumed, family, arch, epochs=1, model=model))
    assert load_checkpoint(resumed)["epoch"] == 1
    # Only --epochs (and where to run) come from the flags; the rest are the run's own (conflicting
    # flags are refused: tests/test_safety.py).
    result = train(TrainSettings(family=family, epochs=2, out=str(resumed), resume=True, device="cpu"))
    assert [h["epoch"] for h in result.history] == [1, 2]

    a, b = load_checkpoint(straight), load_checkpoint(resumed)
    assert b["epoch"] == a["epoch"] == 2
    assert_same_tensors(a["state_dict"], b["state_dict"])
    assert_same_nested(a["optimizers"], b["optimizers"], "optimizers")
    assert_same_nested(a["rng"], b["rng"], "rng")
    assert metrics(straight) == metrics(resumed)
    assert json.loads((resumed / "config.json").read_text())["settings"]["batch_size"] == 64
    assert leftovers(resumed) == []


def test_resume_past_the_last_epoch_trains_nothing(tmp_path, small) -> None:
    out = train(small(tmp_path / "run", epochs=1)).out
    before = weights(out)
    result = train(TrainSettings(family="vae", epochs=1, out=str(out), resume=True, device="cpu"))
    assert [h["epoch"] for h in result.history] == [1]
    assert_same_tensors(before, weights(out))


def test_resume_refuses_another_family(tmp_path, small) -> None:
    out = train(small(tmp_path / "run", "ae")).out
    with pytest.raises(ConfigError, match=r"holds a ae run; got family vae"):
        train(TrainSettings(family="vae", epochs=2, out=str(out), resume=True, device="cpu"))


def test_resume_without_a_checkpoint_is_a_checkpoint_error(tmp_path) -> None:
    with pytest.raises(CheckpointError, match="checkpoint not found: expected a file at"):
        train(TrainSettings(family="vae", epochs=2, out=str(tmp_path / "nothing"), resume=True, device="cpu"))


# ---- atomic writes -------------------------------------------------------------------------------


def test_a_crash_while_checkpointing_keeps_the_previous_checkpoint(tmp_path, monkeypatch, small) -> None:
    """The checkpoint write dies half-way in epoch 2: epoch 1's file survives whole, no temp file is left."""
    out = train(small(tmp_path / "run", "ae", epochs=1)).out
    before = load_checkpoint(out)
    real_save = torch.save

    def dies_half_way(obj, f, *args, **kw):
        real_save(obj, f, *args, **kw)  # f: the open temporary file
        f.flush()
        f.truncate(f.tell() // 2)
        raise OSError("disk full (injected)")

    monkeypatch.setattr(torch, "save", dies_half_way)
    with pytest.raises(OSError, match="injected"):
        train(TrainSettings(family="ae", epochs=2, out=str(out), resume=True, device="cpu"))
    monkeypatch.undo()

    after = load_checkpoint(out)
    assert after["epoch"] == 1
    assert_same_tensors(before["state_dict"], after["state_dict"])
    assert leftovers(out) == []


@pytest.mark.parametrize(("family", "arch"), MODELS)
def test_no_temporary_files_are_left_behind(family: str, arch: str, trained_run) -> None:
    assert leftovers(trained_run(family, arch)) == []


# ---- checkpoints that are not ours ---------------------------------------------------------------


def _truncated(path: Path, good: bytes) -> None:
    path.write_bytes(good[: len(good) // 2])


def _empty(path: Path, good: bytes) -> None:
    path.write_bytes(b"")


def _text(path: Path, good: bytes) -> None:
    path.write_text("this is not a checkpoint\n" * 20)


def _flipped(path: Path, good: bytes) -> None:
    data = bytearray(good)
    mid = len(data) // 2
    data[mid : mid + 4096] = bytes(4096)  # zero a stretch inside the weights' zip records
    data[:4] = b"\x00\x00\x00\x00"  # and the zip signature
    path.write_bytes(bytes(data))


def _pickled_module(path: Path, good: bytes) -> None:
    torch.save(torch.nn.Linear(2, 2), path)  # a pickled object: refused by weights_only


def _foreign_dict(path: Path, good: bytes) -> None:
    torch.save({"model": {"w": torch.zeros(2)}, "epoch": 3}, path)


def _tensor(path: Path, good: bytes) -> None:
    torch.save(torch.zeros(3), path)


def _future_version(path: Path, good: bytes) -> None:
    state = torch.load(path, weights_only=True)
    state.pop("format"), state.pop("version")
    save_checkpoint(path, state)
    state = torch.load(path, weights_only=True)
    state["version"] = 99
    torch.save(state, path)


CORRUPTIONS = {
    "truncated": (_truncated, "truncated, corrupt or foreign"),
    "empty": (_empty, "truncated, corrupt or foreign"),
    "text": (_text, "truncated, corrupt or foreign"),
    "corrupt": (_flipped, "truncated, corrupt or foreign"),
    "pickled-module": (_pickled_module, "it pickles Python objects, which bigmodel never loads"),
    "foreign-dict": (_foreign_dict, "no format tag 'bigmodel-checkpoint'; it holds a dict with keys"),
    "bare-tensor": (_tensor, "no format tag 'bigmodel-checkpoint'; it holds a Tensor"),
    "future-version": (_future_version, "checkpoint version 99 unsupported; expected 1"),
}


@pytest.mark.parametrize("kind", CORRUPTIONS)
def test_bad_checkpoints_are_one_line_checkpoint_errors(kind: str, trained_run, tmp_path) -> None:
    good = (trained_run("ae", "mlp") / "checkpoint.pt").read_bytes()
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(good)
    spoil, fact = CORRUPTIONS[kind]
    spoil(path, good)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(tmp_path)  # a run directory or the file itself
    message = str(e.value)
    assert "\n" not in message and fact in message and str(path) in message
    assert len(message) < 400


def test_weights_that_do_not_fit_the_model_are_a_checkpoint_error(trained_run) -> None:
    state = load_checkpoint(trained_run("vae", "mlp"))
    state["config"] = {**state["config"], "latent_dim": 7}
    with pytest.raises(CheckpointError, match="do not fit the vae/mlp model"):
        model_from_checkpoint(state)


# ---- the loop's other promises -------------------------------------------------------------------


def test_progress_reports_every_batch_and_epoch(tmp_path, small) -> None:
    seen: list[Progress] = []
    result = train(small(tmp_path / "run", "gan", epochs=2, max_train=128), progress=seen.append)
    batches = [p for p in seen if p.stage == "train"]
    epochs = [p for p in seen if p.stage == "train:epoch"]
    assert len(batches) + len(epochs) == len(seen)
    assert [(p.metrics["epoch"], p.done) for p in batches] == [(e, b) for e in (1, 2) for b in (1, 2)]
    assert all(p.total == 2 and p.metrics["epochs"] == 2 and p.metrics["samples_per_s"] > 0 for p in seen)
    assert all({k for k in p.metrics if "/" in k} == {"train/d_loss", "train/g_loss"} for p in batches)
    assert all(type(v) in (int, float) for p in seen for v in p.metrics.values())  # numbers, no tensors
    # after each epoch: its history record, flattened
    assert [p.metrics["epoch"] for p in epochs] == [1, 2] and all(p.done == p.total for p in epochs)
    for p, record in zip(epochs, result.history, strict=True):
        assert {k: v for k, v in p.metrics.items() if k.startswith("val/")} == {
            f"val/{k}": v for k, v in record["val"].items()}
        assert p.metrics["train/d_loss"] == record["train"]["d_loss"] and p.metrics["seconds"] == record["seconds"]
        # the per-batch losses (read after training: they stay the values of their batch) average to the record
        per_batch = [q.metrics["train/g_loss"] for q in batches if q.metrics["epoch"] == record["epoch"]]
        assert sum(per_batch) / len(per_batch) == pytest.approx(record["train"]["g_loss"], rel=1e-6)


def test_batch_size_larger_than_the_data_names_both(tmp_path, small) -> None:
    with pytest.raises(ConfigError, match=r"between 1 and the 256 training images; got 300"):
        train(small(tmp_path / "run", batch_size=300))
    assert not (tmp_path / "run").exists()


def test_max_train_limits_the_training_images(tmp_path, small) -> None:
    out = train(small(tmp_path / "run", max_train=96, batch_size=32)).out
    state = load_checkpoint(out)
    assert state["data_spec"]["n_train"] == 96
    assert state["optimizers"]["vae"]["state"][0]["step"].item() == 3  # 96 / 32 steps

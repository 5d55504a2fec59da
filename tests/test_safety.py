"""Nothing a user owns is deleted or silently overwritten, and every failure is one line.

One table, one row per hostile input: the `bigmodel` argv (through the real entry point, in this
process) or a runtime API call, the exit code or exception kind expected, and a fragment of the
one-line message. Every row runs in a fresh copy of a small workspace (a real trained run with its
exported bundle, inputs, a user's unrelated files) and checks that no traceback was printed, no
warning escaped, and every file present before the call is byte-identical after it (and nothing
was added). After the table: --force doing what it should, stale temporaries, real full and
read-only filesystems (tmpfs; skipped where mounting is not permitted), and a SIGKILL test (slow).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import run_cli

from bigmodel.errors import BundleError, InputError
from bigmodel.fileio import remove_stale_temps
from bigmodel.runtime import load

LATENT = 4


# ---------------------------------------------------------------------------------------------- workspace
@pytest.fixture(scope="module")
def template(tmp_path_factory, mnist_npy) -> Path:
    """ws/: runs/vae (a real 1-epoch run of a tiny VAE + its bundle), runs/notes.txt (the user's), inputs."""
    from bigmodel.export import ExportOptions, export_bundle
    from bigmodel.training.loop import TrainSettings, train

    ws = tmp_path_factory.mktemp("safety") / "ws"
    run = ws / "runs" / "vae"
    train(TrainSettings(family="vae", epochs=1, batch_size=64, max_train=128, dataset=str(mnist_npy), device="cpu",
                        out=str(run), model={"hidden": (32,), "latent_dim": LATENT}))
    export_bundle(run, ExportOptions(probes=8))
    (ws / "runs" / "notes.txt").write_text("the user's own notes\n")
    (ws / "mine").mkdir()
    (ws / "mine" / "thesis.tex").write_text("do not lose me\n")
    (ws / "report.json").write_text("{}\n")
    (ws / "grid.png").write_bytes(b"an existing picture")
    (ws / "z.npy").write_bytes(b"existing codes")
    (ws / "codes_dir").mkdir()
    rng = np.random.default_rng(0)
    np.save(ws / "codes.npy", rng.standard_normal((3, LATENT), dtype=np.float32))
    np.save(ws / "huge_codes.npy", np.full((2, LATENT), 3e38, np.float32))
    np.save(ws / "nan_codes.npy", np.array([[0, np.nan, 0, 0]], np.float32))
    np.save(ws / "wide_codes.npy", np.zeros((2, LATENT + 3), np.float32))
    np.save(ws / "images.npy", rng.random((2, 1, 28, 28), dtype=np.float32))
    np.save(ws / "bright.npy", np.full((2, 1, 28, 28), 1000.0, np.float32))
    np.save(ws / "dark.npy", np.full((2, 1, 28, 28), -5.0, np.float32))
    np.save(ws / "objects.npy", np.array([1, "a"], dtype=object), allow_pickle=True)
    (ws / "text.npy").write_text("not an array")
    return ws


def snapshot(root: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file (and 'dir' / 'link -> target') under root."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = f"link -> {os.readlink(p)}"
            elif p.is_dir():
                out[rel] = "dir"
            else:
                out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@pytest.fixture
def ws(template, tmp_path, monkeypatch) -> Path:
    """A fresh copy of the workspace, as the current folder."""
    ws = Path(shutil.copytree(template, tmp_path / "ws", symlinks=True))
    monkeypatch.chdir(ws)
    return ws


# ------------------------------------------------------------------------------------------------ setups
def damage_checkpoint(*drop: str) -> Callable[[Path], None]:
    def setup(ws: Path) -> None:
        path = ws / "runs/vae/checkpoint.pt"
        state = torch.load(path, weights_only=True)
        for k in drop:
            state.pop(k)
        torch.save(state, path)

    return setup


def garbage_checkpoint(ws: Path) -> None:
    (ws / "runs/vae/checkpoint.pt").write_bytes(b"\x80garbage" * 10)


def edit_manifest(**files: str) -> Callable[[Path], None]:
    """Point role files of the bundle's manifest elsewhere."""

    def setup(ws: Path) -> None:
        path = ws / "runs/vae/bundle/manifest.json"
        m = json.loads(path.read_text())
        for role, file in files.items():
            m["roles"][role]["file"] = file
        path.write_text(json.dumps(m))

    return setup


def escaping_symlink(ws: Path) -> None:
    """decoder.onnx replaced by a link to a file outside the bundle."""
    target = ws / "mine" / "decoder.onnx"
    shutil.copy(ws / "runs/vae/bundle/decoder.onnx", target)
    (ws / "runs/vae/bundle/decoder.onnx").unlink()
    (ws / "runs/vae/bundle/decoder.onnx").symlink_to(target)


def external_data_outside(ws: Path) -> None:
    """decoder.onnx keeps its weights in ../../../mine/decoder.bin (outside the bundle); manifest sha256 updated."""
    import onnx

    bundle = ws / BUNDLE
    model = onnx.load(str(bundle / "decoder.onnx"))
    onnx.save_model(model, str(bundle / "decoder.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="decoder.bin", size_threshold=0)
    (bundle / "decoder.bin").rename(ws / "mine" / "decoder.bin")
    model = onnx.load(str(bundle / "decoder.onnx"), load_external_data=False)
    for t in model.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = "../../../mine/decoder.bin"
    onnx.save(model, str(bundle / "decoder.onnx"))
    m = json.loads((bundle / "manifest.json").read_text())
    m["roles"]["decoder"]["sha256"] = hashlib.sha256((bundle / "decoder.onnx").read_bytes()).hexdigest()
    (bundle / "manifest.json").write_text(json.dumps(m))


def data_symlink_outside(ws: Path) -> None:
    (ws / "mine" / "weights.bin").write_bytes(b"\0" * 64)
    (ws / BUNDLE / "decoder.onnx.data").symlink_to(ws / "mine" / "weights.bin")


def tamper_role(ws: Path) -> None:
    with open(ws / "runs/vae/bundle/decoder.onnx", "ab") as f:
        f.write(b"\0")


def remove_role(ws: Path) -> None:
    (ws / "runs/vae/bundle/encoder.onnx").unlink()


def foreign_in_bundle(ws: Path) -> None:
    (ws / "runs/vae/bundle/my_notes.txt").write_text("mine")


def empty_run_dir(ws: Path) -> None:
    (ws / "empty").mkdir()


def hide_torch(monkeypatch) -> None:
    """A runtime-only install: torch (and everything bigmodel builds on it) cannot be imported."""
    for name in list(sys.modules):
        if name == "torch" or name.startswith(("torch.", "bigmodel.models", "bigmodel.training", "bigmodel.export",
                                               "bigmodel.parity", "bigmodel.bench", "bigmodel.quickstart")):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "torch", None)


# -------------------------------------------------------------------------------------------------- table
@dataclass
class Case:
    id: str
    call: tuple[str, ...] | Callable[[Path], Any]  # argv after `bigmodel`, or fn(ws)
    expect: int | type[BaseException]  # exit code, or exception kind
    fragment: str  # a piece of the one-line message
    setup: Callable[[Path], None] | None = None
    no_torch: bool = False


RUN, BUNDLE = "runs/vae", "runs/vae/bundle"
NEW = "fresh"  # a path that does not exist yet
RESUME = ("train", "vae", "--out", RUN, "--resume", "--device", "cpu")
Q = ("quickstart", "--out", NEW)


def load_bundle(ws: Path, **kw):
    return load(ws / BUNDLE, backend="ort-cpu", threads=1, **kw)


def api(fn: Callable[[Any], Any], **load_kw) -> Callable[[Path], Any]:
    """A runtime call on the workspace's bundle."""
    return lambda ws: fn(load_bundle(ws, **load_kw))


def images(value: float, n: int = 2) -> np.ndarray:
    return np.full((n, 1, 28, 28), value, np.float32)


def one_bad_pixel() -> np.ndarray:
    x = images(0.5, 1)
    x[0, 0, 10, 20] = 9.5
    return x


CASES = [
    # ---- 1. --force replaces only what bigmodel made
    Case("export-out-run-force", ("export", RUN, "--out", RUN, "--force"), 2, "holds a training run (checkpoint.pt)"),
    Case("export-out-parent-force", ("export", RUN, "--out", "runs", "--force"), 2, "bigmodel did not write"),
    Case("export-out-cwd-force", ("export", RUN, "--out", ".", "--force"), 2, "is the current folder"),
    Case("export-out-file-force", ("export", RUN, "--out", "runs/notes.txt", "--force"), 2, "is a file"),
    Case("export-out-foreign-force", ("export", RUN, "--out", "mine", "--force"), 2, "bigmodel did not write"),
    Case("export-bundle-with-foreign-file", ("export", RUN, "--force"), 2, "record as bigmodel's (my_notes.txt)",
         setup=foreign_in_bundle),
    Case("export-existing-bundle", ("export", RUN), 2, "already holds a bundle; pass --force"),
    Case("export-triton-foreign", ("export", RUN, "--out", NEW, "--triton", "mine", "--force"), 2,
         "--triton mine holds"),
    Case("export-triton-into-bundle", ("export", RUN, "--out", NEW, "--triton", BUNDLE, "--force"), 2,
         "replaces only a Triton model repository it wrote"),
    Case("export-triton-into-run", ("export", RUN, "--out", NEW, "--triton", RUN, "--force"), 2,
         "a training run (checkpoint.pt)"),
    Case("export-out-home", ("export", RUN, "--out", str(Path.home()), "--force"), 2, "home folder"),
    # ---- 2. silent overwrites
    Case("train-existing-run", ("train", "vae", "--out", RUN, "--device", "cpu"), 2,
         "holds a run at epoch 1; --resume to continue, --force to start over"),
    Case("resume-lr", (*RESUME, "--lr", "0.5"), 2, "--lr 0.001, got 0.5"),
    Case("resume-latent-dim", (*RESUME, "--latent-dim", "7"), 2, f"--latent-dim {LATENT}, got 7"),
    Case("resume-batch-size", (*RESUME, "--batch-size", "7"), 2, "--batch-size 64, got 7"),
    Case("resume-seed", (*RESUME, "--seed", "5"), 2, "--seed 0, got 5"),
    Case("resume-arch", (*RESUME, "--arch", "conv"), 2, "--arch mlp, got conv"),
    Case("resume-dataset", (*RESUME, "--dataset", "digits"), 2, "got digits"),
    Case("resume-beta", (*RESUME, "--beta", "4"), 2, "--beta 1.0, got 4.0"),
    Case("resume-max-train", (*RESUME, "--max-train", "64"), 2, "--max-train 128, got 64"),
    Case("resume-and-force", (*RESUME, "--force"), 2, "pass one of them"),
    Case("resume-other-family", ("train", "gan", "--out", RUN, "--resume", "--device", "cpu"), 2,
         "holds a vae run; got family gan"),
    Case("sample-existing-png", ("sample", BUNDLE, "--out", "grid.png"), 2, "grid.png already exists; pass --force"),
    Case("sample-jpg", ("sample", BUNDLE, "--out", "grid.jpg"), 2, "expected a .png file"),
    Case("sample-no-suffix", ("sample", BUNDLE, "--out", "grid"), 2, "got suffix '(none)'"),
    Case("sample-npy-existing", ("sample", BUNDLE, "--out", "new.png", "--npy", "z.npy"), 2, "z.npy already exists"),
    Case("sample-latents-png", ("sample", BUNDLE, "--out", "new.png", "--latents", "z.png"), 2, "expected a .npy"),
    Case("sample-same-file-twice", ("sample", BUNDLE, "--out", "n.png", "--npy", "a.npy", "--latents", "a.npy"), 2,
         "name the same file"),
    Case("encode-out-existing", ("encode", BUNDLE, "images.npy", "--out", "z.npy"), 2, "z.npy already exists"),
    Case("decode-out-existing", ("decode", BUNDLE, "codes.npy", "--out", "z.npy"), 2, "z.npy already exists"),
    Case("decode-png-existing", ("decode", BUNDLE, "codes.npy", "--out", "x.npy", "--png", "grid.png"), 2,
         "grid.png already exists"),
    Case("decode-png-jpg", ("decode", BUNDLE, "codes.npy", "--out", "x.npy", "--png", "x.jpg"), 2, "expected a .png"),
    Case("decode-out-png", ("decode", BUNDLE, "codes.npy", "--out", "x.png"), 2, "expected a .npy"),
    Case("quickstart-existing-run", ("quickstart", "--out", RUN), 2,
         "holds a run at epoch 1; --force to start over, or choose another --out"),
    # ---- 3. one line instead of a traceback
    Case("sample-out-folder", ("sample", BUNDLE, "--out", "mine"), 2, "expected a .png"),
    Case("sample-out-folder-png", ("sample", BUNDLE, "--out", "codes_dir.png"), 2, "is a folder",
         setup=lambda ws: (ws / "codes_dir.png").mkdir()),
    Case("export-json-folder", ("export", RUN, "--out", NEW, "--json", "mine"), 2, "--json mine is a folder"),
    Case("export-json-existing", ("export", RUN, "--out", NEW, "--json", "report.json"), 2, "already exists"),
    Case("parity-json-folder", ("parity", BUNDLE, "--json", "mine"), 2, "--json mine is a folder"),
    Case("parity-json-existing", ("parity", BUNDLE, "--json", "report.json"), 2, "already exists"),
    Case("parity-save-inputs-file", ("parity", BUNDLE, "--save-inputs", "report.json"), 2, "is a file"),
    Case("bench-json-existing", ("bench", BUNDLE, "--json", "report.json"), 2, "already exists"),
    Case("bench-plot-jpg", ("bench", BUNDLE, "--plot", "p.jpg"), 2, "expected a .png"),
    Case("eval-json-existing", ("eval", BUNDLE, "--json", "report.json"), 2, "--json report.json already exists"),
    Case("eval-json-folder", ("eval", BUNDLE, "--json", "mine"), 2, "--json mine is a folder"),
    Case("eval-picture-jpg", ("eval", BUNDLE, "--picture", "n.jpg"), 2, "expected a .png"),
    Case("eval-picture-existing", ("eval", BUNDLE, "--picture", "grid.png"), 2, "grid.png already exists"),
    Case("tune-not-a-bundle", ("tune", "mine"), 2, "not a bundle"),
    Case("train-seed-negative", ("train", "vae", "--out", NEW, "--seed", "-1"), 2, "--seed must be an integer"),
    Case("sample-seed-negative", ("sample", BUNDLE, "--out", "s.png", "--seed", "-1"), 2, "--seed must be"),
    Case("sample-n-billion", ("sample", BUNDLE, "--out", "s.png", "-n", "1000000000"), 2, "-n must be at most 10,000"),
    Case("sample-n-ten-million", ("sample", BUNDLE, "--out", "s.png", "-n", "10000000"), 2, "-n must be at most"),
    Case("sample-n-zero", ("sample", BUNDLE, "--out", "s.png", "-n", "0"), 2, "-n must be a positive integer"),
    Case("sample-ncol-zero", ("sample", BUNDLE, "--out", "s.png", "--ncol", "0"), 2, "--ncol must be >= 1"),
    Case("quickstart-threads-zero", (*Q, "--threads", "0"), 2, "--threads must be a positive integer"),
    Case("resume-checkpoint-lacks-fields", RESUME, 2, "lacks optimizers, rng",
         setup=damage_checkpoint("optimizers", "rng")),
    Case("export-checkpoint-lacks-fields", ("export", RUN, "--out", NEW), 2, "missing a field",
         setup=damage_checkpoint("config")),
    Case("train-no-torch", ("train", "vae", "--out", NEW), 2, "pip install 'bigmodel[cpu]'", no_torch=True),
    Case("export-no-torch", ("export", RUN, "--out", NEW), 2, "pip install 'bigmodel[cpu]'", no_torch=True),
    Case("models-no-torch", ("models",), 2, "needs the 'torch' package", no_torch=True),
    Case("quickstart-no-torch", Q, 2, "pip install 'bigmodel[cpu]'", no_torch=True),
    # ---- 4. late validation
    Case("quickstart-bench-duration", (*Q, "--bench-duration", "-1"), 2, "--bench-duration must be a positive"),
    Case("quickstart-bench-duration-zero", (*Q, "--bench-duration", "0"), 2, "--bench-duration must be a positive"),
    Case("quickstart-max-train-negative", (*Q, "--max-train", "-5"), 2, "--max-train must be a positive integer"),
    Case("quickstart-max-train-zero", (*Q, "--max-train", "0"), 2, "--max-train must be a positive integer"),
    Case("quickstart-epochs-zero", (*Q, "--epochs", "0"), 2, "--epochs must be a positive integer"),
    Case("quickstart-unknown-family", ("quickstart", "--family", "flow", "--out", NEW), 2, "flow"),
    Case("quickstart-out-file", ("quickstart", "--out", "report.json"), 2, "is a file"),
    Case("quickstart-out-foreign", ("quickstart", "--out", "mine"), 2, "a run does not write (thesis.tex)"),
    Case("train-max-train-negative", ("train", "vae", "--out", NEW, "--max-train", "-5"), 2, "--max-train must be"),
    Case("train-max-train-zero", ("train", "vae", "--out", NEW, "--max-train", "0"), 2, "--max-train must be"),
    Case("train-max-train-below-batch", ("train", "vae", "--out", NEW, "--max-train", "5", "--batch-size", "128",
                                           "--dataset", "digits"), 2,
         "(--max-train 5)"),
    Case("train-epochs-zero", ("train", "vae", "--out", NEW, "--epochs", "0"), 2, "--epochs must be"),
    Case("train-batch-zero", ("train", "vae", "--out", NEW, "--batch-size", "0"), 2, "--batch-size must be"),
    Case("train-lr-negative", ("train", "vae", "--out", NEW, "--lr", "-1"), 2, "lr must be a positive number"),
    Case("train-unknown-family", ("train", "flow", "--out", NEW), 2, "flow"),
    Case("train-unknown-arch", ("train", "vae", "--out", NEW, "--arch", "resnet"), 2, "unknown arch 'resnet'"),
    Case("train-device", ("train", "vae", "--out", NEW, "--device", "tpu"), 2, "--device must be auto, cpu or cuda"),
    Case("train-out-parent", ("train", "vae", "--out", "runs"), 2, "a run does not write (notes.txt, vae)"),
    Case("train-out-foreign", ("train", "vae", "--out", "mine", "--force"), 2, "a run does not write (thesis.tex)"),
    Case("train-out-file", ("train", "vae", "--out", "report.json"), 2, "is a file"),
    Case("train-resume-empty", ("train", "vae", "--out", "empty", "--resume"), 2, "checkpoint not found",
         setup=empty_run_dir),
    Case("train-resume-garbage", RESUME, 2, "no readable checkpoint", setup=garbage_checkpoint),
    Case("train-run-with-user-files", ("train", "vae", "--out", RUN), 2, "holds a run at epoch 1; --resume",
         setup=lambda ws: (ws / RUN / "my-notes.txt").write_text("mine")),
    Case("train-existing-garbage", ("train", "vae", "--out", RUN), 2, "holds an unreadable checkpoint.pt",
         setup=garbage_checkpoint),
    Case("export-opset", ("export", RUN, "--out", NEW, "--opset", "3"), 2, "--opset must be between"),
    Case("export-precision", ("export", RUN, "--out", NEW, "--precision", "fp8"), 2, "--precision must be one of"),
    Case("export-calibration", ("export", RUN, "--out", NEW, "--calibration", "0"), 2, "--calibration must be"),
    Case("export-missing-run", ("export", "nowhere", "--out", NEW), 2, "checkpoint not found"),
    # ---- 6. runtime inputs (CLI)
    Case("decode-huge-codes", ("decode", BUNDLE, "huge_codes.npy", "--out", "x.npy"), 2, "came back non-finite"),
    Case("decode-nan-codes", ("decode", BUNDLE, "nan_codes.npy", "--out", "x.npy"), 2, "expected finite values"),
    Case("decode-wide-codes", ("decode", BUNDLE, "wide_codes.npy", "--out", "x.npy"), 2, f"latent size {LATENT}"),
    Case("encode-bright", ("encode", BUNDLE, "bright.npy", "--out", "c.npy"), 2, "expected values in the data range"),
    Case("encode-dark", ("encode", BUNDLE, "dark.npy", "--out", "c.npy"), 2, "got values from -5 to -5"),
    Case("encode-object-array", ("encode", BUNDLE, "objects.npy", "--out", "c.npy"), 2, "expected a .npy array"),
    Case("encode-text-file", ("encode", BUNDLE, "text.npy", "--out", "c.npy"), 2, "expected a .npy array"),
    # ---- 7. containment (CLI info shows the table, then exits 1)
    Case("info-dotdot", ("info", BUNDLE), 1, "outside the bundle", setup=edit_manifest(decoder="../../etc/passwd")),
    Case("info-absolute", ("info", BUNDLE), 1, "outside the bundle", setup=edit_manifest(decoder="/etc/passwd")),
    Case("info-symlink", ("info", BUNDLE), 1, "outside the bundle", setup=escaping_symlink),
    Case("sample-dotdot", ("sample", BUNDLE, "--out", "s.png"), 2, "refusing an absolute path or '..'",
         setup=edit_manifest(decoder="../checkpoint.pt")),
    # ---- 8. small ones
    Case("decode-codes-folder", ("decode", BUNDLE, "codes_dir", "--out", "x.npy"), 2,
         "codes_dir is a folder; expected a .npy file"),
    Case("decode-codes-missing", ("decode", BUNDLE, "nope.npy", "--out", "x.npy"), 2, "it does not exist"),
    Case("version", ("--version",), 0, "bigmodel "),
    Case("info-tampered", ("info", BUNDLE), 1, "decoder.onnx sha256 mismatch", setup=tamper_role),
    Case("info-missing-role", ("info", BUNDLE), 1, "encoder.onnx missing", setup=remove_role),
    Case("info-json-tampered", ("info", BUNDLE, "--json"), 1, "sha256 mismatch", setup=tamper_role),
    Case("info-not-a-bundle", ("info", "mine"), 2, "not a bundle"),
    Case("sample-not-a-bundle", ("sample", "nowhere", "--out", "s.png"), 2, "bundle folder not found"),
    Case("sample-threads-zero", ("sample", BUNDLE, "--out", "s.png", "--threads", "0"), 2, "threads must be"),
    Case("sample-backend", ("sample", BUNDLE, "--out", "s.png", "--backend", "cuda-magic"), 2, "backend must be"),
    Case("sample-device", ("sample", BUNDLE, "--out", "s.png", "--device", "tpu"), 2, "got 'tpu'"),
    Case("sample-missing-role", ("sample", BUNDLE, "--out", "s.png"), 2, "encoder expects encoder.onnx",
         setup=remove_role),
    # ---- runtime API
    Case("api-dotdot", lambda ws: load_bundle(ws), BundleError, "refusing an absolute path or '..'",
         setup=edit_manifest(decoder="../../etc/passwd")),
    Case("api-absolute", lambda ws: load_bundle(ws), BundleError, "refusing an absolute path",
         setup=edit_manifest(encoder="/etc/passwd")),
    Case("api-symlink", lambda ws: load_bundle(ws), BundleError, "leads outside the bundle folder",
         setup=escaping_symlink),
    Case("api-dotdot-unverified", lambda ws: load_bundle(ws, verify=False), BundleError, "'..'",
         setup=edit_manifest(decoder="sub/../../x.onnx")),
    Case("api-external-data-outside", lambda ws: load_bundle(ws), BundleError, "onnxruntime cannot load",
         setup=external_data_outside),
    Case("api-data-symlink-outside", lambda ws: load_bundle(ws), BundleError, "external data of role decoder",
         setup=data_symlink_outside),
    Case("api-seed-negative", api(lambda m: m.sample(2, seed=-1)), InputError, "seed must be None or an integer"),
    Case("api-seed-string", api(lambda m: m.sample(2, seed="a")), InputError, "got 'a'"),
    Case("api-seed-float", api(lambda m: m.sample(2, seed=1.5)), InputError, "got 1.5"),
    Case("api-seed-too-big", api(lambda m: m.sample(2, seed=2**64)), InputError, "seed must be"),
    Case("api-n-trillion", api(lambda m: m.sample(10**12)), InputError, "GiB for codes and images"),
    Case("api-n-zero", api(lambda m: m.sample(0)), InputError, "n must be a positive integer"),
    Case("api-n-float", api(lambda m: m.sample(2.0)), InputError, "n must be a positive integer"),
    Case("api-ragged", api(lambda m: m.decode([[0.0] * LATENT, [0.0]])), InputError, "one rectangular array"),
    Case("api-mixed-objects", api(lambda m: m.decode([[0.0, "a", None, 1]])), InputError, "expected"),
    Case("api-strings", api(lambda m: m.decode([["a"] * LATENT])), InputError, "got dtype <U1"),
    Case("api-decode-huge", api(lambda m: m.decode(np.full((3, LATENT), 3e38, np.float32))), InputError,
         "came back non-finite (NaN/Inf) for 3 of 3 sample(s), the first at batch index 0"),
    Case("api-decode-one-huge", api(lambda m: m.decode(np.array([[0] * LATENT, [3e38] * LATENT], np.float32))),
         InputError, "for 1 of 2 sample(s), the first at batch index 1"),
    Case("api-decode-float64-overflow", api(lambda m: m.decode(np.full((1, LATENT), 1e300))), InputError,
         "expected finite values"),
    Case("api-decode-inf", api(lambda m: m.decode(np.array([0, 0, np.inf, 0], np.float32))), InputError,
         "the first at index (0, 2)"),
    Case("api-encode-1000", api(lambda m: m.encode(images(1000.0))), InputError, "data range [0, 1]"),
    Case("api-encode-minus-5", api(lambda m: m.encode(images(-5.0))), InputError, "data range [0, 1]"),
    Case("api-encode-one-bad-pixel", api(lambda m: m.encode(one_bad_pixel())), InputError,
         "the first outside at index (0, 0, 10, 20) (9.5)"),
    Case("api-encode-nan", api(lambda m: m.encode(images(np.nan))), InputError, "NaN/Inf"),
    Case("api-reconstruct-1000", api(lambda m: m.reconstruct(images(1000.0))), InputError, "data range"),
    Case("api-run-1000", api(lambda m: m.run("encoder", {"x": images(1000.0)})), InputError, "data range"),
    Case("api-encode-ragged", api(lambda m: m.encode([[1, 2], [3]])), InputError, "rectangular"),
    Case("api-interpolate-steps", api(lambda m: m.interpolate(np.zeros(LATENT), np.ones(LATENT), steps=1)),
         InputError, "steps must be an integer >= 2"),
    Case("api-empty-batch", api(lambda m: m.decode(np.zeros((0, LATENT), np.float32))), InputError, "empty batch"),
    Case("api-threads-zero", lambda ws: load(ws / BUNDLE, threads=0), InputError, "threads must be a positive"),
    Case("api-no-role", api(lambda m: m.run("generator", {})), InputError, "has no role 'generator'"),
    Case("api-no-bundle", lambda ws: load(ws / "mine"), BundleError, "not a bundle"),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_refused_in_one_line_and_nothing_changed(case: Case, ws: Path, monkeypatch) -> None:
    if case.setup:
        case.setup(ws)
    before = snapshot(ws)
    if case.no_torch:
        hide_torch(monkeypatch)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a RuntimeWarning (overflow, invalid value) is a failure too
        if callable(case.call):
            with pytest.raises(case.expect) as info:
                case.call(ws)
            message = str(info.value)
            assert "\n" not in message
        else:
            code, message = run_cli(*case.call)
            assert code == case.expect, message
            assert "Traceback" not in message
            if code:
                errors = [line for line in message.splitlines() if line.startswith("error:")]
                assert len(errors) == 1, message
                message = errors[0]
    assert case.fragment in message, message
    assert snapshot(ws) == before


def test_the_table_covers_every_case_of_the_issue_and_forty_more() -> None:
    assert len(CASES) >= 80 + 40 // 2  # the issue's ~40 cases plus at least 40 more (ids are unique)
    assert len({c.id for c in CASES}) == len(CASES)


# ------------------------------------------------------------------------------------ what --force may do
def test_force_replaces_what_bigmodel_made_and_nothing_else(ws: Path) -> None:
    """export --force replaces its bundle; train --force starts over and drops the bundle of the old
    checkpoint; sample --force overwrites its file; a Triton repository bigmodel wrote may be replaced."""
    mine = {k: v for k, v in snapshot(ws).items() if not k.startswith("runs/vae")}
    old_manifest = json.loads((ws / BUNDLE / "manifest.json").read_text())
    code, out = run_cli("export", RUN, "--force", "--triton", "triton")
    assert code == 0, out
    code, out = run_cli("export", RUN, "--force", "--triton", "triton", "--json", "report.json")
    assert code == 0, out
    assert (ws / "triton" / ".bigmodel-triton").is_file() and json.loads((ws / "report.json").read_text())["bundle"]
    assert json.loads((ws / BUNDLE / "manifest.json").read_text())["checkpoint_sha256"] == \
        old_manifest["checkpoint_sha256"]
    assert [p.name for p in (ws / "runs/vae").iterdir() if p.name.startswith(".")] == []

    code, out = run_cli("sample", BUNDLE, "--out", "grid.png", "--force", "-n", "4")
    assert code == 0, out
    assert (ws / "grid.png").read_bytes().startswith(b"\x89PNG")

    code, out = run_cli("train", "vae", "--out", RUN, "--force", "--device", "cpu", "--epochs", "1",
                        "--batch-size", "64", "--max-train", "64", "--dataset", "digits", "--latent-dim", "3")
    assert code == 0, out
    assert not (ws / BUNDLE).exists()  # exported from the checkpoint just replaced
    assert torch.load(ws / RUN / "checkpoint.pt", weights_only=True)["config"]["latent_dim"] == 3
    after = snapshot(ws)
    for name, digest in mine.items():
        if name not in ("grid.png", "report.json"):
            assert after[name] == digest, name


def test_stale_temporaries_of_dead_processes_go_and_a_live_ones_stay(ws: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        run = ws / RUN
        stale = [run / f".checkpoint.pt.{dead.pid}.abcd1234.tmp", run / f".samples.png.{dead.pid}.zz_99xyz.tmp",
                 run / f".bundle.{dead.pid}.old", run / f".bundle.{dead.pid}.q1w2e3r4.tmp"]
        # a live process's temporary, files that only look like temporaries, and what a user keeps in a run
        # folder (another bundle, a TensorRT timing cache, notes): --resume continues among them
        kept = [run / f".metrics.jsonl.{live.pid}.abcd1234.tmp", run / ".keep", run / ".checkpoint.pt.xyz.tmp",
                run / "bundle.timing.trt10.13.sm90.cache", run / "my-notes.txt"]
        shutil.copytree(run / "bundle", run / "bundle-fp16")
        for p in stale[:2] + kept:
            p.write_bytes(b"partial")
        for p in stale[2:]:
            p.mkdir()
            (p / "decoder.onnx").write_bytes(b"partial")
        code, out = run_cli("train", "vae", "--out", RUN, "--resume", "--epochs", "2", "--device", "cpu")
        assert code == 0, out
        code, out = run_cli("export", RUN, "--force")
        assert code == 0, out
        assert [p for p in stale if p.exists()] == []
        assert all(p.exists() for p in kept) and (run / "bundle-fp16" / "manifest.json").is_file()
        assert remove_stale_temps(run) == []
    finally:
        live.kill()
        live.wait()


# --------------------------------------------------------------------------- real full / read-only filesystems
@contextlib.contextmanager
def tmpfs(path: Path, size: str):
    """A real small filesystem at `path` (tmpfs: needs root, or CAP_SYS_ADMIN); skip where not permitted."""
    path.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True,
                       text=True)
    if r.returncode:
        pytest.skip(f"cannot mount a tmpfs to test a full/read-only disk here: {r.stderr.strip() or r.returncode}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def read_only(path: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(path)], check=True)


READ_ONLY = [
    ("train", "vae", "--out", "ro/run", "--device", "cpu"),
    ("export", RUN, "--out", "ro/bundle"),
    ("export", RUN, "--out", NEW, "--triton", "ro/triton"),
    ("export", RUN, "--out", "ro/old-bundle", "--force"),
    ("sample", BUNDLE, "--out", "ro/s.png"),
    ("decode", BUNDLE, "codes.npy", "--out", "ro/x.npy"),
    ("encode", BUNDLE, "images.npy", "--out", "ro/z.npy"),
    ("parity", BUNDLE, "--json", "ro/p.json"),
    ("bench", BUNDLE, "--json", "ro/deeper/b.json"),
    ("quickstart", "--out", "ro/q"),
    ("tune", "ro/old-bundle"),
]


def test_a_read_only_filesystem_is_one_line_exit_3_before_any_work(ws: Path) -> None:
    with tmpfs(ws / "ro", "1m") as ro:
        shutil.copytree(ws / BUNDLE, ro / "old-bundle")
        read_only(ro)
        before = snapshot(ws)
        for argv in READ_ONLY:
            code, out = run_cli(*argv)
            assert code == 3, (argv, out)
            assert "Traceback" not in out and out.count("error:") == 1, (argv, out)
            assert "Read-only file system" in out and "ro" in out, (argv, out)
        assert snapshot(ws) == before


def test_a_full_disk_is_one_line_exit_3_and_leaves_nothing_behind(ws: Path, mnist_npy) -> None:
    """Real writes that run out of space: a checkpoint, a bundle's graphs, a PNG, a .npy."""
    cases = [
        (("train", "vae", "--out", "full/run", "--device", "cpu", "--dataset", str(mnist_npy), "--epochs", "1",
          "--batch-size", "64", "--max-train", "64"), "300k"),
        (("export", RUN, "--out", "full/bundle"), "100k"),
        (("sample", BUNDLE, "--out", "full/s.png", "-n", "256"), "4k"),
        (("decode", BUNDLE, "codes.npy", "--out", "full/x.npy", "--png", "full/x.png"), "4k"),
    ]
    for i, (argv, size) in enumerate(cases):
        full = ws / "full"
        with tmpfs(full, size):
            if i == 3:  # fill what is left with a file of the user's, which must survive
                with contextlib.suppress(OSError), open(full / "filler", "wb") as f:
                    f.write(b"x" * 8192)
            before = snapshot(full)
            code, out = run_cli(*argv)
            assert code == 3, (argv, out)
            assert "Traceback" not in out and out.count("error:") == 1, (argv, out)
            assert "No space left on device" in out, (argv, out)
            left = {k: v for k, v in snapshot(full).items() if k not in before}
            assert all(k in ("run", "run/config.json") for k in left), (argv, left)  # no temporaries, no half file
            assert {k: v for k, v in snapshot(full).items() if k in before} == before
        full.rmdir()


# ------------------------------------------------------------------------------------------------ kill -9
def _bigmodel(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "bigmodel", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def _kill_when(proc: subprocess.Popen, ready: Callable[[], bool], timeout: float = 300.0) -> bool:
    """SIGKILL `proc` as soon as `ready()` holds (polled every ms); False if it ended first."""
    end = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < end:
        if ready():
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return True
        time.sleep(0.001)
    proc.wait()
    return False


def _temps(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") and p.name.endswith((".tmp", ".old")))


def _epoch(run: Path) -> int:
    try:
        return int(torch.load(run / "checkpoint.pt", weights_only=True)["epoch"])
    except Exception:
        return 0


@pytest.mark.slow
def test_sigkill_during_train_and_export_loses_nothing_and_resume_is_bit_identical(tmp_path, mnist_npy) -> None:
    """train is killed while a checkpoint is being written, right after one landed, and mid-epoch; each time
    the checkpoint on disk loads with weights_only=True and --resume continues; the end is bit-identical to
    an uninterrupted run. export is killed at several moments: never a half bundle at the final path, and
    the next export leaves no temporaries behind."""
    common = ("vae", "--dataset", str(mnist_npy), "--epochs", "6", "--batch-size", "32", "--device", "cpu")
    straight, run = tmp_path / "straight", tmp_path / "run"
    p = _bigmodel("train", *common, "--out", str(straight))
    assert p.wait() == 0, p.stderr.read()

    kills = [
        lambda: any(n.startswith(".checkpoint.pt.") for n in os.listdir(run)) if run.exists() else False,
        lambda: _epoch(run) >= 2,
        lambda: (run / "metrics.jsonl").exists() and len((run / "metrics.jsonl").read_text().splitlines()) >= 3,
        lambda: any(n.startswith(".checkpoint.pt.") for n in os.listdir(run)) and _epoch(run) >= 4,
    ]
    killed = 0
    for ready in kills:
        resume = ("--resume",) if (run / "checkpoint.pt").exists() else ()
        p = _bigmodel("train", *common, "--out", str(run), *resume)
        if _kill_when(p, ready):
            killed += 1
            if (run / "checkpoint.pt").exists():
                state = torch.load(run / "checkpoint.pt", weights_only=True)  # whole, and only plain data
                assert state["format"] == "bigmodel-checkpoint"
    assert killed >= 3
    resume = ("--resume",) if (run / "checkpoint.pt").exists() else ()
    p = _bigmodel("train", *common, "--out", str(run), *resume)
    assert p.wait() == 0, p.stderr.read()
    a = torch.load(straight / "checkpoint.pt", weights_only=True)
    b = torch.load(run / "checkpoint.pt", weights_only=True)
    assert a["epoch"] == b["epoch"] == 6
    for k in a["state_dict"]:
        assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k
    assert _temps(run) == []  # the resumed run removed what the killed ones left

    bundle = run / "bundle"
    killed = 0
    for delay in (0.3, 1.0, 2.0, 3.5):
        force = ("--force",) if bundle.exists() else ()
        p = _bigmodel("export", str(run), *force)
        start = time.monotonic()
        killed += _kill_when(p, lambda d=delay, t0=start: time.monotonic() - t0 > d)
        if bundle.exists():  # the rename happened: then it is whole
            from bigmodel.manifest import read_manifest
            from bigmodel.runtime import verify_files

            verify_files(bundle, read_manifest(bundle))
    assert killed >= 2
    p = _bigmodel("export", str(run), *(("--force",) if bundle.exists() else ()))
    assert p.wait() == 0, p.stderr.read()
    assert _temps(run) == [] and _temps(bundle) == []
    assert load(bundle).sample(2, seed=0).shape == (2, 1, 28, 28)

"""--force removes only what bigmodel recorded as its own; a crash never leaves less than one whole bundle;
outputs never land on what a command reads or writes; one writer per folder.

Every refusal is checked the same way as tests/test_safety.py's table: the real entry point, the exit
code, one `error:` line naming the file, and every file of the workspace byte-identical afterwards.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import test_safety
import torch
from conftest import run_cli
from test_safety import BUNDLE, NEW, RUN, snapshot, tmpfs

from bigmodel.fileio import folder_lock, lock_path, remove_stale_temps
from bigmodel.manifest import read_manifest
from bigmodel.runtime import verify_files

template, ws = test_safety.template, test_safety.ws  # the same workspace fixtures: a real run, bundle, user files
TRAIN = ("--device", "cpu", "--epochs", "1", "--batch-size", "64", "--max-train", "64", "--dataset", "digits")


def refused(argv: tuple[str, ...], ws: Path, fragment: str, code: int = 2) -> str:
    """Run `bigmodel ARGV`: exit `code`, one error line holding `fragment`, the workspace unchanged."""
    before = snapshot(ws)
    got, out = run_cli(*argv)
    assert got == code, out
    assert "Traceback" not in out
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, out
    assert fragment in errors[0], errors[0]
    assert snapshot(ws) == before
    return errors[0]


# ------------------------------------------------------------------------- --force and a user's files
USERS_FILES = ["my_own_model.onnx", "my_own_model.onnx.data", "tuning_mine.json", "tuning.json",
               "engines/my.engine", "fp32/decoder.onnx", "reference/mine.pt2", "decoder.onnx.data", ".notes",
               "empty_folder/"]


@pytest.mark.parametrize("name", USERS_FILES)
def test_export_force_refuses_a_bundle_holding_a_file_its_manifest_does_not_record(ws: Path, name: str) -> None:
    target = ws / "X"
    shutil.copytree(ws / BUNDLE, target)
    if name.endswith("/"):
        (target / name).mkdir()
    else:
        (target / name).parent.mkdir(exist_ok=True)
        (target / name).write_bytes(b"the user's own file")  # tuning.json: not a table bigmodel wrote
    refused(("export", RUN, "--out", "X", "--force"), ws, name.split("/")[0])  # (a folder: named as such)


def test_export_force_replaces_a_bundle_with_its_tuning_table(ws: Path) -> None:
    """A table `bigmodel tune` wrote is bigmodel's: --force may replace the bundle holding it."""
    table = {"format": 1, "machine": {}, "roles": {}}
    (ws / BUNDLE / "tuning.json").write_text(json.dumps(table))
    code, out = run_cli("export", RUN, "--force")
    assert code == 0, out
    assert not (ws / BUNDLE / "tuning.json").exists()


def test_export_triton_force_refuses_a_model_the_user_added(ws: Path) -> None:
    code, out = run_cli("export", RUN, "--out", NEW, "--triton", "T")
    assert code == 0, out
    assert json.loads((ws / "T" / ".bigmodel-triton").read_text())["files"]
    (ws / "T" / "my_model" / "1").mkdir(parents=True)
    (ws / "T" / "my_model" / "config.pbtxt").write_text('name: "my_model"\n')
    (ws / "T" / "my_model" / "1" / "model.onnx").write_bytes(b"mine")
    refused(("export", RUN, "--out", NEW, "--force", "--triton", "T"), ws, "my_model/")
    (ws / "T" / "vae_decoder" / "1" / "extra.txt").write_text("mine too")  # inside one of bigmodel's models
    shutil.rmtree(ws / "T" / "my_model")
    refused(("export", RUN, "--out", NEW, "--force", "--triton", "T"), ws, "vae_decoder/1/extra.txt")


def test_an_old_unlisted_triton_marker_is_not_enough(ws: Path) -> None:
    (ws / "T" / "vae_decoder" / "1").mkdir(parents=True)
    (ws / "T" / ".bigmodel-triton").write_text("written by bigmodel export; --force may replace this folder\n")
    (ws / "T" / "vae_decoder" / "config.pbtxt").write_text("x")
    refused(("export", RUN, "--out", NEW, "--force", "--triton", "T"), ws, "bigmodel did not write")


@pytest.mark.parametrize("command", ["train", "quickstart"])
def test_train_force_refuses_an_old_bundle_holding_a_users_file(ws: Path, command: str) -> None:
    (ws / BUNDLE / "my_notes.txt").write_text("mine")
    argv = ("train", "vae", "--out", RUN, "--force", *TRAIN) if command == "train" else \
        ("quickstart", "--out", RUN, "--force", "--epochs", "1", "--max-train", "64")
    refused(argv, ws, "my_notes.txt")


def test_train_force_on_a_full_disk_keeps_the_old_run_whole(ws: Path) -> None:
    """The old bundle and config go only after the new checkpoint has landed: a refused write (no space)
    leaves checkpoint, config and bundle of the old run as they were."""
    with tmpfs(ws / "full", "2m") as full:
        shutil.copytree(ws / RUN, full / "run")
        free = os.statvfs(full).f_bavail * os.statvfs(full).f_frsize
        (full / "filler").write_bytes(b"x" * max(0, free - (64 << 10)))  # room for a lock, not a checkpoint
        before = snapshot(full)
        code, out = run_cli("train", "vae", "--out", "full/run", "--force", "--seed", "7", *TRAIN)
        assert code == 3, out
        assert out.count("error:") == 1 and "No space left on device" in out and "Traceback" not in out
        assert snapshot(full) == before
        assert json.loads((full / "run" / "config.json").read_text())["settings"]["seed"] == 0


def test_train_force_drops_the_old_bundle_once_the_new_checkpoint_landed(ws: Path) -> None:
    code, out = run_cli("train", "vae", "--out", RUN, "--force", "--seed", "3", *TRAIN)
    assert code == 0, out
    assert not (ws / BUNDLE).exists()
    assert json.loads((ws / RUN / "config.json").read_text())["settings"]["seed"] == 3
    assert torch.load(ws / RUN / "checkpoint.pt", weights_only=True)["settings"]["seed"] == 3


# --------------------------------------------------------------------- outputs on what is read / written
OVERLAPS = [
    (("export", RUN, "--out", "S", "--triton", "S"), "overlap"),
    (("export", RUN, "--out", "N", "--triton", "N/triton"), "overlap"),
    (("export", RUN, "--out", "N/inner", "--triton", "N"), "overlap"),
    (("export", RUN, "--force", "--triton", BUNDLE), "overlap"),
    (("export", RUN, "--out", NEW, "--json", f"{NEW}/report.json"), "lies inside"),
    (("export", RUN, "--force", "--json", f"{BUNDLE}/manifest.json"), "lies inside"),
    (("export", RUN, "--out", NEW, "--force", "--json", f"{RUN}/checkpoint.pt"), "one of the run's own files"),
    (("export", f"{RUN}/checkpoint.pt", "--out", NEW, "--force", "--json", f"{RUN}/config.json"),
     "one of the run's own files"),
    (("export", RUN, "--out", NEW, "--triton", "T", "--json", "T/r.json"), "lies inside"),
    (("parity", BUNDLE, "--force", "--json", f"{BUNDLE}/manifest.json"), "lies inside"),
    (("parity", BUNDLE, "--force", "--json", f"{RUN}/checkpoint.pt"), "one of the run's own files"),
    (("parity", BUNDLE, "--force", "--save-inputs", BUNDLE), "lies inside"),
    (("bench", BUNDLE, "--force", "--json", f"{BUNDLE}/decoder.onnx"), "lies inside"),
    (("bench", BUNDLE, "--force", "--plot", f"{RUN}/curves.png"), "one of the run's own files"),
    (("eval", BUNDLE, "--force", "--json", f"{RUN}/metrics.jsonl"), "one of the run's own files"),
    (("eval", RUN, "--force", "--json", f"{RUN}/config.json"), "one of the run's own files"),
    (("sample", BUNDLE, "--force", "--out", f"{BUNDLE}/grid.png"), "lies inside"),
    (("sample", BUNDLE, "--force", "--out", f"{RUN}/samples.png"), "one of the run's own files"),
    (("decode", BUNDLE, "codes.npy", "--force", "--out", f"{BUNDLE}/x.npy"), "lies inside"),
    (("encode", BUNDLE, "images.npy", "--force", "--out", f"{RUN}/bundle/z.npy"), "lies inside"),
]


@pytest.mark.parametrize("argv,fragment", OVERLAPS, ids=[" ".join(a) for a, _ in OVERLAPS])
def test_an_output_never_names_what_the_command_reads_or_writes(ws: Path, argv, fragment) -> None:
    refused(argv, ws, fragment)


def test_a_report_beside_the_run_files_is_fine(ws: Path) -> None:
    code, out = run_cli("sample", BUNDLE, "--out", f"{RUN}/my_grid.png", "-n", "4")
    assert code == 0, out


# ------------------------------------------------------------------------------------ refused targets
def test_train_refuses_home_and_the_current_folder_even_with_only_dotfiles(ws: Path, monkeypatch) -> None:
    home = ws / "home"
    home.mkdir()
    (home / ".bashrc").write_text("export X=1\n")
    (home / ".cache").mkdir()
    monkeypatch.setenv("HOME", str(home))
    refused(("train", "vae", "--out", str(home), *TRAIN), ws, "home folder")
    refused(("quickstart", "--out", str(home), "--epochs", "1"), ws, "home folder")
    monkeypatch.chdir(ws / "mine")
    refused(("train", "vae", "--out", ".", *TRAIN), ws, "current folder")
    refused(("train", "vae", "--out", "..", *TRAIN), ws, "current folder")
    monkeypatch.chdir(ws)
    (ws / "dots").mkdir()
    (ws / "dots" / ".env").write_text("SECRET=1\n")
    refused(("train", "vae", "--out", "dots", *TRAIN), ws, "a run does not write (.env)")


# ------------------------------------------------------------------------------ a kill at every rename
HOOK = textwrap.dedent("""
    import os, shutil, signal, sys
    from pathlib import Path
    import bigmodel.fileio as fileio
    import bigmodel.fileio.atomic as atomic

    kill_at, top, log = int(os.environ["KILL_AT"]), os.path.abspath(os.environ["TOP"]), os.environ["LOG"]
    count = [0]

    def ours(*paths):
        return any(isinstance(p, (str, os.PathLike)) and os.path.abspath(p).startswith(top) for p in paths)

    def hooked(fn, name):
        def call(*args, **kw):
            if ours(*args[:2]) or kw.get("dir_fd") is not None:  # rmtree unlinks by name within its folder
                count[0] += 1
                with open(log, "a") as f:
                    f.write(f"{count[0]} {name} {args[:2]}\\n")
                if count[0] == kill_at:
                    os.kill(os.getpid(), signal.SIGKILL)
            return fn(*args, **kw)
        return call

    for name in ("rename", "replace", "unlink", "rmdir", "remove"):
        setattr(os, name, hooked(getattr(os, name), name))
    exchange = atomic._exchange
    atomic._exchange = hooked((lambda a, b: False) if os.environ.get("NO_EXCHANGE") else exchange, "exchange")
    """)


def _kill_run(code: str, kill_at: int, top: Path, log: Path, no_exchange: bool) -> int:
    env = {**os.environ, "KILL_AT": str(kill_at), "TOP": str(top), "LOG": str(log),
           "NO_EXCHANGE": "1" if no_exchange else ""}
    r = subprocess.run([sys.executable, "-c", HOOK + code], env=env, capture_output=True, text=True)
    assert r.returncode in (0, -signal.SIGKILL), r.stderr[-3000:]
    return r.returncode


@pytest.mark.parametrize("no_exchange", [False, True], ids=["rename-exchange", "two-renames"])
def test_a_kill_at_every_rename_and_unlink_of_a_replace_leaves_a_whole_bundle(ws: Path, tmp_path, no_exchange) -> None:
    """replace_dir (what export --force ends with) killed at each of its renames and removals, in turn: the
    folder then holds a complete bundle (old or new) once the next bigmodel run has tidied it, never none."""
    top = tmp_path / "top"
    code = "\nhere = Path(top)\nfileio.replace_dir(next(here.glob('.bundle.*.tmp')), here / 'bundle')\n"
    old_sha = read_manifest(ws / BUNDLE).checkpoint_sha256
    n, kills = 0, 0
    while True:
        n += 1
        shutil.rmtree(top, ignore_errors=True)
        top.mkdir()
        shutil.copytree(ws / BUNDLE, top / "bundle")
        new = top / ".bundle.999999999.abcdefgh.tmp"  # a pid no process has: stale once its writer is gone
        shutil.copytree(ws / BUNDLE, new)
        m = json.loads((new / "manifest.json").read_text())
        m["extra"]["generation"] = "new"
        (new / "manifest.json").write_text(json.dumps(m))
        log = tmp_path / f"log{n}"
        rc = _kill_run(code, n, top, log, no_exchange)
        if rc == 0:
            break  # fewer calls than n: every point has been killed at
        assert rc == -signal.SIGKILL, rc
        kills += 1
        remove_stale_temps(top)  # what the next bigmodel run in that folder does first
        verify_files(top / "bundle", read_manifest(top / "bundle"))  # whole, old or new
        assert read_manifest(top / "bundle").checkpoint_sha256 == old_sha
        assert [p.name for p in top.iterdir()] == ["bundle"], sorted(p.name for p in top.iterdir())
    assert kills >= (4 if no_exchange else 2)  # exchange + removals; or rename, rename, removals
    assert read_manifest(top / "bundle").extra.get("generation") == "new"


@pytest.mark.slow
def test_a_kill_at_every_rename_and_unlink_of_export_force_leaves_a_whole_bundle(ws: Path, tmp_path) -> None:
    """The real `bigmodel export --force`, killed at each rename/unlink/rmdir it makes in the run folder."""
    run = ws / RUN
    code = "from bigmodel.cli import main; sys.argv = ['bigmodel', 'export', sys.argv[-1], '--force']; main()"
    n = 0
    while True:
        n += 1
        env_code = code.replace("sys.argv[-1]", repr(str(run)))
        rc = _kill_run(env_code, n, run, tmp_path / f"log{n}", no_exchange=n % 2 == 0)
        remove_stale_temps(run)
        verify_files(run / "bundle", read_manifest(run / "bundle"))
        if rc == 0:
            break
        assert rc == -signal.SIGKILL, rc
    assert n > 3


# --------------------------------------------------------------------------------- one writer per folder
HOLDER = "import sys, time; from bigmodel.fileio import folder_lock\nwith folder_lock(sys.argv[1]):\n" \
         "    print('held', flush=True); time.sleep(float(sys.argv[2]))\n"


@contextlib.contextmanager
def holder(folder: Path, seconds: float = 120.0):
    """Another process holding `folder`'s lock (the same fileio.folder_lock every writer takes)."""
    p = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder), str(seconds)], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "held"
        yield p
    finally:
        p.kill()
        p.wait()


@pytest.mark.parametrize("argv,folder", [
    (("train", "vae", "--out", NEW, *TRAIN), NEW),
    (("train", "vae", "--out", RUN, "--resume", "--epochs", "2", "--device", "cpu"), RUN),
    (("quickstart", "--out", NEW, "--epochs", "1", "--max-train", "64"), NEW),
    (("export", RUN, "--out", NEW), NEW),
    (("export", RUN, "--force"), BUNDLE),
    (("export", RUN, "--out", NEW, "--triton", "T"), "T"),
    (("tune", BUNDLE, "--force", "--seconds", "0.01"), BUNDLE),
])
def test_a_second_writer_is_refused_naming_the_holders_pid(ws: Path, argv, folder) -> None:
    with holder(ws / folder) as p:
        refused(argv, ws, f"PID {p.pid}")


def test_two_trainings_into_one_new_out_one_runs_the_other_is_refused(ws: Path) -> None:
    first = subprocess.Popen([sys.executable, "-m", "bigmodel", "train", "vae", "--out", NEW, "--device", "cpu",
                              "--epochs", "2", "--max-train", "256", "--dataset", "digits"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lock = lock_path(ws / NEW)
    end = time.monotonic() + 600
    while first.poll() is None and time.monotonic() < end:  # until the first holds the lock (its PID written)
        with contextlib.suppress(OSError):
            if lock.read_text().strip() == str(first.pid):
                break
        time.sleep(0.01)
    assert first.poll() is None, "the first training ended before it was seen holding its lock"
    code, out = run_cli("train", "vae", "--out", NEW, *TRAIN, "--seed", "9")
    assert first.wait() == 0, first.stderr.read()
    assert code == 2 and f"PID {first.pid}" in out, out
    assert json.loads((ws / NEW / "config.json").read_text())["settings"]["seed"] == 0  # all of the first run's
    assert torch.load(ws / NEW / "checkpoint.pt", weights_only=True)["settings"]["seed"] == 0
    assert not lock.exists()


def test_a_dead_writers_lock_is_taken_over(ws: Path) -> None:
    p = subprocess.Popen([sys.executable, "-c", HOLDER, str(ws / BUNDLE), "120"], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "held"
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert lock_path(ws / BUNDLE).exists()  # left behind by the kill
    code, out = run_cli("export", RUN, "--force")
    assert code == 0, out
    assert not lock_path(ws / BUNDLE).exists()
    code, out = run_cli("train", "vae", "--out", "runs", *TRAIN)  # a leftover lock is bigmodel's, not the user's
    assert code == 2 and "(notes.txt, vae)" in out, out


def test_the_lock_is_shared_within_one_process_and_released(tmp_path) -> None:
    folder = tmp_path / "a" / "b" / "run"
    with folder_lock(folder), folder_lock(folder):
        assert lock_path(folder).read_text().strip() == str(os.getpid())
    assert not lock_path(folder).exists() and not (tmp_path / "a").exists()  # parents it made: removed

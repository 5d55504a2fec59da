"""Limits that protect the machine, and one line instead of a traceback: every case of issue 24's
"Tracebacks and wrong exit codes" list, through the real entry point (exit code, one `error:` line,
the workspace byte-identical afterwards) or the runtime API (a BigmodelError kind, one line).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import test_safety
from test_ownership import refused
from test_safety import BUNDLE, LATENT, NEW, RUN, load_bundle

from bigmodel.errors import BundleError, InputError
from bigmodel.runtime import load

template, ws = test_safety.template, test_safety.ws  # the same workspace fixtures: a real run, bundle, user files


def npy_header_only(path: Path, shape: tuple[int, ...], descr: str = "<f4") -> None:
    """A .npy file whose header declares `shape` but that holds 64 bytes of data."""
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": descr, "fortran_order": False, "shape": shape})
        f.write(b"\0" * 64)


def png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG whose header declares width x height (a decompression bomb's first bytes), without the pixels."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))


def setup_files(ws: Path) -> None:
    npy_header_only(ws / "trillion.npy", (10**12, LATENT))
    npy_header_only(ws / "short.npy", (1000, LATENT))  # declares more than it holds
    (ws / "broken.npy").write_bytes(b"\x93NUMPY\x01\x00\x10\x00{'descr': '<f4'  \n")  # TokenError in numpy
    (ws / "pics").mkdir()
    png_header_only(ws / "pics" / "bomb.png", 20000, 20000)
    (ws / "pics2").mkdir()
    png_header_only(ws / "pics2" / "big.png", 9000, 9000)  # past bigmodel's bound, under Pillow's error


T = ("--device", "cpu", "--dataset", "digits")
B = BUNDLE
CLI = [
    # sizes, counts, threads, durations: refused before work, naming the bound
    (("train", "vae", "--out", NEW, "--latent-dim", "1000000000", *T), "--latent-dim must be an integer from 1 to"),
    (("train", "vae", "--out", NEW, "--batch-size", "1000000000", *T), "--batch-size must be an integer from 1 to"),
    (("train", "vae", "--out", NEW, "--epochs", "1000000000", *T), "--epochs must be an integer from 1 to 1,000,000"),
    (("sample", B, "--out", "s.png", "--ncol", "1000000000"), "--ncol must be an integer from 1 to 10,000"),
    (("sample", B, "--out", "s.png", "--threads", "1000000"), "--threads must be an integer from 1 to"),
    (("decode", B, "codes.npy", "--out", "x.npy", "--threads", "1000000"), "threads must be an integer from 1 to"),
    (("export", RUN, "--out", NEW, "--precision", "int8", "--calibration", "100000000"),
     "--calibration must be an integer from 1 to"),
    (("export", RUN, "--out", NEW, "--max-batch", "1000000000"), "--max-batch must be an integer from 1 to"),
    (("parity", B, "--samples", "10000001"), "--samples must be an integer from 3 to"),
    (("bench", B, "--batch-sizes", "100000000"), "--batch-sizes must be an integer from 1 to"),
    (("bench", B, "--iters", "1000000000000"), "--iters must be an integer from 1 to"),
    (("bench", B, "--threads", "1000000"), "--threads must be an integer from 1 to"),
    (("tune", B, "--batch-sizes", "100000000"), "--batch-sizes must be an integer from 1 to"),
    (("tune", B, "--threads", "1000000"), "--threads must be an integer from 1 to"),
    (("eval", B, "--k", "100000000"), "--k must be an integer from 1 to"),
    (("eval", B, "--samples", "100000000"), "--samples must be an integer from 1 to"),
    (("eval", B, "--threads", "1000000"), "--threads must be an integer from 1 to"),
    # seeds and durations
    (("parity", B, "--seed", "-1"), "--seed must be an integer from 0 to"),
    (("bench", B, "--seed", "-1"), "--seed must be an integer from 0 to"),
    (("eval", B, "--seed", "-1"), "--seed must be an integer from 0 to"),
    (("bench", B, "--duration", "inf"), "--duration must be a number of seconds above 0"),
    (("bench", B, "--duration", "nan"), "--duration must be a number of seconds above 0"),
    (("bench", B, "--duration", "1e9"), "at most 86400"),
    (("tune", B, "--seconds", "nan"), "--seconds must be a number of seconds above 0"),
    (("tune", B, "--seconds", "inf"), "--seconds must be a number of seconds above 0"),
    (("tune", B, "--seconds", "0"), "--seconds must be a number of seconds above 0"),
    (("tune", B, "--seconds", "-1"), "--seconds must be a number of seconds above 0"),
    (("quickstart", "--out", NEW, "--bench-duration", "inf"), "--bench-duration must be a positive"),
    # files: header-declared sizes, broken headers, image pixels
    (("decode", B, "trillion.npy", "--out", "x.npy"), "header declares shape (1000000000000, 4)"),
    (("decode", B, "short.npy", "--out", "x.npy"), "but the file holds 64"),
    (("decode", B, "broken.npy", "--out", "x.npy"), "its header does not parse (TokenError"),
    (("encode", B, "broken.npy", "--out", "c.npy"), "its header does not parse"),
    (("train", "vae", "--out", NEW, "--dataset", "trillion.npy"), "header declares shape (1000000000000, 4)"),
    (("train", "vae", "--out", NEW, "--dataset", "broken.npy"), "its header does not parse"),
    (("train", "vae", "--out", NEW, "--dataset", "pics"), "bomb.png"),
    (("train", "vae", "--out", NEW, "--dataset", "pics2"), "expected at most 67,108,864 pixels"),
]


@pytest.mark.parametrize("argv,fragment", CLI, ids=[" ".join(a) for a, _ in CLI])
def test_a_bound_or_a_bad_file_is_one_line_exit_2_and_nothing_changes(ws: Path, argv, fragment) -> None:
    setup_files(ws)
    refused(argv, ws, fragment)


# ------------------------------------------------------------------------------------------- manifests
def rehash(bundle: Path, role: str) -> str:
    return hashlib.sha256((bundle / f"{role}.onnx").read_bytes()).hexdigest()


def edit(change):
    def setup(ws: Path) -> None:
        path = ws / BUNDLE / "manifest.json"
        m = json.loads(path.read_text())
        text = change(m, ws / BUNDLE)
        path.write_text(text if isinstance(text, str) else json.dumps(m))
    return setup


def _swap(m, bundle: Path) -> None:
    shutil.copy(bundle / "encoder.onnx", bundle / "decoder.onnx")  # a graph swapped, its sha256 updated
    m["roles"]["decoder"]["sha256"] = rehash(bundle, "decoder")


def _data_file_out(m, bundle: Path) -> None:
    m["roles"]["decoder"]["data_files"] = [{"file": "../../../mine/thesis.tex", "sha256": "0" * 64}]


MANIFESTS = [
    ("nested", edit(lambda m, b: "[" * 100000 + "]" * 100000), "RecursionError"),
    ("nul", edit(lambda m, b: m["roles"]["decoder"].update(file="decoder\0.onnx")), "without NUL"),
    ("roles-string", edit(lambda m, b: m.update(roles="decoder")), "manifest is malformed"),
    ("dtype", edit(lambda m, b: m["roles"]["decoder"]["inputs"][0].update(dtype="float16")),
     "does not describe its graph"),
    ("latent-size", edit(lambda m, b: (m["latent"].update(dim=7),
                                       m["roles"]["decoder"]["inputs"][0].update(shape=["batch", 7]))),
     "does not describe its graph"),
    ("swapped-graph", edit(_swap), "does not describe its graph"),
    ("data-file-out", edit(_data_file_out), "inside the bundle folder"),
]


@pytest.mark.parametrize("name,setup,fragment", MANIFESTS, ids=[m[0] for m in MANIFESTS])
def test_a_manifest_that_lies_is_a_bundle_error_before_any_session_runs(ws: Path, name, setup, fragment) -> None:
    setup(ws)
    with pytest.raises(BundleError) as info:
        load_bundle(ws).sample(2, seed=0)
    assert fragment in str(info.value) and "\n" not in str(info.value)
    if name in ("nul", "data-file-out"):  # info: the table, then exit 1 on a file check
        refused(("info", BUNDLE), ws, "outside the bundle", code=1)
    elif name in ("nested", "roles-string"):  # (info reads files, it opens no session: graph lies show at load)
        refused(("info", BUNDLE), ws, fragment)
    refused(("sample", BUNDLE, "--out", "s.png"), ws, fragment)


@pytest.mark.parametrize("path", [123, None, b"runs/vae/bundle", 1.5, ["runs/vae/bundle"]])
def test_load_of_something_that_is_not_a_path_is_an_input_error(ws: Path, path) -> None:
    with pytest.raises(InputError, match="expects a bundle folder as a str or os.PathLike"):
        load(path)


def test_interpolate_steps_are_bounded(ws: Path) -> None:
    with pytest.raises(InputError, match="steps must be an integer from 2 to"):
        load_bundle(ws).interpolate(np.zeros(LATENT), np.ones(LATENT), steps=10**12)


def test_load_threads_are_bounded(ws: Path) -> None:
    with pytest.raises(InputError, match="threads must be an integer from 1 to"):
        load(ws / BUNDLE, threads=10**6)


# ------------------------------------------------------------------------------ ASCII-only terminals
@pytest.mark.parametrize("argv", [("export", RUN, "--out", NEW), ("info", BUNDLE), ("export", "--help")])
def test_an_ascii_terminal_gets_ascii_never_a_crash_after_the_work(ws: Path, argv) -> None:
    env = {**os.environ, "PYTHONIOENCODING": "ascii", "COLUMNS": "100"}
    r = subprocess.run([sys.executable, "-m", "bigmodel", *argv], env=env, capture_output=True)
    out = (r.stdout + r.stderr).decode("ascii")  # every byte ASCII
    assert r.returncode == 0, out
    assert "Traceback" not in out and "UnicodeEncodeError" not in out
    if argv[0] == "export" and argv[1] != "--help":
        assert "+/-4sigma" in out and (ws / NEW / "manifest.json").is_file()


def test_a_full_disk_under_a_large_npy_is_exit_3_naming_the_path(ws: Path) -> None:
    np.save(ws / "many.npy", np.zeros((20000, LATENT), np.float32))  # 2.5 MB of images out
    with test_safety.tmpfs(ws / "full", "64k") as full:
        before = test_safety.snapshot(full)
        refused(("decode", BUNDLE, "many.npy", "--out", "full/x.npy"), ws / "full", "cannot write full/x.npy: No "
                "space left on device", code=3)
        assert test_safety.snapshot(full) == before

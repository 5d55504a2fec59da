"""Fuzzing the command line and `load()` with generated bad inputs: option values, .npy files, manifests
and load() arguments, each family drawn from a seeded generator (BIGMODEL_FUZZ_SEED, default 24;
BIGMODEL_FUZZ_SCALE multiplies the counts, default 1: a few seconds).

Every case asserts: a documented exit code (or a BigmodelError kind from the API), no traceback, at most
one `error:` line (Click's own usage errors aside), and the workspace byte-identical afterwards.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import pytest
import test_safety
from conftest import run_cli
from test_safety import BUNDLE, LATENT, NEW, RUN, snapshot

from bigmodel.errors import BigmodelError
from bigmodel.runtime import load

template, ws = test_safety.template, test_safety.ws  # the same workspace fixtures: a real run, bundle, user files
SEED = int(os.environ.get("BIGMODEL_FUZZ_SEED", "24"))
SCALE = int(os.environ.get("BIGMODEL_FUZZ_SCALE", "1"))
EXIT_CODES = {0, 1, 2, 3, 130}  # README's table


def check_cli(argv: tuple[str, ...], ws: Path, codes: set[int] = frozenset({2})) -> tuple[int, str]:
    """Run one generated call: an expected code, no traceback, one error line, nothing changed if refused."""
    before = snapshot(ws)
    code, out = run_cli(*argv)
    assert code in codes and code in EXIT_CODES, (argv, code, out[-2000:])
    assert "Traceback" not in out, (argv, out[-2000:])
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    usage = "Usage:" in out or "Invalid value" in out or "No such option" in out  # Click's own parsing errors
    if code:
        assert len(errors) == 1 or (not errors and usage), (argv, out[-2000:])
        assert snapshot(ws) == before, argv
    return code, out


# ------------------------------------------------------------------------------------------ option values
def bad_values(rng: random.Random, kind: str) -> str:
    """A value an option of `kind` must refuse."""
    junk = ["abc", "", "0x1f", "1.5", "2**63", "-0.5", "1e9", "１２", "-", "--", "NaN"]
    if kind == "count":  # a positive integer with a bound
        pool = [str(-rng.randint(0, 10**6)), str(10 ** rng.randint(12, 40)), "9" * 40, *junk]
    elif kind == "low":  # a positive integer whose large values are valid (only small and junk refused)
        pool = [str(-rng.randint(0, 10**6)), *junk]
    elif kind == "seed":
        pool = [str(-rng.randint(1, 10**9)), str(2**63 + rng.randint(0, 10**9)), str(10 ** rng.randint(20, 40)), *junk]
    elif kind == "threads":
        pool = [str(-rng.randint(0, 100)), str(rng.randint(10**4, 10**9)), *junk]
    elif kind == "seconds":
        pool = ["0", "-0", str(-rng.random() * 100), "nan", "inf", "-inf", "1e300", str(rng.randint(10**5, 10**9)),
                "abc", ""]
    elif kind == "float+":  # a positive number (learning rate)
        pool = ["0", "-1", "nan", "inf", "-inf", "abc", ""]
    elif kind == "list":  # comma-separated batch sizes
        pool = ["0", "-1", "1,0", "1,-4", "1,abc", str(10 ** rng.randint(9, 30)), f"1,{10 ** rng.randint(9, 30)}",
                "1.5", "nan", ",", "x"]
    else:
        raise ValueError(kind)
    return rng.choice(pool)


T = ("--device", "cpu", "--dataset", "digits")
OPTIONS = [  # (argv before the option, option, kind)
    (("train", "vae", "--out", NEW, *T), "--epochs", "count"),
    (("train", "vae", "--out", NEW, *T), "--batch-size", "count"),
    (("train", "vae", "--out", NEW, *T), "--latent-dim", "count"),
    (("train", "vae", "--out", NEW, *T), "--seed", "seed"),
    (("train", "vae", "--out", NEW, *T), "--max-train", "low"),
    (("train", "vae", "--out", NEW, *T), "--lr", "float+"),
    (("quickstart", "--out", NEW), "--epochs", "count"),
    (("quickstart", "--out", NEW), "--max-train", "low"),
    (("quickstart", "--out", NEW), "--bench-duration", "seconds"),
    (("quickstart", "--out", NEW), "--threads", "threads"),
    (("sample", BUNDLE, "--out", "s.png"), "-n", "count"),
    (("sample", BUNDLE, "--out", "s.png"), "--ncol", "count"),
    (("sample", BUNDLE, "--out", "s.png"), "--seed", "seed"),
    (("sample", BUNDLE, "--out", "s.png"), "--threads", "threads"),
    (("decode", BUNDLE, "codes.npy", "--out", "x.npy"), "--threads", "threads"),
    (("encode", BUNDLE, "images.npy", "--out", "c.npy"), "--threads", "threads"),
    (("export", RUN, "--out", NEW), "--opset", "count"),
    (("export", RUN, "--out", NEW, "--precision", "int8"), "--calibration", "count"),
    (("export", RUN, "--out", NEW), "--max-batch", "count"),
    (("export", RUN, "--out", NEW), "--opt-batch", "count"),
    (("parity", BUNDLE), "--samples", "count"),
    (("parity", BUNDLE), "--seed", "seed"),
    (("parity", BUNDLE), "--threads", "threads"),
    (("bench", BUNDLE), "--batch-sizes", "list"),
    (("bench", BUNDLE), "--iters", "count"),
    (("bench", BUNDLE), "--duration", "seconds"),
    (("bench", BUNDLE), "--rounds", "count"),
    (("bench", BUNDLE), "--threads", "threads"),
    (("bench", BUNDLE), "--seed", "seed"),
    (("tune", BUNDLE), "--batch-sizes", "list"),
    (("tune", BUNDLE), "--seconds", "seconds"),
    (("tune", BUNDLE), "--threads", "threads"),
    (("eval", BUNDLE), "--k", "count"),
    (("eval", BUNDLE), "--samples", "count"),
    (("eval", BUNDLE), "--nll-images", "count"),
    (("eval", BUNDLE), "--seed", "seed"),
    (("eval", BUNDLE), "--threads", "threads"),
]


def test_fuzzed_option_values_are_refused_in_one_line(ws: Path) -> None:
    rng = random.Random(SEED)
    for _ in range(2 * SCALE):
        for prefix, option, kind in OPTIONS:
            value = bad_values(rng, kind)
            given = (f"{option}={value}",) if option.startswith("--") else (option, value)  # (=: "-5" is a value)
            check_cli((*prefix, *given), ws)


# --------------------------------------------------------------------------------------------- .npy files
def bad_npy(rng: random.Random, good: bytes) -> bytes:
    """A damaged or lying .npy file made from a good one."""
    header_end = good.index(b"\n") + 1
    how = rng.choice(["truncate", "flip", "shape", "descr", "magic", "garbage", "empty", "header-only"])
    if how == "truncate":
        return good[: rng.randint(0, len(good) - 1)]
    if how == "flip":
        data = bytearray(good)
        for _ in range(rng.randint(1, 4)):
            data[rng.randint(0, header_end - 1)] = rng.randint(0, 255)
        return bytes(data)
    if how in ("shape", "descr", "header-only"):
        shape = rng.choice([(10**12, LATENT), (-1, LATENT), (2**62, 2**62), (3,) * 40, (3, LATENT + 1), ()])
        descr = rng.choice(["<f4", "|O", "<c16", "V8", "|S3", "<M8[s]", "<f2", "|b1", ">f8"]) if how == "descr" \
            else "<f4"
        if how == "shape":
            descr = "<f4"
        else:
            shape = (3, LATENT) if how == "descr" else shape
        text = repr({"descr": descr, "fortran_order": rng.random() < 0.3, "shape": shape})
        header = text.encode() + b" " * (64 - (len(text) + 11) % 64) + b"\n"
        body = good[header_end:] if how != "header-only" else b""
        return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + body
    if how == "magic":
        return b"\x93NUMPY" + bytes([rng.randint(0, 255), rng.randint(0, 255)]) + good[8:]
    if how == "garbage":
        return bytes(rng.randint(0, 255) for _ in range(rng.randint(1, 300)))
    return b""


def test_fuzzed_npy_files_are_refused_in_one_line(ws: Path) -> None:
    rng = random.Random(SEED + 1)
    good = (ws / "codes.npy").read_bytes()
    for i in range(30 * SCALE):
        path = ws / f"fuzz{i}.npy"
        path.write_bytes(bad_npy(rng, good))
        command = rng.choice(["decode", "encode"])
        out = f"out{i}.npy"
        code, _ = check_cli((command, BUNDLE, path.name, "--out", out), ws, {0, 2})
        if code == 0:  # a damage that left a valid array of codes (a flipped padding byte): it was decoded
            assert command == "decode" and (ws / out).is_file()
            (ws / out).unlink()


# ---------------------------------------------------------------------------------------------- manifests
def _paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, (*prefix, i))


HOSTILE = [None, -1, 0, 1e308, "x", "", [], {}, True, "decoder\0.onnx", "../../etc/passwd", "/etc/passwd",
           "x" * 10000, [["batch"]], {"file": 3}, -(2**70), "batch", [1, "batch"], "float128"]


def bad_manifest(rng: random.Random, m: dict) -> str:
    """The manifest text with one generated change: a key gone, a value of another type, deep nesting."""
    how = rng.choice(["delete", "replace", "replace", "replace", "nest", "text"])
    if how == "nest":
        depth = rng.choice([100, 5000, 100000])
        return json.dumps(m)[:-1] + ', "extra2": ' + "[" * depth + "]" * depth + "}"
    if how == "text":
        text = json.dumps(m)
        cut = rng.randint(0, len(text) - 1)
        return rng.choice([text[:cut], text[:cut] + "\0" + text[cut:], text.replace('"', "'", 1), "null", "[]"])
    m = json.loads(json.dumps(m))
    path = rng.choice([p for p in _paths(m) if p])
    parent = m
    for key in path[:-1]:
        parent = parent[key]
    if how == "delete":
        del parent[path[-1]]
    else:
        parent[path[-1]] = rng.choice(HOSTILE)
    return json.dumps(m)


def test_fuzzed_manifests_are_bundle_errors_or_load(ws: Path) -> None:
    rng = random.Random(SEED + 2)
    path = ws / BUNDLE / "manifest.json"
    good = json.loads(path.read_text())
    for _ in range(40 * SCALE):
        path.write_text(bad_manifest(rng, good))
        try:
            load(ws / BUNDLE, backend="ort-cpu", threads=1).sample(2, seed=0)
        except BigmodelError as e:
            assert "\n" not in str(e), str(e)
        check_cli(("info", BUNDLE), ws, {0, 1, 2})
        code, _ = check_cli(("sample", BUNDLE, "--out", "fz.png", "-n", "2"), ws, {0, 2})
        if code == 0:
            (ws / "fz.png").unlink()
    path.write_text(json.dumps(good))


def test_the_runtimes_schema_check_agrees_with_jsonschema(ws: Path) -> None:
    """bigmodel.schema (no jsonschema at run time) refuses exactly the manifests jsonschema refuses, and
    read_manifest refuses them before any session runs."""
    jsonschema = pytest.importorskip("jsonschema", reason="jsonschema comes with the test extra")
    from bigmodel.manifest import read_manifest, reader_schema
    from bigmodel.schema import first_error

    validator = jsonschema.Draft202012Validator(reader_schema())
    rng = random.Random(SEED + 4)
    good = json.loads((ws / BUNDLE / "manifest.json").read_text())
    assert first_error(good, reader_schema()) is None
    refused = 0
    for _ in range(300 * SCALE):
        try:
            m = json.loads(bad_manifest(rng, good))
        except (json.JSONDecodeError, RecursionError):
            continue
        error = first_error(m, reader_schema())
        assert (error is None) == validator.is_valid(m), (error, m)
        if error and isinstance(m, dict) and m.get("format_version") == 1:
            refused += 1
            (ws / "m").mkdir(exist_ok=True)
            (ws / "m" / "manifest.json").write_text(json.dumps(m))
            with pytest.raises(BigmodelError, match="not as manifest.schema.json says"):
                read_manifest(ws / "m")
    assert refused > 50
    shutil.rmtree(ws / "m")


# ---------------------------------------------------------------------------------------- load() arguments
def test_fuzzed_load_arguments_are_bigmodel_errors(ws: Path) -> None:
    rng = random.Random(SEED + 3)
    paths = [123, None, b"runs/vae/bundle", 1.5, ["x"], {"a": 1}, "a\0b", "nowhere", "report.json", "runs", "mine",
             Path("runs/vae/checkpoint.pt"), "", object()]
    kwargs = {"backend": [None, 3, "", "x" * 200, "ort-cpu ", "ORT-CPU", "tensorrt"],
              "device": [123, "", "cuda:-1", "cuda:x", "tpu"], "threads": [0, -1, 1.5, 10**9, "2", True],
              "verify": ["yes"]}
    before = snapshot(ws)
    for _ in range(30 * SCALE):
        if rng.random() < 0.5:
            args, kw = (rng.choice(paths),), {}
        else:
            name = rng.choice(sorted(kwargs))
            args, kw = (ws / BUNDLE,), {name: rng.choice(kwargs[name])}
        try:
            load(*args, **kw).close()
        except BigmodelError as e:
            assert "\n" not in str(e), str(e)
        else:
            assert kw == {"verify": "yes"}, (args, kw)  # (a truthy flag) nothing else generated may load
    assert snapshot(ws) == before

"""README's and docs/own-model.md's code blocks, executed as a reader would run them, in order, in a fresh folder.

README: every `bigmodel ...` line of its bash blocks (the install lines aside: CI runs those) and every
Python block, each in a process of its own; docs/own-model.md: its Python blocks in one process, in order.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"^```(\w+)\n(.*?)^```", re.S | re.M)


def blocks(page: Path) -> list[tuple[str, str]]:
    """(language, body) of each fenced block of `page`, in order."""
    return FENCE.findall(page.read_text(encoding="utf-8"))


def commands(body: str) -> list[list[str]]:
    """The `bigmodel ...` lines of a bash block as argv, comments dropped."""
    lines = [line.split("  #")[0].strip() for line in body.splitlines()]
    return [shlex.split(line) for line in lines if line.startswith("bigmodel ")]


def run(argv: list[str], cwd: Path) -> str:
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=600)
    said = f"{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    assert done.returncode == 0, f"{shlex.join(argv)} -> {done.returncode}\n{said}"
    return done.stdout


def test_readme_blocks_run_as_written(tmp_path: Path, mnist5k) -> None:
    folder = tmp_path / "my_images"  # README's `--dataset my_images/`: a few hundred images of one's own
    folder.mkdir()
    for i, x in enumerate(mnist5k.train[:300]):
        Image.fromarray((x[0] * 255).round().astype(np.uint8)).save(folder / f"{i:03d}.png")
    ran = []
    for lang, body in blocks(ROOT / "README.md"):
        if lang == "bash":
            for argv in commands(body):
                out = run([sys.executable, "-m", "bigmodel", *argv[1:]], tmp_path)
                ran.append(argv[1])
                epochs = [line for line in out.splitlines() if line.startswith("epoch ")]
                assert (epochs or argv[1] != "train") and all(line.endswith("img/s)") for line in epochs), out[-2000:]
        elif lang == "python":
            run([sys.executable, "-c", body], tmp_path)
            ran.append("python")
    assert ran.count("python") == 2 and {"train", "export", "parity", "bench", "sample"} <= set(ran), ran
    assert (tmp_path / "samples.png").is_file() and (tmp_path / "my_samples.png").is_file()
    assert (tmp_path / "runs" / "mine" / "checkpoint.pt").is_file()


def test_own_model_page_runs_as_written(tmp_path: Path) -> None:
    python = [body for lang, body in blocks(ROOT / "docs" / "own-model.md") if lang == "python"]
    assert len(python) >= 2
    run([sys.executable, "-c", "\n\n".join(python)], tmp_path)
    for bundle in ("my_vae_bundle", "dcgan_bundle", "decoder_bundle"):
        assert (tmp_path / bundle / "manifest.json").is_file(), bundle
    out = run([sys.executable, "-m", "bigmodel", "parity", "dcgan_bundle"], tmp_path)
    assert "parity passed" in out


COMMANDS = ("train", "export", "parity", "bench", "tune", "eval", "serve", "sample", "encode", "decode", "info",
            "doctor", "quickstart", "models")


def narrow(*argv: str | Path) -> list[str]:
    """`bigmodel ARGV` piped at COLUMNS=80: its lines (stdout and stderr)."""
    env = {**os.environ, "COLUMNS": "80"}
    done = subprocess.run([sys.executable, "-m", "bigmodel", *map(str, argv)], capture_output=True, text=True,
                          env=env, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return (done.stdout + done.stderr).splitlines()


def test_help_fits_80_columns_and_flags_show_no_value(tmp_path: Path) -> None:
    for argv in [("--help",), *[(c, "--help") for c in COMMANDS]]:
        lines = narrow(*argv)
        assert max(map(len, lines)) <= 80, (argv, [line for line in lines if len(line) > 80][:3])
        assert "<bool>" not in "\n".join(lines), argv  # `--force true` is an error: help must not suggest it
    quickstart = " ".join(" ".join(narrow("quickstart", "--help")).split())
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    figure = re.search(r"\((\d+ s) of its own", readme).group(1)
    assert f"about {figure}" in quickstart  # help and README give the same time


def test_info_doctor_parity_bench_fit_80_columns(exported) -> None:
    bundle = exported("vae")
    bench = ("bench", bundle, "--batch-sizes", "1", "--duration", "0.05", "--backends", "torch,ort-cpu",
             "--rounds", "1")
    calls = [("info", bundle), ("doctor",), ("parity", bundle, "--backend", "ort-cpu"), bench]
    outputs = {argv[0]: narrow(*argv) for argv in calls}
    for command, lines in outputs.items():
        assert max(map(len, lines)) <= 80, (command, [line for line in lines if len(line) > 80])
    info = "\n".join(outputs["info"])
    assert "(batch,1,28,28)" in info and "reference: the run's checkpoint.pt" in info  # whole shapes, the reference
    parity, bench = (" ".join(" ".join(outputs[c]).split()) for c in ("parity", "bench"))
    assert "max abs" in parity and "verdict" in parity and "parity passed" in parity
    assert "p50 ms" in bench and "vs torch" in bench and "left out at 80 columns: GB/s (%bw)" in bench


def test_a_run_folder_given_for_a_bundle_names_its_bundle(exported, tmp_path: Path) -> None:
    import shutil

    from bigmodel.errors import BundleError
    from bigmodel.runtime import load

    shutil.copytree(exported("vae"), tmp_path / "run" / "bundle")
    with pytest.raises(BundleError, match="is a run folder; its bundle is") as e:
        load(tmp_path / "run")
    assert str(tmp_path / "run" / "bundle") in str(e.value)
    (tmp_path / "plain").mkdir()
    done = subprocess.run([sys.executable, "-m", "bigmodel", "parity", str(tmp_path / "plain")], capture_output=True,
                          text=True, timeout=120)
    said = " ".join((done.stdout + done.stderr).split())
    assert done.returncode == 2 and "not a bundle" in said and "docs/own-model.md" in said, said

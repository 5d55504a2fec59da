"""quickstart end to end through the real CLI, on a small budget: train, export, parity, bench, samples."""

from __future__ import annotations

import json

import pytest
from conftest import run_cli as cli


def test_quickstart_end_to_end_small(tmp_path):
    out = tmp_path / "qs"
    code, text = cli("quickstart", "--out", str(out), "--epochs", "1", "--max-train", "256",
                     "--bench-duration", "0.05", "--threads", "1")
    assert code == 0, text
    for stage in ("[1/5] train", "[2/5] export", "[3/5] parity", "[4/5] bench", "[5/5] samples"):
        assert stage in text
    assert "epoch 1/1" in text
    assert "quickstart done" in text and "PASS" in text
    assert "onnxruntime over torch eager on decoder" in text and "at batch 1" in text and "at batch 256" in text
    assert "bigmodel bench" in text and "--device cuda" in text and "--engine" in text
    for name in ("checkpoint.pt", "samples.png", "bundle/manifest.json", "bundle/decoder.onnx", "parity.json",
                 "bench.json", "samples_onnx.png"):
        assert (out / name).is_file(), name
    assert (out / "samples_onnx.png").read_bytes()[:4] == b"\x89PNG"
    bench = json.loads((out / "bench.json").read_text())
    assert {(r["backend"], r["batch"]) for r in bench["results"]} == {(b, n) for b in ("torch", "ort-cpu")
                                                                      for n in (1, 256)}
    assert json.loads((out / "parity.json").read_text())["passed"] is True


def test_quickstart_rejects_bad_family_and_epochs(tmp_path):
    from bigmodel.errors import ConfigError
    from bigmodel.quickstart import run_quickstart

    with pytest.raises(ConfigError):
        run_quickstart("nope", out=tmp_path / "a")
    with pytest.raises(ConfigError):
        run_quickstart("vae", out=tmp_path / "b", epochs=0)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()

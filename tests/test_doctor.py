"""doctor: plain data with every item, never crashes on missing packages, always exits 0."""

from __future__ import annotations

import builtins
import json
import sys

from conftest import run_cli as cli

from bigmodel.doctor import gather

PACKAGES = {"python", "numpy", "torch", "onnx", "onnxscript", "onnxslim", "onnxruntime", "tensorrt", "cuda-python",
            "openvino", "nvidia-pytriton"}
BACKENDS = ["torch", "torch-cudagraph", "torch-compile", "torch-compile-max", "aoti",
            "ort-cpu", "ort-cuda", "ort-trt", "tensorrt", "ov-cpu"]




def test_gather_reports_every_package_and_backend():
    report = gather()
    assert {p["name"] for p in report["packages"]} == PACKAGES
    for p in report["packages"]:
        assert set(p) == {"name", "version", "found", "detail"}
    by_name = {p["name"]: p for p in report["packages"]}
    assert by_name["python"]["found"] and by_name["torch"]["found"] and by_name["onnxruntime"]["found"]
    assert "CPUExecutionProvider" in by_name["onnxruntime"]["detail"]
    assert [b["name"] for b in report["backends"]] == BACKENDS
    for b in report["backends"]:
        assert set(b) == {"name", "ok", "why", "extra"}
        assert (b["why"] is None) == b["ok"] and (b["extra"] is None) == b["ok"]
    backends = {b["name"]: b for b in report["backends"]}
    assert backends["torch"]["ok"] and backends["ort-cpu"]["ok"]
    if not report["gpu"]["cuda_available"]:
        assert not backends["torch-cudagraph"]["ok"] and "bigmodel[gpu]" in backends["torch-cudagraph"]["extra"]
    if not by_name["tensorrt"]["found"]:
        assert not backends["tensorrt"]["ok"] and "bigmodel[tensorrt]" in backends["tensorrt"]["extra"]
    json.dumps(report)


def test_gather_survives_missing_torch_and_onnxruntime(monkeypatch):
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name.split(".")[0] in ("torch", "onnxruntime", "onnx", "openvino"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    for mod in [m for m in sys.modules if m.split(".")[0] in ("torch", "onnxruntime", "onnx", "openvino")]:
        monkeypatch.delitem(sys.modules, mod)
    report = gather()
    by_name = {p["name"]: p for p in report["packages"]}
    assert not by_name["torch"]["found"] and not by_name["onnxruntime"]["found"] and not by_name["onnx"]["found"]
    backends = {b["name"]: b for b in report["backends"]}
    assert not backends["torch"]["ok"] and "torch" in backends["torch"]["why"]
    assert not backends["ort-cpu"]["ok"] and "bigmodel[runtime]" in backends["ort-cpu"]["why"]
    assert not backends["ov-cpu"]["ok"] and "bigmodel[openvino]" in backends["ov-cpu"]["why"]
    assert "bigmodel[openvino]" in backends["ov-cpu"]["extra"]


def test_cli_doctor_json_and_table_exit_0():
    code, text = cli("doctor", "--json")
    assert code == 0
    report = json.loads(text)
    assert {"python", "platform", "packages", "gpu", "backends"} <= set(report)
    code, text = cli("doctor")
    assert code == 0
    for word in ("torch", "onnxruntime", "CPUExecutionProvider", "tensorrt", "ort-cpu", "ort-cuda", "bigmodel[gpu]"):
        assert word in text


def test_both_onnxruntime_builds_installed_is_reported_with_the_fix():
    from bigmodel.doctor import ort_clash

    assert ort_clash("1.22.0", None) == "" and ort_clash(None, "1.22.0") == ""
    msg = ort_clash("1.22.0", "1.23.1")
    assert "onnxruntime 1.22.0 and onnxruntime-gpu 1.23.1 are both installed" in msg
    assert "pip uninstall -y onnxruntime onnxruntime-gpu" in msg and "'bigmodel[gpu]'" in msg


def test_doctor_names_the_cpu_features_that_make_int8_and_bf16_pay(tmp_path):
    """The flags come from /proc/cpuinfo: a file with VNNI and AMX, one with none, this machine's own."""
    from bigmodel.doctor import cpu_line, cpu_report

    rich = tmp_path / "rich"
    rich.write_text("model name\t: Test CPU\nflags\t\t: fpu avx512f avx512_vnni avx512_bf16 amx_tile amx_int8\n")
    plain = tmp_path / "plain"
    plain.write_text("flags\t\t: fpu sse2 avx2\n")
    r = cpu_report(str(rich))
    assert r["int8"] == ["avx512_vnni", "amx_int8"] and r["bf16"] == ["avx512_bf16"]
    assert r["amx"] == ["amx_tile", "amx_int8"] and r["model"]
    assert cpu_report(str(plain))["int8"] == [] and "bf16: none" in cpu_line(cpu_report(str(plain)))
    here = cpu_report()
    with open("/proc/cpuinfo", encoding="utf-8") as f:
        has_vnni = "avx512_vnni" in f.read()
    assert ("avx512_vnni" in here["int8"]) == has_vnni

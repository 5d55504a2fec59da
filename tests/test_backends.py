"""The backend registry and the OpenVINO backend (`ov-cpu`).

The registry is the one list load(), doctor, bench and parity read; OpenVINO is checked on real
bundles (parity on every family lives in test_parity's all-backends test) and on hand-made graphs
whose outputs carry several names.
"""

from __future__ import annotations

import importlib

import numpy as np
import pytest

from bigmodel.errors import InputError
from bigmodel.runtime.backends import registry

OV_REASON = "openvino is not installed (pip install 'bigmodel[openvino]')"


def test_every_entry_names_a_module_with_a_probe_and_a_factory():
    assert len(set(registry.NAMES)) == len(registry.REGISTRY)
    for e in registry.REGISTRY:
        assert e.device in ("cpu", "cuda")
        assert f"bigmodel[{e.extra}]" in e.install
        mod = importlib.import_module(e.module)  # importable without its optional package
        assert callable(mod.probe_backend) and callable(mod.create)
        reason = e.probe()
        assert reason is None or (isinstance(reason, str) and reason)


def test_runtime_doctor_bench_and_parity_read_the_registry():
    from bigmodel import doctor
    from bigmodel.bench.adapters import ALL_BACKENDS, DEFAULT_BACKENDS, RUNTIME_BACKENDS
    from bigmodel.parity.run import _backend_names
    from bigmodel.runtime import BACKENDS, GPU_BACKENDS, backend_status

    assert BACKENDS == RUNTIME_BACKENDS == registry.NAMES
    assert set(registry.NAMES) <= set(ALL_BACKENDS)
    assert set(GPU_BACKENDS) == {e.name for e in registry.REGISTRY if e.device == "cuda"}
    assert set(DEFAULT_BACKENDS["cpu"]) == {"torch"} | {e.name for e in registry.REGISTRY if e.device == "cpu"}
    assert _backend_names("all", BACKENDS)[0] == list(registry.NAMES)
    assert set(backend_status()) == set(registry.NAMES)
    report = doctor.backend_report(None, False)
    torch_side = 5  # torch, torch-cudagraph and bench's compiled peers come first
    assert [b["name"] for b in report][torch_side:] == list(registry.NAMES)
    for b in report[torch_side:]:
        assert b["ok"] or b["extra"] == registry.entry(b["name"]).install


def test_auto_order_and_device_rules():
    assert registry.auto_order("cpu", False) == ("ort-cpu",)  # ov-cpu only through a tuning table
    assert registry.auto_order("cuda", True)[0] == "tensorrt"
    assert "tensorrt" not in registry.auto_order("cuda", False)
    with pytest.raises(InputError, match="known: ort-cpu"):
        registry.entry("nope")


@pytest.fixture(scope="module")
def vae_bundle(exported):
    """conftest's shared VAE bundle (only read here)."""
    return exported("vae")


def test_ov_cpu_on_the_cuda_device_is_refused(vae_bundle):
    from bigmodel.runtime import load

    with pytest.raises(InputError, match="runs on the CPU"):
        load(vae_bundle, backend="ov-cpu", device="cuda")


def test_ov_cpu_matches_ort_cpu_and_honours_threads(vae_bundle):
    pytest.importorskip("openvino", reason=OV_REASON)
    from bigmodel.runtime import load

    ov = load(vae_bundle, backend="ov-cpu", threads=1)
    ort = load(vae_bundle, backend="ort-cpu", threads=1)
    assert ov.backend_name == "ov-cpu"
    assert ov.backend.settings["INFERENCE_NUM_THREADS"] == "1"
    compiled = ov.backend._roles["decoder"].compiled
    assert int(compiled.get_property("INFERENCE_NUM_THREADS")) == 1
    assert "float32" in str(compiled.get_property("INFERENCE_PRECISION_HINT")).lower()
    z = np.random.default_rng(0).standard_normal((7, ov.latent_dim), dtype=np.float32)
    np.testing.assert_allclose(ov.decode(z), ort.decode(z), atol=1e-5)
    np.testing.assert_allclose(ov.decode(z, logits=True), ort.decode(z, logits=True), atol=1e-4)
    images = ort.decode(z)
    for a, b in zip(ov.encode(images, full=True), ort.encode(images, full=True), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-4)
    with pytest.raises(InputError, match="expected shape"):  # the Model's checks stand before every backend
        ov.decode(np.zeros((2, 3), np.float32))


def test_ov_throughput_hint_splits_a_batch_across_its_requests(vae_bundle):
    pytest.importorskip("openvino", reason=OV_REASON)
    from bigmodel.manifest import read_manifest
    from bigmodel.runtime import load
    from bigmodel.runtime.backends.openvino import OpenVINOBackend
    from bigmodel.runtime.model import Model

    manifest = read_manifest(vae_bundle)
    ov = Model(vae_bundle, manifest, OpenVINOBackend(vae_bundle, manifest, threads=2, hint="THROUGHPUT"))
    role = ov.backend._roles["decoder"]
    assert role.split == role.compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS") >= 1
    ort = load(vae_bundle, backend="ort-cpu", threads=1)
    for n in (1, 2 * role.split - 1, 2 * role.split + 3, 37):  # below the split, and split into uneven parts
        z = np.random.default_rng(n).standard_normal((n, ov.latent_dim), dtype=np.float32)
        got = ov.run("decoder", {"z": z})
        want = ort.run("decoder", {"z": z})
        for name in want:
            assert got[name].shape == want[name].shape
            np.testing.assert_allclose(got[name], want[name], atol=1e-4)


def _graph_with_renamed_outputs(path):
    """y = Identity(t), t = x @ w; a second output s = Neg(x) listed first: OpenVINO names y's tensor {t, y}."""
    import onnx
    from onnx import TensorProto, helper

    w = np.array([[1.0, -2.0], [3.0, 4.0]], np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["t"]), helper.make_node("Identity", ["t"], ["y"]),
             helper.make_node("Neg", ["x"], ["s"])]
    vi = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", 2]) for n in ("x", "s", "y")]
    graph = helper.make_graph(nodes, "g", [vi[0]], [vi[1], vi[2]],
                              [helper.make_tensor("w", TensorProto.FLOAT, [2, 2], w.ravel())])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return w


def test_ov_outputs_are_found_by_their_onnx_name(tmp_path):
    pytest.importorskip("openvino", reason=OV_REASON)
    from bigmodel.runtime.backends import openvino as ovb

    path = str(tmp_path / "g.onnx")
    w = _graph_with_renamed_outputs(path)
    c = ovb.core()
    compiled = c.compile_model(c.read_model(path), "CPU", ovb.config(1))
    role = ovb._Role(compiled, ["x"], ["y", "s"])  # the manifest's order, not the graph's
    x = np.array([[1.0, 2.0], [-1.0, 0.5]], np.float32)
    y, s = role.runner(["y", "s"])({"x": x})
    np.testing.assert_allclose(y, x @ w, rtol=1e-6)
    np.testing.assert_allclose(s, -x)
    (only_s,) = role.runner(["s"])({"x": x})
    np.testing.assert_allclose(only_s, -x)


def test_missing_openvino_names_its_extra(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name.split(".")[0] == "openvino":
            raise ImportError("No module named 'openvino'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    reason = registry.entry("ov-cpu").probe()
    assert reason is not None and "bigmodel[openvino]" in reason

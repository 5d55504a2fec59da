"""The GPU paths' pure parts, on the CPU: graph forms, device names, CUDA errors, node placement.

Real inputs throughout: graphs written by onnx.helper and quantized by onnxruntime.quantization,
profiles written by onnxruntime itself, and (when cuda-python is installed) the real CUDA runtime
bindings on a machine without a driver.
"""

from __future__ import annotations

import types

import numpy as np
import onnx
import onnx.helper as h
import pytest

from bigmodel.errors import InputError
from bigmodel.runtime.backends import ort as ort_backend
from bigmodel.runtime.backends import parse_device
from bigmodel.runtime.backends import tensorrt as trt_backend
from bigmodel.runtime.backends.graph_form import graph_form


# ------------------------------------------------------------------------------- graph forms
@pytest.fixture(scope="module")
def graphs(tmp_path_factory):
    """A MatMul+Relu graph in fp32 and in each int8 form onnxruntime.quantization writes."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    d = tmp_path_factory.mktemp("forms")
    rng = np.random.default_rng(0)
    x = h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["b", 16])
    y = h.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["b", 8])
    w = h.make_tensor("W", onnx.TensorProto.FLOAT, [16, 8], rng.standard_normal(128).astype(np.float32).tolist())
    g = h.make_graph([h.make_node("MatMul", ["x", "W"], ["t"]), h.make_node("Relu", ["t"], ["y"])], "g", [x], [y], [w])
    model = h.make_model(g, opset_imports=[h.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, d / "fp32.onnx")

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"x": rng.standard_normal((4, 16)).astype(np.float32)} for _ in range(4)])

        def get_next(self):
            return next(self.batches, None)

    quantize_static(d / "fp32.onnx", d / "qdq_sym.onnx", Reader(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, per_channel=True,
                    extra_options={"ActivationSymmetric": True, "WeightSymmetric": True})
    quantize_static(d / "fp32.onnx", d / "qdq_u8.onnx", Reader(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    quantize_dynamic(d / "fp32.onnx", d / "dynamic.onnx", weight_type=QuantType.QInt8)
    q = MatMulNBitsQuantizer(onnx.load(d / "fp32.onnx"), bits=8, block_size=16, is_symmetric=True)
    q.process()
    q.model.save_model_to_file(str(d / "nbits.onnx"))
    return d


@pytest.mark.parametrize("file, form", [("fp32", "float"), ("qdq_sym", "qdq-int8-symmetric"), ("qdq_u8", "qdq-other"),
                                        ("dynamic", "integer-ops"), ("nbits", "matmul-nbits")])
def test_graph_form_read_from_the_protobuf(graphs, file, form):
    assert graph_form(graphs / f"{file}.onnx") == form


def test_one_nonzero_zero_point_makes_a_qdq_graph_asymmetric(graphs, tmp_path):
    """TensorRT takes only symmetric int8 QDQ: a single shifted zero point must change the verdict."""
    model = onnx.load(graphs / "qdq_sym.onnx")
    zps = [i for i in model.graph.initializer if i.data_type == onnx.TensorProto.INT8 and "zero_point" in i.name]
    assert zps
    arr = onnx.numpy_helper.to_array(zps[0]).copy()
    arr.flat[0] = 3
    zps[0].CopyFrom(onnx.numpy_helper.from_array(arr, zps[0].name))
    onnx.save(model, tmp_path / "shifted.onnx")
    assert graph_form(tmp_path / "shifted.onnx") == "qdq-other"


def test_zero_points_held_in_constant_nodes_are_read_too(graphs, tmp_path):
    """Some tools fold initializers into Constant nodes; the zero points are found there as well."""
    model = onnx.load(graphs / "qdq_sym.onnx")
    for init in [i for i in model.graph.initializer if "zero_point" in i.name]:
        model.graph.initializer.remove(init)
        model.graph.node.insert(0, h.make_node("Constant", [], [init.name], value=init))
    onnx.save(model, tmp_path / "constants.onnx")
    assert graph_form(tmp_path / "constants.onnx") == "qdq-int8-symmetric"


# ---------------------------------------------------------------------------------- devices
@pytest.mark.parametrize("device, device_id, want", [
    ("cuda:1", None, ("cuda", 1)), ("cuda", 3, ("cuda", 3)), ("auto", None, ("auto", 0)),
    (" CUDA:0 ", None, ("cuda", 0)), ("cpu", None, ("cpu", 0)), ("auto", 2, ("auto", 2)), ("cuda:2", 2, ("cuda", 2)),
])
def test_parse_device(device, device_id, want):
    assert parse_device(device, device_id) == want


@pytest.mark.parametrize("device, device_id", [("cuda:x", None), ("cpu:1", None), ("gpu", None), ("cuda:1", 2),
                                               ("cpu", 1), ("cuda", -1), ("cuda", True)])
def test_bad_devices_are_input_errors(device, device_id):
    with pytest.raises(InputError):
        parse_device(device, device_id)


# ------------------------------------------------------------------------- CUDA and versions
def test_cuda_versions_pair_with_tensorrts_cuda_major():
    assert trt_backend.tensorrt_cuda_major(["tensorrt", "tensorrt-cu13", "tensorrt_cu13_libs"]) == 13
    assert trt_backend.tensorrt_cuda_major(["tensorrt_cu12_bindings"]) == 12
    assert trt_backend.tensorrt_cuda_major(["tensorrt"]) is None
    assert trt_backend.cuda_python_mismatch(13, "13.4.4") is None
    msg = trt_backend.cuda_python_mismatch(12, "13.0.0")
    assert msg and "CUDA 12" in msg and "cuda-python 13.0.0" in msg and "cuda-python>=12,<13" in msg
    assert trt_backend.cuda_python_mismatch(None, "13.0.0") is None


def _cudart(count_result, driver=12040, runtime=13000):
    def name(err):
        return 0, {35: b"cudaErrorInsufficientDriver", 100: b"cudaErrorNoDevice"}[int(err)]

    def text(err):
        return 0, {35: b"CUDA driver version is insufficient for CUDA runtime version",
                   100: b"no CUDA-capable device is detected"}[int(err)]

    return types.SimpleNamespace(cudaGetDeviceCount=lambda: count_result, cudaGetErrorName=name,
                                 cudaGetErrorString=text, cudaDriverGetVersion=lambda: (0, driver),
                                 cudaRuntimeGetVersion=lambda: (0, runtime))


def test_a_too_old_driver_is_reported_as_such_not_as_no_gpu():
    msg = trt_backend.cuda_device_reason(_cudart((35, None)))
    assert msg == ("CUDA cannot start: cudaErrorInsufficientDriver: CUDA driver version is insufficient for CUDA "
                   "runtime version (the driver supports CUDA 12.4; cuda-python's runtime is CUDA 13.0)")
    assert "no CUDA GPU" not in msg
    assert "cudaErrorNoDevice" in trt_backend.cuda_device_reason(_cudart((100, None)))
    assert "returned 0" in trt_backend.cuda_device_reason(_cudart((0, 0)))
    assert trt_backend.cuda_device_reason(_cudart((0, 2)), device=1) is None
    assert "GPU 2 was asked for" in trt_backend.cuda_device_reason(_cudart((0, 2)), device=2)


def test_real_cuda_python_on_a_machine_without_a_driver():
    """With cuda-python installed, its real error comes through (this machine has no NVIDIA driver)."""
    try:
        cudart = trt_backend.import_cudart()
    except Exception:
        pytest.skip("cuda-python is not installed here")
    err, _count = cudart.cudaGetDeviceCount()
    if int(err) == 0:
        pytest.skip("this machine has a working CUDA driver")
    msg = trt_backend.cuda_device_reason(cudart)
    assert msg.startswith("CUDA cannot start: cudaError") and "driver supports CUDA" in msg


# ------------------------------------------------------------------------- provider placement
def test_placement_counts_nodes_per_provider_from_a_real_profile(graphs):
    import onnxruntime as ort

    opts = ort_backend.session_options(ort, 1)
    chain = [("CPUExecutionProvider", {})]
    events = ort_backend.profile_once(ort, str(graphs / "dynamic.onnx"), opts, chain,
                                      {"x": np.ones((2, 16), np.float32)})
    counts = ort_backend.placement(events)
    assert set(counts) == {"CPUExecutionProvider"} and counts["CPUExecutionProvider"] >= 2
    assert ort_backend.misplaced_nodes(events, ("CPUExecutionProvider",)) == []
    off = ort_backend.misplaced_nodes(events, ("TensorrtExecutionProvider",))  # as a strict ort-trt would judge it
    # onnxruntime fuses DynamicQuantizeLinear + MatMulInteger into its own DynamicQuantizeMatMul
    assert len(off) == counts["CPUExecutionProvider"] and "DynamicQuantizeMatMul on CPUExecutionProvider" in off


def test_strict_ort_cpu_backend_reports_its_placement(exported):
    from bigmodel.runtime import load

    model = load(exported("gan"), backend="ort-cpu", strict=True)
    placed = model.backend.settings["placement"]
    assert set(placed) == {"generator", "discriminator"}
    assert all(set(p) == {"CPUExecutionProvider"} and sum(p.values()) > 0 for p in placed.values())
    assert model.backend.settings["tf32"] is False


# ------------------------------------------------------------------------ BIGMODEL_REQUIRE_GPU
def test_require_gpu_turns_a_skipped_gpu_test_into_a_failure(pytester, monkeypatch):
    from pathlib import Path

    pytester.syspathinsert(Path(__file__).parent)
    pytester.makeconftest("from gpu_policy import pytest_runtest_makereport  # noqa: F401\n")
    pytester.makeini("[pytest]\nmarkers =\n    gpu: needs a GPU\n")
    pytester.makepyfile(
        "import pytest\n"
        "@pytest.mark.gpu\n"
        "def test_needs_gpu():\n    pytest.skip('no CUDA here')\n"
        "def test_plain():\n    pytest.skip('not a GPU test')\n")
    monkeypatch.delenv("BIGMODEL_REQUIRE_GPU", raising=False)
    pytester.runpytest().assert_outcomes(skipped=2)
    monkeypatch.setenv("BIGMODEL_REQUIRE_GPU", "1")
    result = pytester.runpytest()
    result.assert_outcomes(failed=1, skipped=1)
    result.stdout.fnmatch_lines(["*BIGMODEL_REQUIRE_GPU=1 and this GPU test skipped*no CUDA here*"])


def test_has_gpu_needs_a_gpu_reached_not_an_importable_tensorrt():
    from bigmodel.bench.adapters import has_gpu

    nothing = {"torch.cuda": "torch 2.13.0+cpu: no CUDA GPU 0 (torch.cuda.is_available() is False)",
               "onnxruntime providers": "onnxruntime 1.32.0 here has no CUDAExecutionProvider",
               "TensorRT": "CUDA cannot start: cudaErrorInsufficientDriver: CUDA driver version is insufficient"}
    assert not has_gpu(nothing)  # tensorrt imported, cuda-python present, but no driver: no GPU
    assert has_gpu({**nothing, "onnxruntime providers": "available (a CUDAExecutionProvider session ran)"})
    assert has_gpu({**nothing, "torch.cuda": "available (NVIDIA H200)"})


@pytest.mark.parametrize("mode, form, int8_enable", [("static", "qdq-int8-symmetric", True),
                                                     ("dynamic", "integer-ops", False),
                                                     ("weights", "matmul-nbits", False)])
def test_our_own_int8_exports_get_the_ort_trt_flags_their_form_allows(exported, tmp_path, mode, form, int8_enable):
    """bigmodel's int8 modes, as export writes them, read back as the form that decides trt_int8_enable."""
    from bigmodel.export.int8 import to_int8_file
    from bigmodel.manifest import read_manifest

    bundle = exported("gan")  # conftest's shared fp32 bundle: read here, the int8 graph goes to tmp_path
    m = read_manifest(bundle)
    spec = m.roles["generator"]
    calib = np.random.default_rng(0).standard_normal((64, m.latent.dim)).astype(np.float32)
    dst = tmp_path / f"generator.{mode}.onnx"
    to_int8_file(bundle / spec.file, dst, mode, calib if mode == "static" else None)
    assert graph_form(dst) == form
    m.precision = "int8"
    assert ort_backend.trt_provider_options(m, "generator", graph_form(dst))["trt_int8_enable"] is int8_enable

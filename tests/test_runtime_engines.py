"""TensorRT engines without a GPU: the pure functions around the thin TensorRT module, and what the
ort backend asks onnxruntime's TensorRT provider for. (Running engines needs the `gpu` tests.)"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from bigmodel.errors import BundleError
from bigmodel.manifest import BATCH, DataSpec, EngineSpec, LatentSpec, Manifest, RoleSpec, TensorSpec
from bigmodel.runtime.backends import ort as ort_backend
from bigmodel.runtime.backends import tensorrt as trt_backend
from bigmodel.runtime.engines import (
    buffer_bytes,
    check_engine_compat,
    check_profile,
    engine_dtype,
    normalize_cc,
    parse_version,
    select_engines,
    split_batches,
    tensorrt_version_fits,
)


def engine(role="decoder", trt="10.13.0.35", cc="9.0", precision="fp32", profile=None, file=None) -> EngineSpec:
    return EngineSpec(role=role, file=file or f"engines/{role}.{precision}.sm{cc.replace('.', '')}.plan",
                      sha256="0" * 64, tensorrt_version=trt, compute_capability=cc, precision=precision,
                      profile=profile or {"min": 1, "opt": 64, "max": 1024}, device_name="NVIDIA H200")


def manifest(engines=(), precision="fp32") -> Manifest:
    def role(inp, out, shape_in, shape_out):
        return RoleSpec(file=f"{inp}.onnx", sha256="0" * 64, inputs=[TensorSpec(inp, "float32", shape_in, "latent")],
                        outputs=[TensorSpec(out, "float32", shape_out, "image")])

    return Manifest(family="vae", arch="mlp", data=DataSpec(source="mnist-5k", shape=(1, 28, 28)),
                    latent=LatentSpec(dim=20), precision=precision, engines=list(engines),
                    roles={"encoder": RoleSpec(file="encoder.onnx", sha256="0" * 64,
                                               inputs=[TensorSpec("x", "float32", [BATCH, 1, 28, 28], "image")],
                                               outputs=[TensorSpec("mu", "float32", [BATCH, 20], "latent"),
                                                        TensorSpec("logvar", "float32", [BATCH, 20], "stat")]),
                           "decoder": role("z", "x", [BATCH, 20], [BATCH, 1, 28, 28])})


# ---------------------------------------------------------------------------------------- preflight
@pytest.mark.parametrize("text,expected", [("10.13.0.35", (10, 13, 0, 35)), ("10.3", (10, 3)), ("v11.0.1", (11, 0, 1))])
def test_parse_version(text, expected):
    assert parse_version(text) == expected


@pytest.mark.parametrize("cc", ["9.0", "90", "sm_90", "sm90", (9, 0), [9, 0], 9.0, " 9.0 "])
def test_compute_capability_spellings(cc):
    assert normalize_cc(cc) == "9.0"


def test_compute_capability_two_digit_majors_and_bad_values():
    assert normalize_cc("100") == "10.0" and normalize_cc("sm_120") == "12.0" and normalize_cc("8.6") == "8.6"
    for bad in ("", "nine", "9", "sm_"):
        with pytest.raises(BundleError, match="cannot read a compute capability"):
            normalize_cc(bad)
    with pytest.raises(BundleError, match="cannot read a TensorRT version"):
        parse_version("unknown")


def test_engine_runs_only_on_the_exact_tensorrt_version_that_built_it():
    check_engine_compat(engine(), "10.13.0.35", "9.0")
    check_engine_compat(engine(), "10.13.0.35", "sm_90")
    for other in ("10.13.3.9", "10.13.0.36", "10.13"):  # a patch or build apart is another TensorRT
        with pytest.raises(BundleError, match="exact TensorRT version that built it"):
            check_engine_compat(engine(), other, "9.0")


@pytest.mark.parametrize("built,here,compatible,fits", [
    ("10.13.0.35", "10.13.0.35", False, True),
    ("10.13.0.35", "10.13.0.36", False, False),
    ("10.13.0.35", "10.14.1.48", False, False),
    ("10.13.0.35", "10.14.1.48", True, True),  # version-compatible: later releases of the same major
    ("10.13.0.35", "10.13.0.35", True, True),
    ("10.13.0.35", "10.12.0.36", True, False),  # never an older TensorRT
    ("10.13.0.35", "11.0.0.114", True, False),  # nor another major
    ("10.13", "10.13.0.0", False, True),
])
def test_tensorrt_version_rule(built, here, compatible, fits):
    assert tensorrt_version_fits(built, here, compatible) is fits
    spec = dataclasses.replace(engine(trt=built), version_compatible=compatible)
    if fits:
        check_engine_compat(spec, here, "9.0")
    else:
        with pytest.raises(BundleError, match=f"TensorRT {built} \\(here: {here}; "):
            check_engine_compat(spec, here, "9.0")


@pytest.mark.parametrize("local_trt,local_cc,parts", [
    ("10.14.0", "9.0", ["TensorRT 10.13.0.35 (here: 10.14.0; an engine runs only on the exact"]),
    ("11.0.0", "9.0", ["TensorRT 10.13.0.35 (here: 11.0.0;"]),
    ("10.13.0.35", "8.6", ["compute capability 9.0 (NVIDIA H200) (here: 8.6)"]),
    ("10.9.0", "12.0", ["TensorRT 10.13.0.35 (here: 10.9.0;", "compute capability 9.0 (NVIDIA H200) (here: 12.0)"]),
])
def test_engine_for_another_gpu_or_tensorrt_is_a_bundle_error_naming_both(local_trt, local_cc, parts):
    with pytest.raises(BundleError) as e:
        check_engine_compat(engine(), local_trt, local_cc)
    msg = str(e.value)
    assert "engines/decoder.fp32.sm90.plan for role decoder was built for" in msg
    assert "--engine" in msg and "backend='ort'" in msg
    for part in parts:
        assert part in msg


def test_select_engines_one_per_role_preferring_the_bundle_precision_and_this_gpu():
    a100 = [engine("encoder", cc="8.0"), engine("decoder", cc="8.0")]
    h200 = [engine("encoder"), engine("decoder")]
    h200_fp16 = [engine("encoder", precision="fp16"), engine("decoder", precision="fp16")]
    m = manifest(a100 + h200_fp16 + h200)
    chosen = select_engines(m, "10.13.0.35", "9.0")
    assert chosen == {"encoder": h200[0], "decoder": h200[1]}
    assert select_engines(m, "10.13.0.35", "8.0") == {"encoder": a100[0], "decoder": a100[1]}
    assert select_engines(m, "10.13.0.35", "9.0", precision="fp16") == {"encoder": h200_fp16[0],
                                                                     "decoder": h200_fp16[1]}
    with pytest.raises(BundleError, match="role encoder has no int8 engine; it has fp16, fp32"):
        select_engines(m, "10.13.0.35", "9.0", precision="int8")
    only_fp16 = manifest(h200_fp16)  # an fp32 bundle whose only engines are fp16: take them
    assert select_engines(only_fp16, "10.13.0.35", "9.0")["decoder"].precision == "fp16"


def test_select_engines_errors():
    with pytest.raises(BundleError, match="has no TensorRT engines.*--engine"):
        select_engines(manifest(), "10.13.0.35", "9.0")
    with pytest.raises(BundleError, match="engines for decoder but none for role encoder"):
        select_engines(manifest([engine("decoder")]), "10.13.0.35", "9.0")
    two = manifest([engine("encoder", cc="8.0"), engine("encoder", cc="8.6"), engine("decoder")])
    with pytest.raises(BundleError) as e:
        select_engines(two, "10.13.0.35", "9.0")
    assert "no engine for role encoder fits this machine" in str(e.value)
    assert "(here: 9.0)" in str(e.value) and "compute capability 8.0" in str(e.value) and "8.6" in str(e.value)
    with pytest.raises(BundleError, match=r"built for TensorRT 10.13.0.35 \(here: 10.12"):
        select_engines(manifest([engine("encoder"), engine("decoder")]), "10.12.0", "9.0")


@pytest.mark.parametrize("profile", [{"min": 1, "opt": 64}, {"min": 0, "opt": 1, "max": 8},
                                     {"min": 8, "opt": 4, "max": 16}, {"min": "a", "opt": 1, "max": 2}, None])
def test_malformed_profiles_are_bundle_errors(profile):
    spec = dataclasses.replace(engine(), profile=profile)
    with pytest.raises(BundleError, match="profile"):
        check_profile(spec)
    if isinstance(profile, dict):
        with pytest.raises(BundleError, match="profile"):
            select_engines(manifest([dataclasses.replace(engine("encoder"), profile=profile), engine()]),
                           "10.13.0.35", "9.0")


def test_profile_and_buffer_sizes():
    assert check_profile(engine(profile={"min": 1, "opt": 8, "max": 32})) == (1, 8, 32)
    assert buffer_bytes((-1, 1, 28, 28), np.float32, 32) == 32 * 784 * 4
    assert buffer_bytes((-1, 20), np.float16, 1024) == 1024 * 20 * 2
    assert buffer_bytes((4, 20), np.float32, 1024) == 4 * 20 * 4


def test_tensorrt_dtypes_to_numpy():
    assert engine_dtype("FLOAT") == np.float32 and engine_dtype("DataType.HALF") == np.float16
    assert engine_dtype("half") == np.float16 and engine_dtype("INT8") == np.int8
    assert engine_dtype("INT64") == np.int64 and engine_dtype("BOOL") == np.bool_
    with pytest.raises(BundleError, match="tensor 'x' has TensorRT type BF16"):
        engine_dtype("BF16", "x")


@pytest.mark.parametrize("n,lo,hi,chunks", [
    (10, 1, 3, [(0, 3, 0), (3, 6, 0), (6, 9, 0), (9, 10, 0)]),
    (10, 1, None, [(0, 10, 0)]),
    (3, 4, 8, [(0, 3, 1)]),
    (10, 4, 8, [(0, 8, 0), (8, 10, 2)]),
    (8, 1, 8, [(0, 8, 0)]),
    (1, 1, 1024, [(0, 1, 0)]),
])
def test_split_batches(n, lo, hi, chunks):
    got = split_batches(n, lo, hi)
    assert got == chunks
    assert sum(stop - start for start, stop, _ in got) == n
    assert all(lo <= stop - start + pad <= (hi or n) for start, stop, pad in got)


# ------------------------------------------------------------------------------- what is missing here
def test_unavailable_reason_names_what_is_missing_without_importing_torch():
    import subprocess
    import sys

    code = ("import sys; from bigmodel.runtime.backends.tensorrt import unavailable_reason; "
            "r = unavailable_reason(); assert 'torch' not in sys.modules; print(r)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == str(trt_backend.unavailable_reason())
    if not trt_backend._find("tensorrt"):
        assert out == "the 'tensorrt' package is not installed; install it with: pip install 'bigmodel[tensorrt]'"


def test_unavailable_reason_checks_cuda_python_and_the_gpu(monkeypatch):
    monkeypatch.setattr(trt_backend, "_find", lambda name: name == "tensorrt")
    assert "'cuda-python' package is not installed" in trt_backend.unavailable_reason()
    assert "bigmodel[tensorrt]" in trt_backend.unavailable_reason()


# ------------------------------------------------------------------- onnxruntime's TensorRT provider
def test_ort_trt_provider_options_profile_precision_and_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("BIGMODEL_CACHE", str(tmp_path))
    m = manifest([engine("decoder", profile={"min": 2, "opt": 16, "max": 128})], precision="fp16")
    dec = ort_backend.trt_provider_options(m, "decoder", device_id=1)
    assert dec["trt_profile_min_shapes"] == "z:2x20"
    assert dec["trt_profile_opt_shapes"] == "z:16x20"
    assert dec["trt_profile_max_shapes"] == "z:128x20"
    # fp16 precision is the graph's own: trt_fp16_enable would let TensorRT lower the kept fp32 islands
    assert dec["trt_fp16_enable"] is False and dec["trt_int8_enable"] is False and dec["device_id"] == 1
    assert dec["trt_engine_cache_enable"] is True
    assert dec["trt_engine_cache_path"].startswith(str(tmp_path / "ort-trt"))
    assert dec["trt_engine_cache_path"].endswith("no-tf32")  # an engine built with TF32 is never reused without
    assert ort_backend.trt_provider_options(m, "decoder", tf32=True)["trt_engine_cache_path"].endswith("/tf32")
    enc = ort_backend.trt_provider_options(m, "encoder")  # no engine for it: the export defaults
    assert enc["trt_profile_max_shapes"] == "x:1024x1x28x28" and enc["trt_profile_min_shapes"] == "x:1x1x28x28"


@pytest.mark.parametrize("form, int8", [("qdq-int8-symmetric", True), ("qdq-other", False), ("integer-ops", False),
                                        ("matmul-nbits", False), ("float", False), (None, False)])
def test_ort_trt_int8_only_for_signed_symmetric_qdq_graphs(form, int8):
    assert ort_backend.trt_provider_options(manifest(precision="int8"), "decoder", form)["trt_int8_enable"] is int8
    assert ort_backend.trt_provider_options(manifest(precision="fp32"), "decoder", form)["trt_int8_enable"] is False


CPU_EP = ("CPUExecutionProvider", {})


@pytest.mark.parametrize("name, tf32, strict, expect", [
    ("ort-cpu", False, True, [CPU_EP]),
    ("ort-cuda", False, False, [("CUDAExecutionProvider", {"device_id": 2, "use_tf32": 0}), CPU_EP]),
    ("ort-cuda", True, False, [("CUDAExecutionProvider", {"device_id": 2, "use_tf32": 1}), CPU_EP]),
    ("ort-cuda", False, True, [("CUDAExecutionProvider", {"device_id": 2, "use_tf32": 0})]),
])
def test_provider_chain_per_tf32_choice_device_and_strictness(name, tf32, strict, expect):
    assert ort_backend.providers_for(name, manifest(), "decoder", tf32=tf32, device_id=2, strict=strict) == expect


def test_ort_trt_chain_and_tf32_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("BIGMODEL_CACHE", str(tmp_path))
    chain = ort_backend.providers_for("ort-trt", manifest(), "decoder", device_id=1, strict=True)
    assert [p for p, _ in chain] == ["TensorrtExecutionProvider", "CUDAExecutionProvider"]  # strict: no CPU
    assert chain[0][1]["device_id"] == 1 and chain[1][1] == {"device_id": 1, "use_tf32": 0}
    env: dict[str, str] = {}
    assert ort_backend.tf32_environment("ort-trt", False, env) is False and env == {"NVIDIA_TF32_OVERRIDE": "0"}
    assert ort_backend.tf32_environment("ort-trt", True, env) is False  # process-wide: once off, off
    assert ort_backend.tf32_environment("ort-cuda", True, {}) is True and ort_backend.tf32_environment("ort-cuda",
                                                                                                   False, {}) is False
    assert ort_backend.tf32_environment("ort-cpu", True, {}) is False


def test_probe_graph_is_the_tiny_graph_it_claims_and_runs_on_the_cpu():
    """The embedded probe bytes are the model onnx.helper writes, and onnxruntime computes relu(x @ w) with it."""
    import onnx
    import onnx.helper as h
    import onnxruntime as ort

    x = h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 2])
    y = h.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 2])
    w = h.make_tensor("w", onnx.TensorProto.FLOAT, [2, 2], [1, -2, 3, 4])
    g = h.make_graph([h.make_node("MatMul", ["x", "w"], ["t"]), h.make_node("Relu", ["t"], ["y"])], "probe", [x], [y],
                     [w])
    model = h.make_model(g, opset_imports=[h.make_opsetid("", 17)], producer_name="bigmodel")
    model.ir_version = 8
    assert model.SerializeToString() == ort_backend.PROBE_GRAPH
    got = ort.InferenceSession(ort_backend.PROBE_GRAPH, providers=["CPUExecutionProvider"]).run(
        None, {"x": ort_backend.PROBE_INPUT})[0]
    want = np.maximum(ort_backend.PROBE_INPUT @ np.array([[1, -2], [3, 4]], np.float32), 0)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(ort_backend.PROBE_OUTPUT, want)


def test_gpu_providers_listed_but_not_loadable_are_unavailable(monkeypatch):
    """get_available_providers() lists what the wheel was built with; the probe session decides."""
    import onnxruntime as ort

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    ort_backend.probe.cache_clear()
    try:
        reason = ort_backend.unavailable_reason("ort-cuda", 0)
    finally:
        ort_backend.probe.cache_clear()
    # this CPU wheel cannot make a CUDA session: the probe says so instead of calling ort-cuda available
    assert reason is not None and "cannot create a session" in reason or "put the probe session on" in reason

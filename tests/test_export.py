"""`bigmodel export` and `bigmodel.export`: real exports of conftest's tiny trained runs, checked in onnxruntime.

One fp32 bundle per (family, arch) is exported once per session and shared; fp16/int8 conversions
run on copies of those graphs; the CLI is driven in-process through its real entry point.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import cli

import bigmodel
from bigmodel.errors import BundleError, ExportError
from bigmodel.export import ExportOptions, export_bundle
from bigmodel.export.graph import RANDOM_OPS, check_graph
from bigmodel.export.int8 import to_int8_file
from bigmodel.export.precision import to_fp16, to_fp16_file
from bigmodel.export.verify import Verifier, with_files
from bigmodel.manifest import BATCH, read_manifest
from bigmodel.models.probes import EXTREME_SIGMA, role_probes
from bigmodel.models.registry import family_class, list_models
from bigmodel.parity.check import error_summary, failure_lines
from bigmodel.progress import Progress
from bigmodel.runtime import load

MODELS = [(m.family, m.arch) for m in list_models()]
HAVE_TRT = importlib.util.find_spec("tensorrt") is not None
IDS = [f"{f}-{a}" for f, a in MODELS]


@pytest.fixture(scope="session")
def fp32_bundle(exported):
    """Factory: `fp32_bundle(family, arch)` -> (run dir, bundle): conftest's shared fp32 export."""

    def get(family: str, arch: str = "mlp") -> tuple[Path, Path]:
        bundle = exported(family, arch)
        return bundle.parent, bundle

    return get


def session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])



def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --------------------------------------------------------------------------------- every model, fp32
@pytest.mark.parametrize("family, arch", MODELS, ids=IDS)
def test_manifest_describes_every_graph(fp32_bundle, family, arch):
    run, bundle = fp32_bundle(family, arch)
    m = read_manifest(bundle)
    cls = family_class(family)
    assert (m.family, m.arch, m.precision, m.opset) == (family, arch, "fp32", 18)
    assert list(m.roles) == list(cls.roles)
    assert m.checkpoint_sha256 == sha256(run / "checkpoint.pt")
    assert set(m.versions) >= {"bigmodel", "torch", "onnx"} and m.versions["bigmodel"] == bigmodel.__version__
    assert m.versions["onnx"] == onnx.__version__
    assert m.data.source == "mnist-5k" and m.data.shape == (1, 28, 28)
    assert m.latent.dim > 0 and m.latent.prior in ("normal", "mixture")
    for role, spec in m.roles.items():
        graph = bundle / spec.file
        assert spec.file == f"{role}.onnx" and spec.sha256 == sha256(graph)
        sess = session(graph)
        assert [t.name for t in spec.inputs] == [i.name for i in sess.get_inputs()] == [n for n, _ in
                                                                                      cls.roles[role].inputs]
        assert [t.name for t in spec.outputs] == [o.name for o in sess.get_outputs()]
        for t in spec.inputs + spec.outputs:
            assert t.dtype == "float32" and t.shape[0] == BATCH and all(isinstance(d, int) for d in t.shape[1:])
        assert spec.inputs[0].shape[1:] == ([1, 28, 28] if spec.inputs[0].kind == "image" else [m.latent.dim])


@pytest.mark.parametrize("family, arch", MODELS, ids=IDS)
def test_graphs_pass_the_full_checker_and_hold_no_random_operator(fp32_bundle, family, arch):
    _, bundle = fp32_bundle(family, arch)
    for spec in read_manifest(bundle).roles.values():
        path = bundle / spec.file
        onnx.checker.check_model(str(path), full_check=True)
        onnx.shape_inference.infer_shapes(onnx.load(str(path)), check_type=True, strict_mode=True)
        ops = {n.op_type for n in onnx.load(str(path)).graph.node}
        assert not ops & RANDOM_OPS, ops


@pytest.mark.parametrize("family, arch", MODELS, ids=IDS)
def test_batch_is_dynamic_1_7_1024(fp32_bundle, family, arch):
    _, bundle = fp32_bundle(family, arch)
    rng = np.random.default_rng(0)
    for spec in read_manifest(bundle).roles.values():
        sess = session(bundle / spec.file)
        for batch in (1, 7, 1024):
            x = rng.random((batch, *spec.inputs[0].shape[1:]), dtype=np.float32)
            outs = sess.run(None, {spec.inputs[0].name: x})
            assert [o.shape for o in outs] == [(batch, *t.shape[1:]) for t in spec.outputs]
            assert all(np.isfinite(o).all() for o in outs)


def test_a_random_operator_is_refused(tmp_path):
    from onnx import TensorProto, helper

    node = helper.make_node("RandomNormalLike", ["z"], ["eps"])
    graph = helper.make_graph([node, helper.make_node("Add", ["z", "eps"], ["x"])], "g",
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["batch", 4])],
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])])
    path = tmp_path / "noisy.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), path)
    with pytest.raises(ExportError, match="random operators.*RandomNormalLike"):
        check_graph(path)


# ------------------------------------------------------------------------------------------- fp16
@pytest.mark.parametrize("family, arch", [("vae", "mlp"), ("aae", "conv")], ids=["vae-mlp", "aae-conv"])
@pytest.mark.parametrize("io", ["fp32", "fp16"])
def test_fp16_graphs_load_in_onnxruntime_and_stay_finite_at_4_sigma(fp32_bundle, mnist5k, tmp_path, family, arch,
                                                                    io):
    _, bundle = fp32_bundle(family, arch)
    m = read_manifest(bundle)
    want = "tensor(float16)" if io == "fp16" else "tensor(float)"
    for _role, spec in m.roles.items():
        src, dst = bundle / spec.file, tmp_path / spec.file
        to_fp16_file(src, dst, io)
        check_graph(dst)
        sess = session(dst)
        assert {t.type for t in [*sess.get_inputs(), *sess.get_outputs()]} == {want}
        weights = [i.data_type for i in onnx.load(str(dst)).graph.initializer if i.data_type in (1, 10)]
        assert weights and all(t == onnx.TensorProto.FLOAT16 for t in weights)
    assert np.abs(role_probes("latent", m.latent.dim, mnist5k.val, 8, 0)["extreme"]).max() == EXTREME_SIGMA
    # parity's checks (±4σ codes included) against the fp32 graphs, with fp16 tolerances
    fp16 = with_files(m, {r: str(tmp_path / s.file) for r, s in m.roles.items()},
                      "float16" if io == "fp16" else None)
    cases = Verifier(bundle, m, mnist5k.val, "fp16", samples=9).check(fp16)
    assert {c.probe for c in cases} >= {"val", "generated", "noise", "prior", "extreme"}
    assert all(c.passed for c in cases), failure_lines(cases)
    assert not any(o.stats["nonfinite"] for c in cases for o in c.outputs)
    q = error_summary(cases)
    assert q["max_abs"] < 0.05 and q["max_abs_stress"] < 0.05, q


def test_fp16_keeps_exp_in_fp32_and_onnxruntime_accepts_the_mixed_graph():
    """The reparameterisation z = mu + exp(0.5 logvar) * eps: the Mul/Exp mix onnxconverter-common broke."""
    from onnx import TensorProto, helper, numpy_helper

    half = numpy_helper.from_array(np.array(0.5, np.float32), "half")
    nodes = [helper.make_node("Mul", ["logvar", "half"], ["h"]), helper.make_node("Exp", ["h"], ["std"]),
             helper.make_node("Mul", ["std", "eps"], ["noise"]), helper.make_node("Add", ["mu", "noise"], ["z"]),
             helper.make_node("Sigmoid", ["z"], ["x"])]
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", 4]) for n in ("mu", "logvar", "eps")]
    graph = helper.make_graph(nodes, "reparam", inputs, [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                                       ["batch", 4])], [half])
    model = to_fp16(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]))
    onnx.checker.check_model(model, full_check=True)
    by_op = {n.op_type: n for n in model.graph.node}
    exp_in = by_op["Exp"].input[0]
    assert any(n.op_type == "Cast" and n.output[0] == exp_in and n.attribute[0].i == TensorProto.FLOAT
               for n in model.graph.node)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = {"mu": np.zeros((3, 4), np.float32), "logvar": np.full((3, 4), 8.0, np.float32),
             "eps": np.ones((3, 4), np.float32)}
    (x,) = sess.run(None, feeds)
    assert x.dtype == np.float32 and np.allclose(x, 1 / (1 + np.exp(-np.exp(4.0))), atol=1e-3)


def test_cli_fp16_with_fp16_io_replaces_a_bundle_with_force(fp32_bundle, tmp_path):
    run, fp32 = fp32_bundle("vae", "mlp")
    out = Path(shutil.copytree(fp32, tmp_path / "bundle"))  # an earlier bundle: --force may replace it
    code, _, err = cli("export", run, "--out", out, "--precision", "fp16", "--io", "fp16")
    assert code == 2 and "already holds a bundle" in err and "--force" in err
    code, stdout, err = cli("export", run, "--out", out, "--precision", "fp16", "--io", "fp16", "--force")
    assert code == 0, err
    stdout = " ".join(stdout.split())
    assert "fp16 vs fp32: max" in stdout and "fp32 check" in stdout
    assert sorted(p.name for p in out.iterdir()) == ["decoder.onnx", "encoder.onnx", "manifest.json"]
    m = read_manifest(out)
    assert m.precision == "fp16" and m.extra["precision"]["io"] == "fp16"
    for spec in m.roles.values():
        assert {t.dtype for t in spec.inputs + spec.outputs} == {"float16"}
        assert spec.sha256 == sha256(out / spec.file)
        assert session(out / spec.file).get_inputs()[0].type == "tensor(float16)"
    assert set(m.extra["quality"]) == {"encoder", "decoder"}


# ------------------------------------------------------------------------------------------- int8
@pytest.mark.parametrize("family, arch", [("ae", "conv"), ("gan", "mlp")], ids=["ae-conv", "gan-mlp"])
@pytest.mark.parametrize("mode", ["static", "dynamic", "weights"])
def test_int8_graphs_run_and_report_their_error(fp32_bundle, mnist5k, tmp_path, family, arch, mode):
    _, bundle = fp32_bundle(family, arch)
    m = read_manifest(bundle)
    for _role, spec in m.roles.items():
        src, dst = bundle / spec.file, tmp_path / spec.file
        calib = None
        if mode == "static":
            calib = mnist5k.val[:64] if spec.inputs[0].kind == "image" else np.random.default_rng(1).standard_normal(
                (64, m.latent.dim)).astype(np.float32)
        to_int8_file(src, dst, mode, calib)
        check_graph(dst)
        graph = onnx.load(str(dst)).graph
        ops = {n.op_type for n in graph.node}
        want = {"static": {"QuantizeLinear", "DequantizeLinear"}, "weights": {"MatMulNBits"},
                "dynamic": {"DynamicQuantizeLinear", "MatMulInteger", "ConvInteger"}}[mode]
        assert ops & want, ops
        assert mode == "static" or "Gemm" not in ops, ops  # every Linear layer quantized
        assert dst.stat().st_size < 0.9 * src.stat().st_size  # int8 weights (dynamic mode leaves ConvTranspose)
        if mode == "static":  # the form TensorRT consumes: signed int8, zero points 0, on activations and weights
            inits = {i.name: i for i in graph.initializer}
            activations = zero_points(graph, inits, "QuantizeLinear")  # weights are stored int8, only dequantized
            assert activations and all(z.data_type == onnx.TensorProto.INT8 for z in activations)
            weights = [z for z in zero_points(graph, inits, "DequantizeLinear")
                       if z.data_type != onnx.TensorProto.INT32]  # int32 ones are biases
            assert weights and all(z.data_type == onnx.TensorProto.INT8 for z in weights)
            assert all(not onnx.numpy_helper.to_array(z).any() for z in activations + weights)
    int8 = with_files(m, {r: str(tmp_path / s.file) for r, s in m.roles.items()})
    q = error_summary(Verifier(bundle, m, mnist5k.val, "int8", samples=9).check(int8))
    assert 0 < q["max_abs"] < 1.0 and q["mean_abs"] <= q["max_abs"]
    if "psnr_db" in q:
        assert q["psnr_db"] > 20


def zero_points(graph, inits: dict, op: str) -> list:
    return [inits[n.input[2]] for n in graph.node if n.op_type == op and len(n.input) > 2]


def test_cli_int8_static_states_quality_and_writes_triton(fp32_bundle, tmp_path):
    from google.protobuf import text_format

    model_config_pb2 = triton_schema()
    run, _ = fp32_bundle("vae", "mlp")
    report = tmp_path / "report.json"
    code, stdout, err = cli("export", run, "--out", tmp_path / "b", "--precision", "int8", "--calibration",
                            "64", "--triton", tmp_path / "triton", "--max-batch", "256", "--json", report)
    assert code == 0, err
    stdout = " ".join(stdout.split())
    assert "int8 vs fp32: max" in stdout and "PSNR" in stdout and "Triton model repository" in stdout
    m = read_manifest(tmp_path / "b")
    assert m.precision == "int8" and m.extra["precision"]["mode"] == "static"
    assert m.extra["quality"]["decoder"]["psnr_db"] > 20
    data = json.loads(report.read_text())
    assert set(data["quality"]) == {"encoder", "decoder"} and data["manifest"]["precision"] == "int8"
    configs = {p.parent.name: text_format.Parse(p.read_text(), model_config_pb2.ModelConfig())
               for p in (tmp_path / "triton").glob("*/config.pbtxt")}
    assert set(configs) == {"vae_encoder", "vae_decoder", "vae_reconstruct"}
    assert configs["vae_decoder"].max_batch_size == 256
    assert (tmp_path / "triton" / "vae_decoder" / "1" / "model.onnx").read_bytes() == (
        tmp_path / "b" / "decoder.onnx").read_bytes()


# ---------------------------------------------------------------------------------- external data
def test_forced_external_data_exports_and_loads_back(fp32_bundle, tmp_path):
    run, plain = fp32_bundle("gan", "mlp")
    events: list[Progress] = []
    result = export_bundle(run, ExportOptions(out=tmp_path / "big", external_data=True, probes=8),
                           progress=events.append)
    m = result.manifest
    # one step message per role written, then one per role checked against PyTorch
    assert [(p.stage, p.message.split(": ")[0], p.message.split(" ")[1]) for p in events] == [
        *[("export", role, "wrote") for role in m.roles], *[("export", role, "fp32") for role in m.roles]]
    for role, spec in m.roles.items():
        graph, data = tmp_path / "big" / spec.file, tmp_path / "big" / f"{spec.file}.data"
        assert data.stat().st_size > graph.stat().st_size  # the weights live beside the graph
        sha = hashlib.sha256(data.read_bytes()).hexdigest()
        assert [(f.file, f.sha256) for f in spec.data_files] == [(data.name, sha)]  # listed, checked at load
        inits = onnx.load(str(graph), load_external_data=False).graph.initializer
        assert any(i.data_location == onnx.TensorProto.EXTERNAL for i in inits)
        onnx.checker.check_model(str(graph), full_check=True)
        x = np.random.default_rng(0).random((5, *spec.inputs[0].shape[1:]), dtype=np.float32)
        got = session(graph).run(None, {spec.inputs[0].name: x})
        want = session(plain / spec.file).run(None, {spec.inputs[0].name: x})
        assert all(np.abs(g - w).max() <= 1e-5 for g, w in zip(got, want, strict=True))
        assert max(r.max_abs_err[k] for r in result.roles for k in r.max_abs_err) <= 1e-5
        assert role in {r.role for r in result.roles}
    load(tmp_path / "big", device="cpu")  # verifies every listed file
    data = tmp_path / "big" / m.roles["generator"].data_files[0].file
    blob = bytearray(data.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    data.write_bytes(bytes(blob))
    with pytest.raises(BundleError, match="generator.onnx.data does not match the manifest"):
        load(tmp_path / "big", device="cpu")


# ----------------------------------------------------------------------------------- bad input, CLI
def _corrupt(run: Path) -> Path:
    bad = run.parent / "corrupt-run"
    bad.mkdir(exist_ok=True)
    (bad / "checkpoint.pt").write_bytes((run / "checkpoint.pt").read_bytes()[:5000])
    return bad


@pytest.mark.parametrize("case, args, expect", [
    ("missing checkpoint", ["{missing}"], "checkpoint not found"),
    ("corrupt checkpoint", ["{corrupt}"], "no readable checkpoint"),
    ("opset too new", ["{run}", "--opset", "99"], "--opset must be between 18 and"),
    ("opset too old", ["{run}", "--opset", "11"], "got 11"),
    ("max batch 0", ["{run}", "--max-batch", "0"], "--max-batch and --opt-batch must be >= 1"),
    ("bad precision", ["{run}", "--precision", "int4"], "--precision must be one of"),
    ("io fp16 at fp32", ["{run}", "--io", "fp16"], "--io fp16 needs --precision fp16"),
    ("existing bundle", ["{run}", "--out", "{bundle}"], "already holds a bundle; pass --force"),
    ("engine without tensorrt", ["{run}", "--engine", "--out", "{fresh}"], "'tensorrt' package is not installed"),
    ("engine with dynamic int8", ["{run}", "--engine", "--precision", "int8", "--int8-mode", "dynamic"],
     "--engine with --precision int8 needs --int8-mode static"),
    ("unknown int8 mode", ["{run}", "--precision", "int8", "--int8-mode", "int4"], "--int8-mode must be one of"),
])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(fp32_bundle, tmp_path, case, args, expect):
    if HAVE_TRT and "--engine" in args:
        pytest.skip("tensorrt is installed here: --engine does not fail for want of it")
    run, bundle = fp32_bundle("gan", "mlp")
    before = sorted(p.name for p in run.iterdir())
    paths = {"run": run, "bundle": bundle, "missing": tmp_path / "nowhere", "corrupt": _corrupt(run),
             "fresh": run / "fresh-bundle"}
    code, stdout, err = cli("export", *[a.format(**paths) for a in args])
    assert code == 2, (stdout, err)
    assert expect in err.replace("\n", " ")
    assert err.startswith("error:") and "Traceback" not in err + stdout
    assert len(err.strip().splitlines()) <= 3  # one line, soft-wrapped at most by the console
    assert sorted(p.name for p in run.iterdir()) == before  # no bundle, no temporary folder left behind


@pytest.mark.skipif(HAVE_TRT, reason="tensorrt is installed here")
def test_engine_without_tensorrt_names_the_extra(fp32_bundle):
    import torch

    run, _ = fp32_bundle("gan", "mlp")
    code, _, err = cli("export", run, "--engine", "--out", run / "engine-bundle")
    err = " ".join(err.split())
    assert code == 2
    assert "'tensorrt' package is not installed (the 'tensorrt' extra brings it: pip install 'bigmodel[tensorrt]'" \
        in err
    assert ("no CUDA GPU was found" in err) == (not torch.cuda.is_available())
    assert not (run / "engine-bundle").exists()


def test_a_failure_mid_export_leaves_the_old_bundle_and_no_temporary_folder(fp32_bundle, tmp_path, monkeypatch):
    import bigmodel.export.bundle as export_onnx

    run, bundle = fp32_bundle("gan", "mlp")
    work = tmp_path / "run"
    work.mkdir()
    shutil.copy(run / "checkpoint.pt", work / "checkpoint.pt")
    shutil.copytree(bundle, work / "bundle")
    before = {p.name: p.read_bytes() for p in (work / "bundle").iterdir()}
    real = export_onnx.check_against_reference

    def broken(path, ref, spec, value_range):
        if path.name == "discriminator.onnx":  # the second role: the first is already written
            ref.outputs = {k: [w + 1.0 for w in v] for k, v in ref.outputs.items()}
        return real(path, ref, spec, value_range)

    monkeypatch.setattr(export_onnx, "check_against_reference", broken)
    with pytest.raises(ExportError, match=r"discriminator: exported graph differs from PyTorch .*logit; val inputs, "
                                          r"batch 1\): \|got - want\| = 1 "):
        export_bundle(work, ExportOptions(force=True, probes=8))
    assert sorted(p.name for p in work.iterdir()) == ["bundle", "checkpoint.pt"]
    assert {p.name: p.read_bytes() for p in (work / "bundle").iterdir()} == before


# ------------------------------------------------------------------------------------------ Triton
def triton_schema():
    """Triton's own ModelConfig message, from tritonclient's generated model_config_pb2 (no grpc needed)."""
    import importlib.util

    tritonclient = pytest.importorskip("tritonclient", reason="tritonclient (test extra) is not installed")
    path = Path(tritonclient.__file__).parent / "grpc" / "model_config_pb2.py"
    if not path.is_file():
        pytest.skip(f"tritonclient {getattr(tritonclient, '__version__', '?')} ships no grpc/model_config_pb2.py")
    spec = importlib.util.spec_from_file_location("triton_model_config_pb2", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("family", ["vae", "aae", "gan"])
def test_triton_configs_parse_with_tritons_schema(fp32_bundle, tmp_path, family):
    from google.protobuf import text_format

    from bigmodel.export.triton import write_repository

    pb2 = triton_schema()
    _, bundle = fp32_bundle(family, "mlp")
    m = read_manifest(bundle)
    names = write_repository(bundle, m, tmp_path, ExportOptions(max_batch=512, opt_batch=32))
    expect = [f"{family}_{r}" for r in m.roles] + ([f"{family}_reconstruct"] if family != "gan" else [])
    assert names == expect
    for name in names:
        cfg = text_format.Parse((tmp_path / name / "config.pbtxt").read_text(), pb2.ModelConfig())
        assert cfg.name == name and cfg.max_batch_size == 512 and (tmp_path / name / "1").is_dir()
        if name.endswith("_reconstruct"):
            assert cfg.platform == "ensemble"
            steps = cfg.ensemble_scheduling.step
            assert [s.model_name for s in steps] == [f"{family}_encoder", f"{family}_decoder"]
            assert steps[0].output_map[m.roles["encoder"].outputs[0].name] == steps[1].input_map["z"]
            assert list(cfg.input[0].dims) == [1, 28, 28] and list(cfg.output[0].dims) == [1, 28, 28]
            continue
        spec = m.roles[name.removeprefix(f"{family}_")]
        assert cfg.platform == "onnxruntime_onnx"
        assert list(cfg.dynamic_batching.preferred_batch_size) == [32, 512]
        assert [(t.name, list(t.dims), pb2.DataType.Name(t.data_type)) for t in cfg.input] == [
            (t.name, t.shape[1:], "TYPE_FP32") for t in spec.inputs]
        assert [(t.name, list(t.dims)) for t in cfg.output] == [(t.name, t.shape[1:]) for t in spec.outputs]
        assert (tmp_path / name / "1" / "model.onnx").read_bytes() == (bundle / spec.file).read_bytes()
    if family == "vae":
        ens = text_format.Parse((tmp_path / "vae_reconstruct" / "config.pbtxt").read_text(), pb2.ModelConfig())
        assert ens.ensemble_scheduling.step[0].output_map["mu"] == ens.ensemble_scheduling.step[1].input_map["z"]


def test_triton_fp16_io_types(fp32_bundle):
    import dataclasses

    from bigmodel.export.triton import model_config

    _, bundle = fp32_bundle("vae", "mlp")
    m = read_manifest(bundle)
    spec = m.roles["decoder"]
    m.roles["decoder"] = dataclasses.replace(spec, inputs=[dataclasses.replace(t, dtype="float16")
                                                           for t in spec.inputs])
    assert "TYPE_FP16" in model_config(m, "decoder", 64, 8)

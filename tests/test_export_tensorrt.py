"""`bigmodel.export.tensorrt` without TensorRT: the pure planning functions, the preflight, and the
thin build function driven through a recording stand-in for the `tensorrt` module (the calls it
makes, in order, are those of TensorRT's documented Python API; a real build needs the `gpu` tests)."""

from __future__ import annotations

import hashlib
import importlib.machinery
import sys
import types
from pathlib import Path

import pytest

from bigmodel.errors import BackendUnavailable, InputError
from bigmodel.export import ExportOptions
from bigmodel.export.tensorrt import (
    build_engines,
    engine_entry,
    engine_file_name,
    precision_plan,
    profile_shapes,
    require_tensorrt,
    timing_cache_path,
)
from bigmodel.manifest import BATCH, DataSpec, LatentSpec, Manifest, RoleSpec, TensorSpec


def graphs(bundle: Path) -> Path:
    """Stand-in graph files where build_engines looks for them (the bundle's and the fp32 ones)."""
    (bundle / "fp32").mkdir(parents=True)
    for name in ("encoder.onnx", "decoder.onnx", "fp32/encoder.onnx", "fp32/decoder.onnx"):
        (bundle / name).write_bytes(b"onnx")
    return bundle


def manifest(precision: str = "fp32") -> Manifest:
    enc = RoleSpec("encoder.onnx", "0" * 64, [TensorSpec("x", "float32", [BATCH, 1, 28, 28], "image")],
                   [TensorSpec("mu", "float32", [BATCH, 20], "latent"), TensorSpec("logvar", "float32", [BATCH, 20])])
    dec = RoleSpec("decoder.onnx", "0" * 64, [TensorSpec("z", "float32", [BATCH, 20], "latent")],
                   [TensorSpec("x", "float32", [BATCH, 1, 28, 28], "image")])
    return Manifest("vae", "mlp", DataSpec("mnist-5k", (1, 28, 28)), LatentSpec(20), {"encoder": enc, "decoder": dec},
                    precision=precision)


@pytest.mark.parametrize("version, precision, tf32, expect", [
    # TensorRT 10: strongly typed by flag; 11+: always strongly typed (flag deprecated and ignored, FP16/INT8 gone)
    ("10.13.0.35", "fp32", False, (("STRONGLY_TYPED",), (), ("TF32",))),
    ("10.13.0.35", "fp16", False, (("STRONGLY_TYPED",), (), ("TF32",))),
    ("10.13.0.35", "int8", False, (("STRONGLY_TYPED",), (), ("TF32",))),
    ("10.13.0.35", "fp32", True, (("STRONGLY_TYPED",), ("TF32",), ())),
    ("11.0.0.114", "fp32", False, ((), (), ("TF32",))),
    ("11.0.0.114", "fp16", False, ((), (), ("TF32",))),
    ("11.2.1.2", "int8", True, ((), ("TF32",), ())),
])
def test_precision_plan_is_strongly_typed_from_the_bundles_own_graph(version, precision, tf32, expect):
    plan = precision_plan(version, precision, "decoder.onnx", tf32)
    assert (plan.network_flags, plan.flags, plan.clear_flags) == expect
    assert plan.onnx_file == "decoder.onnx" and plan.strongly_typed
    assert not {"FP16", "INT8"} & set(plan.flags)  # precision never comes from builder flags


def test_precision_plan_refuses_old_tensorrt_and_unknown_precision():
    with pytest.raises(BackendUnavailable, match="TensorRT 8.6.1 is too old.*>= 10"):
        precision_plan("8.6.1", "fp16", "decoder.onnx")
    with pytest.raises(InputError, match="expected fp32, fp16 or int8"):
        precision_plan("10.1.0", "bf16", "decoder.onnx")


def test_profile_shapes_come_from_the_manifest():
    m = manifest()
    assert profile_shapes(m, "encoder", 64, 1024) == {"x": ((1, 1, 28, 28), (64, 1, 28, 28), (1024, 1, 28, 28))}
    assert profile_shapes(m, "decoder", 7, 7) == {"z": ((1, 20), (7, 20), (7, 20))}
    with pytest.raises(InputError, match="1 <= opt <= max"):
        profile_shapes(m, "decoder", 65, 64)
    with pytest.raises(InputError, match="no role 'generator'"):
        profile_shapes(m, "generator", 1, 1)


def test_engine_and_cache_names_carry_gpu_and_tensorrt_version(tmp_path):
    assert engine_file_name("decoder", "fp16", "9.0", "10.13.0.35") == "decoder.fp16.sm90.trt10.13.0.35.engine"
    cache = timing_cache_path(tmp_path / "runs" / "vae" / "bundle", "10.13.0.35", "9.0")
    assert cache == tmp_path / "runs" / "vae" / "bundle.timing.trt10.13.0.35.sm90.cache"
    assert timing_cache_path(tmp_path / "b", "11.0.0", "8.6") != timing_cache_path(tmp_path / "b", "10.13.0", "8.6")


def test_engine_entry_records_what_the_runtime_checks(tmp_path):
    engine = tmp_path / "engines" / "decoder.fp16.sm90.trt10.13.0.engine"
    engine.parent.mkdir()
    engine.write_bytes(b"plan")
    e = engine_entry("decoder", engine, "10.13.0", "9.0", "fp16", 64, 1024, "NVIDIA H200")
    assert e.file == "engines/decoder.fp16.sm90.trt10.13.0.engine"
    assert e.sha256 == hashlib.sha256(b"plan").hexdigest()
    assert (e.tensorrt_version, e.compute_capability, e.precision) == ("10.13.0", "9.0", "fp16")
    assert e.profile == {"min": 1, "opt": 64, "max": 1024} and e.device_name == "NVIDIA H200"


def _no_trt(name):
    raise ImportError(f"No module named {name!r}")


def test_preflight_names_every_missing_piece():
    with pytest.raises(BackendUnavailable) as err:
        require_tensorrt(import_module=_no_trt, gpu=lambda: None)
    msg = str(err.value)
    assert err.value.exit_code == 2
    assert "'tensorrt' package is not installed" in msg and "bigmodel[tensorrt]" in msg and "no CUDA GPU" in msg
    with pytest.raises(BackendUnavailable, match="no CUDA GPU") as err:
        require_tensorrt(import_module=lambda name: FakeTRT(), gpu=lambda: None)
    assert "package" not in str(err.value)
    with pytest.raises(BackendUnavailable, match="bigmodel\\[tensorrt\\]") as err:
        require_tensorrt(import_module=_no_trt, gpu=lambda: ("9.0", "NVIDIA H200"))
    assert "GPU" not in str(err.value).split(":", 1)[1]
    target = require_tensorrt(import_module=lambda name: FakeTRT(), gpu=lambda: ("9.0", "NVIDIA H200"))
    assert (target.version, target.compute_capability, target.device_name) == ("10.13.0.35", "9.0", "NVIDIA H200")


# ------------------------------------------------------------------ the thin module, against a stand-in
class FakeTRT(types.SimpleNamespace):
    """Records the TensorRT calls build_engines makes; 'builds' an engine whose bytes name its settings."""

    def __init__(self, version="10.13.0.35"):
        calls: list[tuple] = []
        log = calls.append
        super().__init__(__version__=version, calls=calls, float16="float16",
                         __spec__=importlib.machinery.ModuleSpec("tensorrt", None))  # torch looks tensorrt up

        class Logger:
            WARNING = 2

            def __init__(self, level):
                log(("Logger", level))

        class Tensor:
            def __init__(self, name):
                self.name, self._dtype = name, "float32"

            @property
            def dtype(self):
                return self._dtype

            @dtype.setter
            def dtype(self, value):
                log(("dtype", self.name, value))
                self._dtype = value

        class Network:
            num_inputs = num_outputs = 1

            def get_input(self, i):
                return Tensor("in")

            def get_output(self, i):
                return Tensor("out")

        class Parser:
            num_errors = 0

            def __init__(self, network, logger):
                pass

            def parse_from_file(self, path):
                assert Path(path).is_file(), path
                log(("parse", Path(path).relative_to(Path(path).parents[1]).as_posix()
                     if Path(path).parent.name == "fp32" else Path(path).name))
                return True

        class Profile:
            def set_shape(self, name, lo, opt, hi):
                log(("profile", name, lo, opt, hi))

        class Cache:
            def __init__(self, blob):
                self.blob = blob

            def serialize(self):
                return self.blob + b"+"

        class Config:
            def set_memory_pool_limit(self, pool, size):
                log(("workspace", pool, size))

            def set_flag(self, flag):
                log(("set_flag", flag))

            def clear_flag(self, flag):
                log(("clear_flag", flag))

            def add_optimization_profile(self, profile):
                log(("add_profile",))

            def create_timing_cache(self, blob):
                log(("timing_cache", bytes(blob)))
                self.cache = Cache(bytes(blob))
                return self.cache

            def set_timing_cache(self, cache, ignore_mismatch):
                log(("set_timing_cache", ignore_mismatch))

            def get_timing_cache(self):
                return self.cache

        class Builder:
            def __init__(self, logger):
                pass

            def create_network(self, flags):
                log(("create_network", flags))
                return Network()

            def create_builder_config(self):
                return Config()

            def create_optimization_profile(self):
                return Profile()

            def build_serialized_network(self, network, config):
                log(("build",))
                return memoryview(b"engine")

        def dims(shape):
            assert isinstance(shape, list) and all(isinstance(d, int) for d in shape), shape
            return tuple(shape)

        self.Logger, self.Builder, self.OnnxParser, self.Dims = Logger, Builder, Parser, dims
        # TensorRT 10: STRONGLY_TYPED = 1 (EXPLICIT_BATCH = 0); 11 renumbered it to 0 and ignores it
        self.NetworkDefinitionCreationFlag = types.SimpleNamespace(STRONGLY_TYPED=1 if version.startswith("10.") else 0)
        flags = dict(TF32="TF32") if not version.startswith("10.") else dict(FP16="FP16", INT8="INT8", TF32="TF32")
        self.BuilderFlag = types.SimpleNamespace(**flags)  # 11 has no FP16/INT8: using them raises
        self.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")


@pytest.mark.parametrize("version, precision, network_flags", [
    ("10.13.0.35", "fp16", 1 << 1),
    ("10.13.0.35", "int8", 1 << 1),
    ("11.0.0.114", "fp16", 0),
    ("10.13.0.35", "fp32", 1 << 1),
])
def test_build_engines_drives_tensorrt_and_reuses_the_timing_cache(tmp_path, monkeypatch, version, precision,
                                                                    network_flags):
    import bigmodel.export.tensorrt as trt_module
    from bigmodel.export.tensorrt import TensorRTTarget

    fake = FakeTRT(version)
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    monkeypatch.setattr(trt_module, "require_tensorrt", lambda: TensorRTTarget(version, "9.0", "NVIDIA H200"))
    bundle, out = graphs(tmp_path / ".bundle.tmp"), tmp_path / "bundle"
    m = manifest(precision)
    opts = ExportOptions(precision=precision, opt_batch=32, max_batch=256)
    cache = timing_cache_path(out, version, "9.0")
    cache.write_bytes(b"old")
    entries = build_engines(bundle, m, opts, out, lambda msg: None)

    assert [e.role for e in entries] == ["encoder", "decoder"] and m.engines == entries
    for e in entries:
        assert (bundle / e.file).read_bytes() == b"engine"
        assert e.file == f"engines/{e.role}.{precision}.sm90.trt{version}.engine"
        assert e.profile == {"min": 1, "opt": 32, "max": 256} and e.compute_capability == "9.0"
        assert e.tf32 is False and e.version_compatible is False
    calls = fake.calls
    assert ("create_network", network_flags) in calls
    assert ("parse", "decoder.onnx") in calls and ("parse", "encoder.onnx") in calls  # the bundle's own graphs
    assert [c for c in calls if c[0] in ("set_flag", "clear_flag")] == [("clear_flag", "TF32")] * 2
    assert ("profile", "z", (1, 20), (32, 20), (256, 20)) in calls
    assert ("profile", "x", (1, 1, 28, 28), (32, 1, 28, 28), (256, 1, 28, 28)) in calls
    assert [c for c in calls if c[0] == "timing_cache"] == [("timing_cache", b"old"), ("timing_cache", b"old+")]
    assert cache.read_bytes() == b"old++"  # read beside the bundle, extended per role, written back


def test_export_with_engine_puts_engines_in_the_bundle_and_the_cache_beside_it(trained_run, tmp_path, monkeypatch):
    """The whole `--engine` path of export_bundle, TensorRT 10 at fp16: strongly typed engines from the fp16 graphs."""
    import shutil

    import bigmodel.export.tensorrt as trt_module
    from bigmodel.export import export_bundle
    from bigmodel.export.tensorrt import TensorRTTarget
    from bigmodel.manifest import read_manifest

    fake = FakeTRT("10.13.0.35")
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    monkeypatch.setattr(trt_module, "require_tensorrt", lambda: TensorRTTarget(fake.__version__, "9.0", "NVIDIA H200"))
    shutil.copy(trained_run("gan", "mlp") / "checkpoint.pt", tmp_path / "checkpoint.pt")
    result = export_bundle(tmp_path, ExportOptions(precision="fp16", engine=True, probes=8, max_batch=128,
                                                   opt_batch=16))
    bundle = tmp_path / "bundle"
    m = read_manifest(bundle)
    assert [e.role for e in m.engines] == ["generator", "discriminator"] == [e.role for e in result.manifest.engines]
    for e in m.engines:
        assert (bundle / e.file).read_bytes() == b"engine" and e.profile == {"min": 1, "opt": 16, "max": 128}
        assert e.precision == "fp16" and e.tensorrt_version == "10.13.0.35"
    assert ("parse", "generator.onnx") in fake.calls and ("create_network", 1 << 1) in fake.calls  # typed, own graph
    assert not any(c[0] == "set_flag" for c in fake.calls)
    assert not (bundle / "fp32").exists()  # the fp32 graphs served the build and are gone
    assert timing_cache_path(bundle, "10.13.0.35", "9.0").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["checkpoint.pt", "bundle", timing_cache_path(bundle, "10.13.0.35", "9.0").name])

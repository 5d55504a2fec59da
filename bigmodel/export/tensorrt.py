"""TensorRT engines for a bundle: pure planning functions, and one thin function that calls TensorRT.

Everything around TensorRT (which ONNX file and flags per TensorRT version, optimisation profile
shapes, engine and timing-cache file names, manifest entries, the preflight) is a pure function
that CPU tests cover. `build_engines` is the only code that touches the `tensorrt` module, and is
written against TensorRT's documented Python API (10.x and 11.x); it has not been executed on
this project's machines, which have no TensorRT (see docs/gpu.md).

Precision lives in the graph, on every TensorRT >= 10: a strongly typed network parsed from the
bundle's own graph -- fp32, fp16 (the fp32 islands and Casts our fp16 pass kept are honoured, which
a weakly typed build with BuilderFlag.FP16 may drop) or int8 QDQ. TensorRT 10 needs
NetworkDefinitionCreationFlag.STRONGLY_TYPED (weak typing is deprecated since 10.12); TensorRT 11
networks are always strongly typed (the flag is deprecated and ignored, and BuilderFlag.FP16/INT8
are gone), so no flag is passed there. BuilderFlag.TF32 (on by default) is cleared unless TF32 is
asked for, so fp32 layers match the fp32 graph.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bigmodel.errors import BackendUnavailable, ExportError, InputError
from bigmodel.fileio import atomic_write_bytes, sha256_file
from bigmodel.manifest import BATCH, EngineSpec, Manifest

ENGINE_DIR = "engines"
MIN_TRT = 10
WORKSPACE_BYTES = 4 * 1024**3


@dataclass(frozen=True)
class PrecisionPlan:
    """How to build one engine: network creation flags, builder flags to set/clear, which ONNX file to parse."""

    network_flags: tuple[str, ...]  # NetworkDefinitionCreationFlag names
    flags: tuple[str, ...]  # BuilderFlag names to set
    clear_flags: tuple[str, ...]  # BuilderFlag names to clear
    onnx_file: str  # relative to the bundle folder: always the bundle's own graph
    strongly_typed: bool = True


def trt_major(trt_version: str) -> int:
    try:
        return int(str(trt_version).split(".")[0])
    except ValueError as e:
        raise InputError(f"cannot read a TensorRT version from {trt_version!r}; expected e.g. '10.13.0'") from e


def precision_plan(trt_version: str, precision: str, role_file: str, tf32: bool = False) -> PrecisionPlan:
    """Network flags, builder flags and source graph for a `precision` engine of `role_file` under `trt_version`.

    >>> precision_plan("10.13.0", "fp16", "decoder.onnx")
    PrecisionPlan(network_flags=('STRONGLY_TYPED',), flags=(), clear_flags=('TF32',), onnx_file='decoder.onnx', \
strongly_typed=True)
    """
    major = trt_major(trt_version)
    if major < MIN_TRT:
        raise BackendUnavailable(f"TensorRT {trt_version} is too old: bigmodel builds engines with TensorRT "
                                 f">= {MIN_TRT}; install it with: pip install 'bigmodel[tensorrt]'")
    if precision not in ("fp32", "fp16", "int8"):
        raise InputError(f"no TensorRT precision plan for {precision!r}; expected fp32, fp16 or int8")
    network = ("STRONGLY_TYPED",) if major == 10 else ()  # 11+: always strongly typed, the flag is ignored
    tf32_flags: tuple[tuple[str, ...], tuple[str, ...]] = (("TF32",), ()) if tf32 else ((), ("TF32",))
    return PrecisionPlan(network, *tf32_flags, role_file)


def profile_shapes(manifest: Manifest, role: str, opt_batch: int, max_batch: int) -> dict[str, tuple[tuple, ...]]:
    """Per input of `role`: (min, opt, max) shapes, batch 1 / opt_batch / max_batch, other dims from the manifest."""
    if not 1 <= opt_batch <= max_batch:
        raise InputError(f"the batch profile needs 1 <= opt <= max; got opt {opt_batch}, max {max_batch}")
    if role not in manifest.roles:
        raise InputError(f"{manifest.family} has no role {role!r}; expected one of: {', '.join(manifest.roles)}")
    shapes = {}
    for t in manifest.roles[role].inputs:
        rest = t.shape[1:]
        if t.shape[:1] != [BATCH] or any(not isinstance(d, int) for d in rest):
            raise InputError(f"{role}.{t.name}: expected shape [batch, fixed dims...], got {t.shape}")
        shapes[t.name] = tuple((b, *rest) for b in (1, opt_batch, max_batch))
    return shapes


def engine_file_name(role: str, precision: str, compute_capability: str, trt_version: str) -> str:
    """`decoder.fp16.sm90.trt10.13.0.engine`: engines do not move between GPUs or TensorRT versions."""
    return f"{role}.{precision}.sm{compute_capability.replace('.', '')}.trt{trt_version}.engine"


def timing_cache_path(bundle: Path, trt_version: str, compute_capability: str) -> Path:
    """The timing cache lives beside the bundle (survives `--force` re-exports), one per TensorRT and GPU."""
    bundle = Path(bundle)
    cc = compute_capability.replace(".", "")
    return bundle.parent / f"{bundle.name}.timing.trt{trt_version}.sm{cc}.cache"


def engine_entry(role: str, engine: Path, trt_version: str, compute_capability: str, precision: str,
                 opt_batch: int, max_batch: int, device_name: str = "", tf32: bool = False) -> EngineSpec:
    """The manifest entry for one built engine (file relative to the bundle)."""
    return EngineSpec(role=role, file=f"{ENGINE_DIR}/{Path(engine).name}", sha256=sha256_file(engine),
                      tensorrt_version=trt_version, compute_capability=compute_capability, precision=precision,
                      profile={"min": 1, "opt": opt_batch, "max": max_batch}, device_name=device_name, tf32=tf32)


@dataclass(frozen=True)
class TensorRTTarget:
    version: str
    compute_capability: str  # "9.0"
    device_name: str


def require_tensorrt(import_module: Callable = importlib.import_module, gpu: Callable | None = None) -> TensorRTTarget:
    """Preflight for --engine: the tensorrt package and a CUDA GPU, or one BackendUnavailable naming what is missing."""
    missing = []
    trt = None
    try:
        trt = import_module("tensorrt")
    except ImportError:
        missing.append("the 'tensorrt' package is not installed (the 'tensorrt' extra brings it: "
                       "pip install 'bigmodel[tensorrt]', wheels from NVIDIA's index)")
    found = (gpu or _cuda_gpu)()
    if found is None:
        missing.append("no CUDA GPU was found (torch.cuda.is_available() is False); engines are built on the GPU "
                       "they will run on")
    if missing:
        raise BackendUnavailable("--engine needs TensorRT and an NVIDIA GPU: " + "; and ".join(missing))
    assert trt is not None and found is not None
    cc, name = found
    return TensorRTTarget(str(trt.__version__), cc, name)


def _cuda_gpu() -> tuple[str, str] | None:
    import torch

    if not torch.cuda.is_available():
        return None
    major, minor = torch.cuda.get_device_capability(0)
    return f"{major}.{minor}", torch.cuda.get_device_name(0)


def build_engines(bundle: Path, manifest: Manifest, opts, out: Path, say: Callable[[str], None]) -> list[EngineSpec]:
    """Build one engine per role into `bundle/engines/` and add them to `manifest.engines`.

    `out` is where the bundle will live: the timing cache is read from and written beside it.
    This is the only function that calls TensorRT (the real module, so its calls are type-checked).
    """
    target = require_tensorrt()
    import tensorrt as trt

    version, cc = target.version, target.compute_capability
    tf32 = bool(getattr(opts, "tf32", False))
    logger = trt.Logger(trt.Logger.WARNING)
    cache_file = timing_cache_path(out, version, cc)
    cache_blob = cache_file.read_bytes() if cache_file.is_file() else b""
    (bundle / ENGINE_DIR).mkdir(exist_ok=True)
    entries = []
    for role, spec in manifest.roles.items():
        t0 = time.perf_counter()
        plan = precision_plan(version, manifest.precision, spec.file, tf32)
        builder = trt.Builder(logger)
        network_flags = 0
        for name in plan.network_flags:
            network_flags |= 1 << int(getattr(trt.NetworkDefinitionCreationFlag, name))
        network = builder.create_network(network_flags)
        parser = trt.OnnxParser(network, logger)
        if not parser.parse_from_file(str(bundle / plan.onnx_file)):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise ExportError(f"TensorRT {version} cannot parse {plan.onnx_file}: {errors[:400]}")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
        for flag in plan.flags:
            config.set_flag(getattr(trt.BuilderFlag, flag))
        for flag in plan.clear_flags:
            config.clear_flag(getattr(trt.BuilderFlag, flag))
        profile = builder.create_optimization_profile()
        for name, (lo, opt, hi) in profile_shapes(manifest, role, opts.opt_batch, opts.max_batch).items():
            profile.set_shape(name, trt.Dims(list(lo)), trt.Dims(list(opt)), trt.Dims(list(hi)))
        config.add_optimization_profile(profile)
        cache = config.create_timing_cache(cache_blob)
        config.set_timing_cache(cache, False)
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise ExportError(f"TensorRT {version} could not build an engine for {role} (see its log above)")
        engine = bundle / ENGINE_DIR / engine_file_name(role, manifest.precision, cc, version)
        atomic_write_bytes(engine, bytes(serialized))
        cache_blob = bytes(config.get_timing_cache().serialize())
        entries.append(engine_entry(role, engine, version, cc, manifest.precision, opts.opt_batch, opts.max_batch,
                                    target.device_name, tf32))
        say(f"{role}: TensorRT {version} {manifest.precision} engine (strongly typed, TF32 {'on' if tf32 else 'off'}) "
            f"for sm{cc} (batch 1/{opts.opt_batch}/{opts.max_batch}) in {time.perf_counter() - t0:.1f}s")
    atomic_write_bytes(cache_file, cache_blob)
    manifest.engines = entries
    return entries

"""onnxruntime backend: one InferenceSession per role, built once at load with low-latency options.

Providers: `ort-cpu` (CPU), `ort-cuda` (CUDA), `ort-trt` (TensorRT, with its engine cache beside the
user's cache folder and the batch profile taken from the manifest). A session that onnxruntime puts
on another provider than the one asked for is an error (BackendUnavailable), never a silent fallback;
`load(..., fallback=True)` turns it into one warning and a CPU session.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np

from bigmodel.errors import BackendUnavailable, BundleError, missing_package
from bigmodel.manifest import BATCH, Manifest

# backend name -> onnxruntime providers, most preferred first
PROVIDERS = {
    "ort-cpu": ["CPUExecutionProvider"],
    "ort-cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "ort-trt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}
EXTRA = {"ort-cpu": "runtime", "ort-cuda": "gpu", "ort-trt": "gpu"}
# the batch profile onnxruntime's TensorRT provider builds for when the manifest names none (= export defaults)
DEFAULT_PROFILE = {"min": 1, "opt": 64, "max": 1024}


def import_ort():
    try:
        import onnxruntime
    except ImportError as e:
        raise missing_package("onnxruntime", "runtime", "the ort backend") from e
    return onnxruntime


@functools.lru_cache(maxsize=1)
def physical_cores() -> int:
    """Physical cores this process may use (hyper-threads add little to GEMM-bound graphs)."""
    try:
        allowed = os.sched_getaffinity(0)
    except AttributeError:
        return os.cpu_count() or 1
    cores = set()
    for cpu in allowed:
        try:
            topo = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
            cores.add(((topo / "physical_package_id").read_text().strip(), (topo / "core_id").read_text().strip()))
        except OSError:
            cores.add(("cpu", str(cpu)))
    return max(1, len(cores))


def unavailable_reason(name: str) -> str | None:
    """None when `name` can run here, else why not (and what installs it)."""
    try:
        ort = import_ort()
    except BackendUnavailable as e:
        return str(e)
    wanted = PROVIDERS[name][0]
    available = ort.get_available_providers()
    if wanted not in available:
        return (f"onnxruntime {ort.__version__} here has no {wanted} (it has {', '.join(available)}); "
                f"install pip install 'bigmodel[{EXTRA[name]}]' on a machine with an NVIDIA GPU")
    return None


def cache_dir() -> Path:
    """Where onnxruntime's TensorRT provider keeps engines it builds: $BIGMODEL_CACHE or ~/.cache/bigmodel."""
    root = os.environ.get("BIGMODEL_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "bigmodel")
    return Path(root)


def role_profile(manifest: Manifest, role: str) -> dict[str, int]:
    """The batch profile for `role`: its engine's in the manifest, else DEFAULT_PROFILE."""
    for e in manifest.engines:
        if e.role == role:
            return {k: int(e.profile[k]) for k in ("min", "opt", "max")}
    return dict(DEFAULT_PROFILE)


def trt_provider_options(manifest: Manifest, role: str) -> dict[str, object]:
    """TensorrtExecutionProvider options for one role: engine/timing cache, precision, explicit shape profile."""
    spec = manifest.roles[role]
    profile = role_profile(manifest, role)
    shapes = {}
    for k in ("min", "opt", "max"):
        shapes[k] = ",".join(
            f"{t.name}:" + "x".join(str(profile[k]) if d == BATCH else str(d) for d in t.shape) for t in spec.inputs)
    folder = cache_dir() / "ort-trt" / spec.sha256[:16]
    return {
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": str(folder),
        "trt_timing_cache_enable": True,
        "trt_timing_cache_path": str(folder),
        "trt_fp16_enable": manifest.precision == "fp16",
        "trt_int8_enable": manifest.precision == "int8",
        "trt_profile_min_shapes": shapes["min"],
        "trt_profile_opt_shapes": shapes["opt"],
        "trt_profile_max_shapes": shapes["max"],
    }


def _fast_run(session, outputs: list[str]):
    """feeds -> outputs through the compiled session, skipping `InferenceSession.run`'s per-call Python.

    That wrapper re-validates input names (the Model has checked them against the manifest) and,
    on a provider failure, silently retries on the CPU -- which bigmodel never does. The public
    method is used when the compiled one is not where onnxruntime has kept it since 1.x.
    """
    compiled = getattr(getattr(session, "_sess", None), "run", None)
    if compiled is None:
        return functools.partial(session.run, outputs)

    def run(feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return compiled(outputs, feeds, None)

    return run


def session_options(ort, threads: int | None):
    """Low-latency options: all graph optimizations, `threads` intra-op threads (default physical cores)."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads or physical_cores()
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3
    return opts


class OrtBackend:
    """Sessions for every role of a bundle; `run` is thread-safe (onnxruntime sessions are)."""

    def __init__(self, bundle: Path, manifest: Manifest, name: str = "ort-cpu", threads: int | None = None,
                 provider_options: dict | None = None):
        if name not in PROVIDERS:
            raise BackendUnavailable(f"unknown onnxruntime backend {name!r}; expected one of {', '.join(PROVIDERS)}")
        ort = import_ort()
        reason = unavailable_reason(name)
        if reason is not None:
            raise BackendUnavailable(f"backend {name}: {reason}")
        self.name = name
        self.threads = threads or physical_cores()
        opts = session_options(ort, self.threads)
        self.sessions = {}
        self._run: dict[str, object] = {}
        self._outputs: dict[str, list[str]] = {}
        self._profiles: dict[str, tuple[int, int]] = {}
        misplaced = []
        for role, spec in manifest.roles.items():
            options = {p: dict((provider_options or {}).get(p, {})) for p in PROVIDERS[name]}
            if name == "ort-trt":
                trt_options = trt_provider_options(manifest, role)
                try:
                    Path(trt_options["trt_engine_cache_path"]).mkdir(parents=True, exist_ok=True)
                except OSError:  # no writable cache folder: build engines at every load instead
                    for key in ("trt_engine_cache_enable", "trt_timing_cache_enable"):
                        trt_options[key] = False
                options["TensorrtExecutionProvider"] = {**trt_options, **options["TensorrtExecutionProvider"]}
                p = role_profile(manifest, role)
                self._profiles[role] = (p["min"], p["max"])
            try:
                session = ort.InferenceSession(str(bundle / spec.file), opts,
                                               providers=[(p, options[p]) for p in PROVIDERS[name]])
            except Exception as e:  # onnxruntime raises its own exception types
                first = str(e).splitlines()[0][:300]
                raise BundleError(f"onnxruntime cannot load {bundle / spec.file}: {first}") from e
            used = session.get_providers()[0]
            if used != PROVIDERS[name][0]:
                misplaced.append(f"{role} on {used}")
            if hasattr(session, "disable_fallback"):
                session.disable_fallback()  # never let onnxruntime retry a failed GPU run on the CPU silently
            self.sessions[role] = session
            self._outputs[role] = [o.name for o in spec.outputs]
            self._run[role] = _fast_run(session, self._outputs[role])
        if misplaced:
            raise BackendUnavailable(f"backend {name}: onnxruntime put {', '.join(misplaced)}, not on "
                                     f"{PROVIDERS[name][0]} (its libraries could not be loaded)")

    def run(self, role: str, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self._run[role](feeds)

    def runner(self, role: str, outputs: list[str] | None = None):
        """A callable feeds -> outputs for `role` (all, or just the named `outputs`) with nothing looked up per call."""
        if outputs is None or list(outputs) == self._outputs[role]:
            return self._run[role]
        return _fast_run(self.sessions[role], list(outputs))

    def batch_range(self, role: str) -> tuple[int, int] | None:
        """(min, max) batch a call may carry, or None when any batch goes (CPU and CUDA providers)."""
        return self._profiles.get(role)

    def close(self) -> None:
        self.sessions.clear()
        self._run.clear()

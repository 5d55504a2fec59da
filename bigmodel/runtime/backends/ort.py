"""onnxruntime backend: one InferenceSession per role, built once at load with low-latency options."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

from bigmodel.errors import BackendUnavailable, BundleError, missing_package
from bigmodel.manifest import Manifest

# backend name -> onnxruntime providers, most preferred first
PROVIDERS = {
    "ort-cpu": ["CPUExecutionProvider"],
    "ort-cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "ort-trt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}
EXTRA = {"ort-cpu": "runtime", "ort-cuda": "gpu", "ort-trt": "gpu"}


def import_ort():
    try:
        import onnxruntime
    except ImportError as e:
        raise missing_package("onnxruntime", "runtime", "the ort backend") from e
    return onnxruntime


def physical_cores() -> int:
    """Physical cores this process may use (hyper-threads add little to GEMM-bound graphs)."""
    try:
        allowed = os.sched_getaffinity(0)
    except AttributeError:
        return os.cpu_count() or 1
    cores = set()
    for cpu in allowed:
        try:
            core = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology/core_id").read_text().strip()
            package = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology/physical_package_id").read_text().strip()
            cores.add((package, core))
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


class OrtBackend:
    """Sessions for every role of a bundle; `run` is thread-safe (onnxruntime sessions are)."""

    def __init__(self, bundle: Path, manifest: Manifest, name: str = "ort-cpu", threads: int | None = None,
                 fallback: bool = False, provider_options: dict | None = None):
        ort = import_ort()
        reason = unavailable_reason(name)
        if reason is not None:
            if not fallback or name == "ort-cpu":
                raise BackendUnavailable(f"backend {name}: {reason}")
            warnings.warn(f"backend {name} unavailable ({reason}); running on ort-cpu instead", stacklevel=3)
            name = "ort-cpu"
        self.name = name
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.intra_op_num_threads = threads or physical_cores()
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.log_severity_level = 3
        providers = [(p, (provider_options or {}).get(p, {})) for p in PROVIDERS[name]]
        self.sessions = {}
        self.outputs: dict[str, list[str]] = {}
        for role, spec in manifest.roles.items():
            try:
                session = ort.InferenceSession(str(bundle / spec.file), opts, providers=providers)
            except Exception as e:  # onnxruntime raises its own exception types
                first = str(e).splitlines()[0][:300]
                raise BundleError(f"onnxruntime cannot load {bundle / spec.file}: {first}") from e
            used, wanted = session.get_providers()[0], PROVIDERS[name][0]
            if used != wanted:
                msg = f"backend {name}: onnxruntime put {role} on {used}, not {wanted}"
                if not fallback:
                    raise BackendUnavailable(msg + " (pass fallback=True to accept that)")
                warnings.warn(msg, stacklevel=3)
            self.sessions[role] = session
            self.outputs[role] = [o.name for o in spec.outputs]

    def run(self, role: str, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self.sessions[role].run(self.outputs[role], feeds)

    def max_batch(self, role: str) -> int | None:
        return None

"""onnxruntime backend: one InferenceSession per role, built once at load with low-latency options.

Providers: `ort-cpu` (CPU), `ort-cuda` (CUDA), `ort-trt` (TensorRT, with its engine cache beside the
user's cache folder and the batch profile taken from the manifest). A session that onnxruntime puts
on another provider than the one asked for is an error (BackendUnavailable), never a silent fallback;
`load(..., fallback=True)` turns it into one warning and a CPU session.
"""

from __future__ import annotations

import base64
import functools
import os
import sys
import warnings
from pathlib import Path

import numpy as np

from bigmodel.errors import BackendUnavailable, BundleError, CheckFailed, missing_package
from bigmodel.manifest import BATCH, Manifest
from bigmodel.runtime.backends.ort_bound import bound_run, staged_run
from bigmodel.runtime.backends.ort_options import (
    PROVIDERS,
    TF32_ENV,
    providers_for,
    role_profile,
    tf32_environment,
)
from bigmodel.runtime.backends.ort_options import (
    trt_provider_options as trt_provider_options,  # re-exported: tests and callers reach it through this module
)


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


# A 131-byte ONNX graph (opset 17): y = Relu(x @ w), x (1, 2) float32, w = [[1, -2], [3, 4]]. Creating a
# session on it and running it is the only proof that a provider's libraries load and its kernels run
# (get_available_providers() lists what the wheel was built with, not what loads).
PROBE_GRAPH = base64.b64decode(
    "CAgSCGJpZ21vZGVsOm8KEQoBeAoBdxIBdCIGTWF0TXVsCgwKAXQSAXkiBFJlbHUSBXByb2JlKhsIAggCEAEiEAAAgD8AAADAAABAQAAAgEBCAXda"
    "EwoBeBIOCgwIARIICgIIAQoCCAJiEwoBeRIOCgwIARIICgIIAQoCCAJCBAoAEBE=")
PROBE_INPUT = np.array([[1.0, 1.0]], np.float32)
PROBE_OUTPUT = np.array([[4.0, 2.0]], np.float32)  # relu([1 + 3, -2 + 4])
STRICT_KEY = "session.disable_cpu_ep_fallback"  # onnxruntime: fail session creation if any node lands on CPU
DATA_MOVEMENT = ("MemcpyFromHost", "MemcpyToHost")  # inserted by onnxruntime between providers; not compute


def preload_cuda_libraries() -> str | None:
    """`onnxruntime.preload_dlls()` (1.21+) once per process, so a torch-free process finds cuDNN/cuBLAS.

    torch loads the same libraries when it is imported first, so nothing is done then. Returns
    what happened (None when nothing was tried), for doctor.
    """
    return _preload()


@functools.lru_cache(maxsize=1)
def _preload() -> str | None:
    if "torch" in sys.modules:
        return None
    ort = import_ort()
    preload = getattr(ort, "preload_dlls", None)
    if preload is None:
        return f"onnxruntime {ort.__version__} has no preload_dlls (1.21+); CUDA libraries come from the library path"
    try:
        preload()
    except Exception as e:  # a missing nvidia-* package or library: the session probe reports the consequence
        return f"onnxruntime.preload_dlls() failed: {str(e).splitlines()[0][:200] if str(e) else type(e).__name__}"
    return "onnxruntime.preload_dlls() done"


def unavailable_reason(name: str, device_id: int = 0) -> str | None:
    """None when `name` can run here (a session on a tiny graph was created and ran on it), else why not."""
    try:
        ort = import_ort()
    except BackendUnavailable as e:
        return str(e)
    wanted = PROVIDERS[name][0]
    available = ort.get_available_providers()
    if wanted not in available:
        from bigmodel.runtime.backends.registry import entry

        return (f"onnxruntime {ort.__version__} here has no {wanted} (it has {', '.join(available)}); "
                f"install it with pip install 'bigmodel[{entry(name).extra}]' on a machine with an NVIDIA GPU")
    if name == "ort-cpu":
        return None
    return probe(name, device_id)


def probe_backend(name: str, device_id: int = 0) -> str | None:
    """Registry probe: None when `name` can run here, else why not (GPU providers: a session really ran)."""
    return unavailable_reason(name, device_id)


ORT_DTYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
              "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(uint8)": "uint8", "tensor(bool)": "bool"}


def check_session_matches(session, spec, role: str, path: Path) -> None:
    """The graph's inputs and outputs are the manifest's (names, dtypes, fixed dims), before any run:
    a manifest that contradicts its graph (or a graph swapped for another) is a BundleError."""
    for kind, graph_side, listed in (("input", session.get_inputs(), spec.inputs),
                                     ("output", session.get_outputs(), spec.outputs)):
        graph = {t.name: t for t in graph_side}
        names = {t.name for t in listed}
        # every input fed, every listed output there (bundles of older versions list fewer outputs)
        if (names != set(graph)) if kind == "input" else not names <= set(graph):
            raise BundleError(f"{path}: the {role} graph's {kind}s are {sorted(graph)}; its manifest lists "
                              f"{sorted(names)} (a manifest that does not describe its graph)")
        for t in listed:
            if t.kind == "label" and np.dtype(t.dtype).kind not in "iu":
                continue  # the manifest's own rule refuses it, saying why (runtime.checks.Input)
            g = graph[t.name]
            dtype = ORT_DTYPES.get(g.type, g.type)
            dims = [d if isinstance(d, int) else "batch" for d in g.shape]
            fixed = [(a, b) for a, b in zip(dims, t.shape, strict=False) if isinstance(a, int) and isinstance(b, int)]
            if dtype != t.dtype or len(dims) != len(t.shape) or any(a != b for a, b in fixed):
                raise BundleError(f"{path}: {role} {kind} {t.name!r} is {dtype} {dims} in the graph; its manifest "
                                  f"says {t.dtype} {list(t.shape)} (a manifest that does not describe its graph)")


def create(name: str, bundle: Path, manifest: Manifest, options) -> OrtBackend:
    """Registry factory: one session per role (options: a registry.LoadOptions)."""
    return OrtBackend(bundle, manifest, name, threads=options.threads, device_id=options.device_id,
                      tf32=options.tf32, strict=options.strict)


@functools.cache
def probe(name: str, device_id: int = 0) -> str | None:
    """Create a session for provider `name` on PROBE_GRAPH and run it: None if it ran there, else the reason."""
    ort = import_ort()
    preload_cuda_libraries()
    wanted = PROVIDERS[name][0]
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.add_session_config_entry(STRICT_KEY, "1")  # a provider that cannot take the graph fails here
    try:
        with warnings.catch_warnings():  # onnxruntime warns before failing; the reason below says it once
            warnings.simplefilter("ignore")
            session = ort.InferenceSession(PROBE_GRAPH, opts, providers=[(wanted, {"device_id": str(device_id)})])
        used = session.get_providers()
        got = session.run(None, {"x": PROBE_INPUT})[0]
    except Exception as e:  # onnxruntime raises its own exception types
        text = " ".join(str(e).split())[:400] or type(e).__name__
        return f"onnxruntime lists {wanted} but cannot create a session on it (GPU {device_id}): {text}"
    if not used or used[0] != wanted:
        return f"onnxruntime lists {wanted} but put the probe session on {', '.join(used)} (its libraries did not load)"
    if not np.allclose(got, PROBE_OUTPUT):
        return f"{wanted} ran the probe graph but returned {got.tolist()}, expected {PROBE_OUTPUT.tolist()}"
    return None


def placement(events: list[dict]) -> dict[str, int]:
    """Nodes per provider from an onnxruntime profile (each node counted once, whatever the runs)."""
    seen: dict[str, str] = {}
    for e in events:
        args = e.get("args") or {}
        if e.get("cat") == "Node" and "provider" in args:
            seen[str(e.get("name", "")).removesuffix("_kernel_time")] = (args["provider"], args.get("op_name", ""))
    counts: dict[str, int] = {}
    for provider, _op in seen.values():
        counts[provider] = counts.get(provider, 0) + 1
    return counts


def misplaced_nodes(events: list[dict], allowed: tuple[str, ...]) -> list[str]:
    """'op on provider' for every compute node outside `allowed` (data-movement nodes excepted)."""
    out = []
    seen = set()
    for e in events:
        args = e.get("args") or {}
        name = str(e.get("name", "")).removesuffix("_kernel_time")
        if e.get("cat") != "Node" or "provider" not in args or name in seen:
            continue
        seen.add(name)
        if args["provider"] not in allowed and args.get("op_name") not in DATA_MOVEMENT:
            out.append(f"{args.get('op_name', name)} on {args['provider']}")
    return out


def profile_once(ort, path: str, opts, providers, feeds: dict[str, np.ndarray],
                 disabled: list[str] | None = None) -> list[dict]:
    """Run one profiled call on a fresh session and return onnxruntime's profile events (file removed)."""
    import json
    import tempfile

    prof = ort.SessionOptions()
    prof.graph_optimization_level = opts.graph_optimization_level
    prof.log_severity_level = 3
    if all(p != "CPUExecutionProvider" for p, _ in providers):
        prof.add_session_config_entry(STRICT_KEY, "1")
    with tempfile.TemporaryDirectory() as tmp:
        prof.enable_profiling = True
        prof.profile_file_prefix = os.path.join(tmp, "placement")
        session = ort.InferenceSession(path, prof, providers=providers, disabled_optimizers=disabled or [])
        session.run(None, feeds)
        with open(session.end_profiling(), encoding="utf-8") as f:
            return json.load(f)


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


# QDQ propagation copies a Q/DQ pair across shape-only operators (Reshape, Transpose) next to a graph output
# and keeps both: two more passes over an int8 decoder's images that change no value (batch 1024: 10% of its time).
DISABLED_OPTIMIZERS = ["QDQPropagationTransformer"]
# An int8 graph's last MatMul + Add (float output, `bigmodel.export.int8.terminal_gemms`) runs as one
# MatMulIntegerToFloat kernel; MatMulAddFusion would first turn it back into a Gemm, which onnxruntime
# runs in float when no Q follows (VAE decoder, batch 1024: 1.45 ms against 1.77 ms with a QGemm + DQ).
INT8_DISABLED_OPTIMIZERS = [*DISABLED_OPTIMIZERS, "MatMulAddFusion"]


def disabled_optimizers(precision: str) -> list[str]:
    """The graph optimizers bigmodel's sessions turn off for a bundle of `precision`."""
    return INT8_DISABLED_OPTIMIZERS if precision == "int8" else DISABLED_OPTIMIZERS


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
    """Sessions for every role of a bundle; `run` is thread-safe (onnxruntime sessions are).

    device_id: the GPU for the CUDA and TensorRT providers. tf32: let fp32 MatMul/Conv use TF32
    (off by default: onnxruntime's CUDA provider turns it on unless told, TensorRT too).
    strict: no CPU provider to fall back to (`session.disable_cpu_ep_fallback`), and one profiled run
    per role counts the nodes placed on each provider; any compute node off the asked-for provider
    is a CheckFailed. `settings` says what was used (reported by bench and parity).
    """

    def __init__(self, bundle: Path, manifest: Manifest, name: str = "ort-cpu", threads: int | None = None,
                 provider_options: dict | None = None, device_id: int = 0, tf32: bool = False, strict: bool = False):
        if name not in PROVIDERS:
            raise BackendUnavailable(f"unknown onnxruntime backend {name!r}; expected one of {', '.join(PROVIDERS)}")
        ort = import_ort()
        reason = unavailable_reason(name, device_id)
        if reason is not None:
            raise BackendUnavailable(f"backend {name}: {reason}")
        if manifest.precision == "bf16":
            raise BackendUnavailable(f"backend {name}: a bf16 bundle runs on ov-cpu (OpenVINO's bf16 inference "
                                     "precision); onnxruntime has no bf16 kernels for its fp32 graphs")
        self.name = name
        self.threads = threads or physical_cores()
        tf32_used = tf32_environment(name, tf32)  # before the first session: TensorRT reads it at build time
        opts = session_options(ort, self.threads)
        if strict and name != "ort-cpu":
            opts.add_session_config_entry(STRICT_KEY, "1")
        self.sessions = {}
        self._run: dict[str, object] = {}
        self._runners: dict[str, object] = {}  # the same calls for the Model's prepared arrays
        self._run_options = ort.RunOptions()
        self._outputs: dict[str, list[str]] = {}
        self._inputs: dict[str, list[str]] = {}
        self._profiles: dict[str, tuple[int, int]] = {}
        self.placement: dict[str, dict[str, int]] = {}
        misplaced = []
        for role, spec in manifest.roles.items():
            path = bundle / spec.file
            form = None
            if name == "ort-trt" and manifest.precision == "int8":
                from bigmodel.runtime.backends.graph_form import graph_form

                form = graph_form(path)
            chain = providers_for(name, manifest, role, tf32=tf32, device_id=device_id, strict=strict,
                                  int8_form=form)
            extra = provider_options or {}
            chain = [(p, {**o, **dict(extra.get(p, {}))}) for p, o in chain]
            if name == "ort-trt":
                trt_options = chain[0][1]
                try:
                    Path(str(trt_options["trt_engine_cache_path"])).mkdir(parents=True, exist_ok=True)
                except OSError:  # no writable cache folder: build engines at every load instead
                    for key in ("trt_engine_cache_enable", "trt_timing_cache_enable"):
                        trt_options[key] = False
                p = role_profile(manifest, role)
                self._profiles[role] = (p["min"], p["max"])
            try:
                session = ort.InferenceSession(str(path), opts, providers=chain,
                                               disabled_optimizers=disabled_optimizers(manifest.precision))
            except Exception as e:  # onnxruntime raises its own exception types
                first = str(e).splitlines()[0][:300]
                if strict and name != "ort-cpu":
                    raise CheckFailed(f"strict: {name} cannot hold every node of {role} without the CPU provider: "
                                      f"{first}") from e
                raise BundleError(f"onnxruntime cannot load {path}: {first}") from e
            check_session_matches(session, spec, role, path)
            used = session.get_providers()[0]
            if used != PROVIDERS[name][0]:
                misplaced.append(f"{role} on {used}")
            if strict:
                lo = self._profiles.get(role, (1, 1))[0]
                feeds = {t.name: np.zeros([lo if d == BATCH else int(d) for d in t.shape], t.dtype)
                         for t in spec.inputs}
                events = profile_once(ort, str(path), opts, chain, feeds, disabled_optimizers(manifest.precision))
                self.placement[role] = placement(events)
                off = misplaced_nodes(events, (PROVIDERS[name][0],))
                if off:
                    raise CheckFailed(f"strict: {name} placed {len(off)} node(s) of {role} off "
                                      f"{PROVIDERS[name][0]}: {', '.join(off[:8])} (placement {self.placement[role]})")
            if hasattr(session, "disable_fallback"):
                session.disable_fallback()  # never let onnxruntime retry a failed GPU run on the CPU silently
            self.sessions[role] = session
            self._outputs[role] = [o.name for o in spec.outputs]
            self._inputs[role] = [t.name for t in spec.inputs]
            self._run[role] = _fast_run(session, self._outputs[role])
            self._runners[role] = self._compiled(role, self._outputs[role], self._run[role])
        if misplaced:
            raise BackendUnavailable(f"backend {name}: onnxruntime put {', '.join(misplaced)}, not on "
                                     f"{PROVIDERS[name][0]} (its libraries could not be loaded)")
        self.settings = {
            "device_id": device_id if name != "ort-cpu" else None, "tf32": tf32_used, "strict": strict,
            "tf32_env": os.environ.get(TF32_ENV), "placement": self.placement or None,
            "int8_enable": (bool(chain[0][1].get("trt_int8_enable")) if name == "ort-trt" else None),
        }

    def run(self, role: str, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self._run[role](feeds)

    def runner(self, role: str, outputs: list[str] | None = None):
        """A callable feeds -> outputs for `role` (all, or just the named `outputs`) with nothing looked up per call.

        Its feeds must be C-contiguous arrays of the graph's dtypes (the Model's checked inputs): on the
        CPU provider small batches go through output buffers bound once (`ort_bound`).
        """
        if outputs is None or list(outputs) == self._outputs[role]:
            return self._runners[role]
        return self._compiled(role, list(outputs), _fast_run(self.sessions[role], list(outputs)))

    def staged_runner(self, role: str, outputs: list[str] | None = None):
        """x -> [outputs] (all, or the named ones), or None: one single-input float32 role's staged fast path.

        On the CPU provider, small batches of a C-contiguous float32 array of the graph's shape run on
        an input and outputs bound once (`ort_bound.staged_run`); a call answers None when it did not
        run there or a value came back non-finite (the Model then takes its checked general path).
        None instead of a runner where this does not apply (other providers, several inputs, other dtypes).
        """
        if self.name != "ort-cpu" or len(self._inputs[role]) != 1:
            return None
        return staged_run(self.sessions[role], self._inputs[role][0], list(outputs or self._outputs[role]),
                          self._run_options)

    def _compiled(self, role: str, outputs: list[str], plain):
        if self.name != "ort-cpu":
            return plain
        return bound_run(self.sessions[role], outputs, plain, self._run_options)

    def batch_range(self, role: str) -> tuple[int, int] | None:
        """(min, max) batch a call may carry, or None when any batch goes (CPU and CUDA providers)."""
        return self._profiles.get(role)

    def close(self) -> None:
        self.sessions.clear()
        self._run.clear()
        self._runners.clear()

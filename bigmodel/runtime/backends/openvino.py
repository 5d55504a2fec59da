"""OpenVINO backend (`ov-cpu`): the bundle's ONNX graphs compiled once per role by OpenVINO's CPU plugin.

OpenVINO reads ONNX directly (external data included), so nothing is converted or cached on disk.
Settings per compiled model: the LATENCY performance hint (one stream using every thread: a
synchronous call is what `Model` makes), INFERENCE_NUM_THREADS = `threads` (default: the physical
cores), INFERENCE_PRECISION_HINT = f32, so that CPUs with bf16/AMX units do not silently run an
fp32 bundle in bf16 (OpenVINO's default there) -- bf16 only for a bf16 bundle, and only on a CPU
with bf16 arithmetic -- and no thread pinning (see `config`). With the
THROUGHPUT hint (benchmarks/engines.py compares it) one call's batch is split across the compiled
model's optimal number of infer requests, run at once: one per stream.

OpenVINO gives a tensor several names (an ONNX output that passes through Identity keeps the names
of both ends), so outputs are found by the manifest's ONNX output name -- `compiled.output(name)` --
never by `get_any_name()`, which may return an internal tensor's name.
"""

from __future__ import annotations

import functools
import os
import tempfile
import threading
from pathlib import Path

import numpy as np

from bigmodel.errors import BackendUnavailable, missing_package
from bigmodel.manifest import Manifest

HINT = "LATENCY"


def import_openvino():
    try:
        import openvino
    except ImportError as e:
        raise missing_package("openvino", "openvino", "the ov-cpu backend") from e
    return openvino


@functools.cache
def core():
    """One OpenVINO Core per process (each Core loads its plugins again)."""
    return import_openvino().Core()


def version() -> str | None:
    try:
        return import_openvino().__version__
    except BackendUnavailable:
        return None


def config(threads: int | None, hint: str = HINT, inference: str = "f32") -> dict[str, str]:
    """compile_model properties: performance hint, thread count, fp32 execution, no thread pinning.

    Pinning each inference thread to a core (OpenVINO's default on Linux) made the MLP VAE decoder
    8x slower at batch 64 (12.0 vs 1.56 ms, 2 threads) on a 2-core machine that other processes
    shared; unpinned, the scheduler moves a thread off a busy core.
    """
    from bigmodel.runtime.backends.ort import physical_cores

    return {"PERFORMANCE_HINT": hint, "INFERENCE_NUM_THREADS": str(threads or physical_cores()),
            "INFERENCE_PRECISION_HINT": inference, "ENABLE_CPU_PINNING": "NO"}


def bf16_reason() -> str | None:
    """None when OpenVINO's CPU plugin runs bf16 arithmetic here (avx512_bf16 or AMX), else why not: on other
    CPUs it ignores the bf16 hint and runs fp32, which a bf16 bundle must not pass off as bf16."""
    caps = list(core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
    if "BF16" in caps:
        return None
    return f"this CPU has no bf16 arithmetic (OpenVINO's CPU capabilities: {', '.join(caps)})"


def probe_backend(name: str = "ov-cpu", device_id: int = 0) -> str | None:
    """None when OpenVINO's CPU plugin compiled and ran the probe graph here, else why not."""
    try:
        import_openvino()
    except BackendUnavailable as e:
        return str(e)
    return _probe_cpu()


@functools.cache
def _probe_cpu() -> str | None:
    ov = import_openvino()
    from bigmodel.runtime.backends.ort import PROBE_GRAPH, PROBE_INPUT, PROBE_OUTPUT

    try:
        c = core()
        if "CPU" not in c.available_devices:
            return f"OpenVINO {ov.__version__} lists no CPU device (it has {', '.join(c.available_devices) or 'none'})"
        with tempfile.TemporaryDirectory() as tmp:  # read_model takes a path for ONNX
            path = os.path.join(tmp, "probe.onnx")
            with open(path, "wb") as f:
                f.write(PROBE_GRAPH)
            compiled = c.compile_model(c.read_model(path), "CPU", config(1))
        got = compiled({"x": PROBE_INPUT})[compiled.output("y")]
    except Exception as e:  # OpenVINO raises RuntimeError with its own text
        return f"OpenVINO {ov.__version__} cannot compile and run a graph on its CPU plugin: " \
               f"{' '.join(str(e).split())[:300] or type(e).__name__}"
    if not np.allclose(got, PROBE_OUTPUT):
        return f"OpenVINO ran the probe graph but returned {np.asarray(got).tolist()}, expected {PROBE_OUTPUT.tolist()}"
    return None


def create(name: str, bundle: Path, manifest: Manifest, options) -> OpenVINOBackend:
    """Registry factory (options: a registry.LoadOptions; threads is the only one that applies)."""
    return OpenVINOBackend(bundle, manifest, threads=options.threads)


class _Role:
    """One compiled model; infer requests per calling thread (a request is not thread-safe).

    split: how many infer requests one call's batch is divided across, run at once (the THROUGHPUT
    hint's streams each run one request on their share of the threads); 1 for the LATENCY hint.
    """

    def __init__(self, compiled, inputs: list[str], outputs: list[str], split: int = 1):
        self.compiled = compiled
        self.in_ports = [compiled.input(n) for n in inputs]
        self.out_ports = [compiled.output(n) for n in outputs]  # by ONNX name: see the module docstring
        self.input_names = inputs
        self.output_names = outputs
        self.split = max(1, int(split))
        self.local = threading.local()

    def requests(self) -> list:
        reqs = getattr(self.local, "requests", None)
        if reqs is None:
            reqs = self.local.requests = [self.compiled.create_infer_request() for _ in range(self.split)]
        return reqs

    def runner(self, outputs: list[str]):
        """feeds -> [outputs] (fresh arrays), the ports looked up once."""
        ports = [self.out_ports[self.output_names.index(n)] for n in outputs]
        in_ports = list(zip(self.input_names, self.in_ports, strict=True))
        requests, split = self.requests, self.split
        from openvino import Tensor

        def run(feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
            reqs = requests()
            n = len(next(iter(feeds.values())))
            if split == 1 or n < 2 * split:
                req = reqs[0]
                for name, port in in_ports:
                    req.set_tensor(port, Tensor(feeds[name], shared_memory=True))  # no copy: x is C-contiguous
                req.infer()
                return [req.get_tensor(p).data.copy() for p in ports]  # the request's buffers are reused
            edges = [n * i // split for i in range(split + 1)]
            for i, req in enumerate(reqs):  # rows edges[i]:edges[i + 1] of a C-contiguous batch: contiguous too
                for name, port in in_ports:
                    req.set_tensor(port, Tensor(feeds[name][edges[i]:edges[i + 1]], shared_memory=True))
                req.start_async()
            for req in reqs:
                req.wait()
            return [np.concatenate([req.get_tensor(p).data for req in reqs]) for p in ports]

        return run


class OpenVINOBackend:
    """Every role compiled once at load on OpenVINO's CPU plugin; `run` returns outputs in the manifest's order."""

    name = "ov-cpu"

    def __init__(self, bundle: Path, manifest: Manifest, threads: int | None = None, hint: str = HINT):
        reason = probe_backend(self.name)
        if reason is not None:
            raise BackendUnavailable(f"backend ov-cpu: {reason}")
        c = core()
        inference = "bf16" if manifest.precision == "bf16" else "f32"
        if inference == "bf16" and (why := bf16_reason()) is not None:
            raise BackendUnavailable(f"backend ov-cpu: a bf16 bundle, but {why}")
        props = config(threads, hint, inference)
        self._roles: dict[str, _Role] = {}
        self._run: dict[str, object] = {}
        for role, spec in manifest.roles.items():
            path = bundle / spec.file
            try:
                compiled = c.compile_model(c.read_model(str(path)), "CPU", props)
                split = compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS") if hint == "THROUGHPUT" else 1
                r = _Role(compiled, [t.name for t in spec.inputs], [t.name for t in spec.outputs], split)
            except Exception as e:  # OpenVINO raises RuntimeError with its own text
                # an operator OpenVINO lacks (a contrib op, a newer opset): this backend cannot serve the
                # bundle, which parity and bench report as skipped with this reason
                first = " ".join(str(e).split())[:300]
                raise BackendUnavailable(f"backend ov-cpu: OpenVINO {version()} cannot compile {path.name}: "
                                         f"{first}") from e
            self._roles[role] = r
            self._run[role] = r.runner(r.output_names)
        self.settings = {"openvino": version(), **props,
                         "execution_devices": str(next(iter(self._roles.values())).compiled.get_property(
                             "EXECUTION_DEVICES")) if self._roles else None}

    def run(self, role: str, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self._run[role](feeds)

    def runner(self, role: str, outputs: list[str] | None = None):
        """A callable feeds -> outputs for `role` (all, or just the named `outputs`)."""
        r = self._roles[role]
        if outputs is None or list(outputs) == r.output_names:
            return self._run[role]
        return r.runner(list(outputs))

    def batch_range(self, role: str) -> None:
        return None

    def close(self) -> None:
        self._roles.clear()
        self._run.clear()

"""`bigmodel serve`: every role of a bundle as a model of a real Triton Inference Server, through PyTriton.

bigmodel grows no HTTP server of its own: Triton answers HTTP/gRPC (KServe v2 protocol), batches
requests across callers (its dynamic batcher), reports health/readiness and Prometheus metrics.
Each Triton model's callable is the bigmodel runtime (`Model.run`, `Model.sample`), so the runtime's
input checks give the error text a bad request gets back.

>>> from bigmodel.serve import ServeOptions, serve
>>> serve("runs/vae/bundle", ServeOptions(http_port=8000))   # blocks until Ctrl-C or SIGTERM
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bigmodel.errors import BackendUnavailable, BigmodelError, InputError, missing_package
from bigmodel.serve.environment import (  # noqa: F401  (the package's API)
    apply_libdir_fix,
    interpreter_libpython,
    libdir_fix,
    numpy_clash,
    status,
    stub_libpython,
    stub_path,
)
from bigmodel.serve.processes import Child, _cmdline, descendants, free_ports, launched, wait_gone  # noqa: F401

SAMPLE_MODEL = "sample"  # the extra model of every bundle: (n, seed) -> n images from the prior
# Defaults measured with benchmarks/serve_load.py (docs/serve.md): 8 batch-1 clients on 2 cores.
MAX_BATCH = 64
QUEUE_DELAY_US = 500


@dataclass(frozen=True)
class ServeOptions:
    """Where Triton listens and how it batches; how the runtime runs each role."""

    host: str = "127.0.0.1"
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    max_batch: int = MAX_BATCH
    queue_delay_us: int = QUEUE_DELAY_US
    batching: bool = True
    backend: str = "auto"
    device: str = "cpu"
    threads: int | None = None
    log_verbose: int = 0


def check_options(o: ServeOptions) -> None:
    """Every option in range, or InputError naming it (before the server starts)."""
    ports = {"--http-port": o.http_port, "--grpc-port": o.grpc_port, "--metrics-port": o.metrics_port}
    for flag, port in ports.items():
        if not 1 <= port <= 65535:
            raise InputError(f"{flag} must be a port number 1..65535; got {port}")
    if len(set(ports.values())) < 3:
        raise InputError(f"--http-port, --grpc-port and --metrics-port must differ; got {list(ports.values())}")
    if o.max_batch < 1:
        raise InputError(f"--max-batch must be >= 1; got {o.max_batch}")
    if o.queue_delay_us < 0:
        raise InputError(f"--queue-delay-us must be >= 0; got {o.queue_delay_us}")


# -- what each Triton model is --------------------------------------------------------------------------------
def _pytriton():
    try:
        import pytriton.model_config as mc
        import pytriton.triton as tr
    except ImportError as e:
        raise missing_package("nvidia-pytriton", "serve", "bigmodel serve") from e
    return mc, tr


def tensors(specs, batched: bool) -> list:
    """PyTriton Tensors for manifest TensorSpecs: the manifest's dtype, every non-batch axis -1.

    Axes are left open (-1) so a wrongly shaped request reaches the runtime, whose check names the shape it
    expected; Triton's batcher only joins requests of equal shapes, so a bad one is never batched with good ones.
    """
    mc, _ = _pytriton()
    out = []
    for t in specs:
        rank = len(t.shape) - 1 if batched else len(t.shape)
        out.append(mc.Tensor(name=t.name, dtype=np.dtype(t.dtype), shape=(-1,) * rank))
    return out


def split_outputs(outs: dict[str, np.ndarray], sizes: list[int]) -> list[dict[str, np.ndarray]]:
    """One batched result {name: (sum(sizes), ...)} -> one dict per request, in order."""
    if len(sizes) == 1:
        return [outs]
    bounds = np.cumsum(sizes)[:-1]
    parts = {name: np.split(a, bounds) for name, a in outs.items()}
    return [{name: p[i] for name, p in parts.items()} for i in range(len(sizes))]


class RequestError(Exception):
    """A bad request's error as its client sees it: `Kind: message`, without the server's traceback.

    PyTriton formats a callable's exception with `traceback.format_exception(None, e, e.__traceback__)`;
    reading no traceback here keeps server paths and code out of the answer.
    """

    @property
    def __traceback__(self):
        return None

    @__traceback__.setter
    def __traceback__(self, _value) -> None:
        pass


def answered(infer: Callable[[list], list]) -> Callable[[list], list]:
    """`infer` whose BigmodelErrors (the runtime's input checks) become RequestErrors: one clean line back."""
    def call(requests: list) -> list:
        try:
            return infer(requests)
        except BigmodelError as e:
            raise RequestError(f"{type(e).__name__}: {e}") from None

    return call


def role_callable(model, role: str) -> Callable[[list], list[dict[str, np.ndarray]]]:
    """Triton requests (a list of {input name: array}, batched by Triton) -> one output dict per request,
    all run as one `model.run(role, feeds)` call on the joined inputs."""
    run = model.run

    def infer(requests: list) -> list[dict[str, np.ndarray]]:
        feeds = [dict(r.items()) for r in requests]
        if len(feeds) == 1:
            return [run(role, feeds[0])]
        sizes = [len(next(iter(f.values()))) for f in feeds]
        joined = {k: np.concatenate([f[k] for f in feeds]) for k in feeds[0]}
        return split_outputs(run(role, joined), sizes)

    return infer


def sample_callable(model) -> Callable[[list], list[dict[str, np.ndarray]]]:
    """Requests {n: (1,) int64, seed: (1,) int64} -> {image output name: (n, C, H, W)} from `model.sample`."""
    out_name = model.manifest.roles[image_role(model)].outputs[0].name

    def one(r) -> dict[str, np.ndarray]:
        n, seed = (_scalar(r, k) for k in ("n", "seed"))
        return {out_name: model.sample(n, seed=seed)}

    def infer(requests: list) -> list[dict[str, np.ndarray]]:
        return [one(r) for r in requests]

    return infer


def _scalar(request, name: str) -> int:
    a = np.asarray(request[name])
    if a.size != 1:
        raise InputError(f"{SAMPLE_MODEL}: expected {name} as one int64 value, shape (1,); got shape {a.shape}")
    return int(a.reshape(-1)[0])


def image_role(model) -> str:
    return next(r for r in ("decoder", "generator") if r in model.roles)


@dataclass(frozen=True)
class Binding:
    """One Triton model: its name, callable, inputs, outputs and whether Triton batches it."""

    name: str
    infer: Callable
    inputs: list
    outputs: list
    batched: bool


def bindings(model) -> list[Binding]:
    """Every role of the bundle as a Triton model named after it, plus `sample` (n, seed) -> images."""
    out = [Binding(role, answered(role_callable(model, role)), spec.inputs, spec.outputs, True)
           for role, spec in model.manifest.roles.items()]
    from bigmodel.manifest import TensorSpec

    counts = [TensorSpec("n", "int64", [1], "tensor"), TensorSpec("seed", "int64", [1], "tensor")]
    image = model.manifest.roles[image_role(model)].outputs[:1]
    return [*out, Binding(SAMPLE_MODEL, answered(sample_callable(model)), counts,
                          [TensorSpec(image[0].name, image[0].dtype, ["batch", *image[0].shape[1:]])], False)]


def bind_all(triton, model, o: ServeOptions) -> list[str]:
    """Bind every model of `bindings(model)` to a started PyTriton `triton`; returns their names."""
    mc, _ = _pytriton()
    for b in bindings(model):
        config = (mc.ModelConfig(max_batch_size=o.max_batch, batcher=mc.DynamicBatcher(
                      max_queue_delay_microseconds=o.queue_delay_us)) if b.batched and o.batching else
                  mc.ModelConfig(batching=b.batched, max_batch_size=o.max_batch if b.batched else 0))
        batched = b.batched
        triton.bind(model_name=b.name, infer_func=b.infer, inputs=tensors(b.inputs, batched),
                    outputs=tensors(b.outputs, batched), config=config, strict=False)
    return [b.name for b in bindings(model)]


# -- running it --------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt in the main thread, so both stop through the same clean path."""
    def handler(signum, frame):
        raise KeyboardInterrupt

    try:
        old = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


@dataclass(frozen=True)
class Started:
    """What `serve` tells its `on_ready` callback: the endpoints and the models, once all are loaded."""

    http: str
    grpc: str
    metrics: str
    models: list[str]
    libdir_fix: str | None
    workspace: Path


def serve(bundle: str | os.PathLike, o: ServeOptions = ServeOptions(),
          on_ready: Callable[[Started], None] | None = None) -> None:
    """Serve the bundle under Triton until Ctrl-C or SIGTERM; then stop the server and remove its workspace.

    The bundle is loaded (and checked) by `bigmodel.runtime.load` before Triton starts.
    """
    check_options(o)
    from bigmodel.runtime import load

    _, tr = _pytriton()
    clash = numpy_clash()
    if clash:
        raise BackendUnavailable(clash)
    model = load(bundle, backend=o.backend, device=o.device, threads=o.threads)
    fix = apply_libdir_fix()
    workspace = Path(tempfile.mkdtemp(prefix="bigmodel-serve-"))
    config = tr.TritonConfig(http_address=o.host, http_port=o.http_port, grpc_address=o.host,
                             grpc_port=o.grpc_port, metrics_address=o.host, metrics_port=o.metrics_port,
                             allow_gpu_metrics=False, log_verbose=o.log_verbose, exit_timeout_secs=5)
    server: dict[int, str] = {}
    try:
        with _sigterm_as_interrupt():
            try:
                with tr.Triton(config=config, workspace=workspace / "pytriton") as triton:
                    names = bind_all(triton, model, o)
                    server = {p: c for p in descendants(os.getpid()) if (c := _cmdline(p)) and "triton" in c}
                    if on_ready is not None:
                        on_ready(Started(f"http://{o.host}:{o.http_port}", f"{o.host}:{o.grpc_port}",
                                         f"http://{o.host}:{o.metrics_port}/metrics", names, fix, workspace))
                    triton.serve()  # returns on Ctrl-C (PyTriton catches it) or when the server dies
            except KeyboardInterrupt:
                pass
            except BigmodelError:
                raise
            except Exception as e:  # PyTriton's start-up failures (a port in use, a model that fails to load)
                raise InputError(f"Triton did not start: {type(e).__name__}: {e}") from e
    finally:
        wait_gone(server, 30.0)
        model.close()
        shutil.rmtree(workspace, ignore_errors=True)

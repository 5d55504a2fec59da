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
import subprocess
import sysconfig
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bigmodel.errors import BackendUnavailable, BigmodelError, InputError, missing_package

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


# -- the LIBDIR fix ---------------------------------------------------------------------------------------------
def interpreter_libpython() -> Path | None:
    """This interpreter's shared libpython (LIBDIR/INSTSONAME), or None (a static build: nothing to fix)."""
    libdir, soname = sysconfig.get_config_var("LIBDIR"), sysconfig.get_config_var("INSTSONAME")
    if not libdir or not soname or not sysconfig.get_config_var("Py_ENABLE_SHARED"):
        return None
    f = Path(libdir) / soname
    return f if f.is_file() else None


def stub_path() -> Path | None:
    """PyTriton's Python-backend stub for this interpreter's version, or None without PyTriton."""
    try:
        from pytriton.utils.distribution import get_stub_path
    except ImportError:
        return None
    import sys

    p = Path(get_stub_path(f"{sys.version_info[0]}.{sys.version_info[1]}"))
    return p if p.is_file() else None


def stub_libpython(stub: Path, env: dict[str, str] | None = None) -> Path | None:
    """The libpython the dynamic loader gives `stub` (read off `ldd`), or None where ldd cannot say."""
    try:
        out = subprocess.run(["ldd", str(stub)], capture_output=True, text=True, timeout=20,
                             env=env if env is not None else dict(os.environ)).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    for line in out.splitlines():
        name, _, target = line.strip().partition(" => ")
        if name.startswith("libpython"):
            where = target.split(" (")[0].strip()
            return Path(where).resolve() if where.startswith("/") else Path("not found")
    return None


def libdir_fix() -> str | None:
    """The LD_LIBRARY_PATH entry the stub needs, or None where it already links this interpreter's libpython.

    PyTriton's stub links `libpython3.X.so`; where the loader finds another build of it (the system's,
    while this interpreter is pyenv's or conda's), models fail to load with `'_thread.RLock' object has no
    attribute '_recursion_count'`. Putting this interpreter's LIBDIR first fixes it.
    """
    own, stub = interpreter_libpython(), stub_path()
    if own is None or stub is None:
        return None
    linked = stub_libpython(stub)
    if linked is not None and linked == own.resolve():
        return None
    return str(own.parent)


def apply_libdir_fix() -> str | None:
    """Put this interpreter's LIBDIR first on LD_LIBRARY_PATH where the stub needs it (PyTriton hands
    its environment to tritonserver and the stub); returns the directory added, or None."""
    libdir = libdir_fix()
    if libdir is not None:
        old = os.environ.get("LD_LIBRARY_PATH", "")
        os.environ["LD_LIBRARY_PATH"] = libdir + (os.pathsep + old if old else "")
    return libdir


def numpy_clash() -> str | None:
    """Why PyTriton cannot run with this numpy, or None: nvidia-pytriton 0.7 declares numpy < 2 and, with
    numpy 2, hands the callables empty arrays (measured: `cannot reshape array of size 0`)."""
    import importlib.metadata as md

    try:
        pytriton = md.version("nvidia-pytriton")
    except md.PackageNotFoundError:
        return None
    if int(np.__version__.split(".")[0]) >= 2 and tuple(int(p) for p in pytriton.split(".")[:2]) < (0, 8):
        return (f"nvidia-pytriton {pytriton} needs numpy < 2 and this environment has numpy {np.__version__}; "
                "install the serve extra in an environment of its own: pip install 'bigmodel[serve]' "
                "(it brings numpy < 2 with the runtime, no torch)")
    return None


def status() -> tuple[str | None, str]:
    """(nvidia-pytriton's version or None, one line for `bigmodel doctor`: the LIBDIR fix and numpy)."""
    import importlib.metadata as md

    try:
        version = md.version("nvidia-pytriton")
    except md.PackageNotFoundError:
        return None, "not installed (bigmodel serve needs it: pip install 'bigmodel[serve]')"
    clients = [m for m in ("tritonclient.http", "tritonclient.grpc") if _importable(m)]
    fix = libdir_fix()
    line = (f"for bigmodel serve; LIBDIR fix applies (the stub would link another libpython; serve puts {fix} "
            "first on LD_LIBRARY_PATH)" if fix else "for bigmodel serve; LIBDIR fix not needed (the stub links "
            "this interpreter's libpython)")
    line += f"; clients: {', '.join(clients) or 'none (pip install tritonclient[http,grpc])'}"
    clash = numpy_clash()
    return version, line + (f"; BROKEN: {clash}" if clash else "")


def _importable(name: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


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


def descendants(pid: int) -> list[int]:
    """Process ids under `pid` (children, theirs, ...), read from /proc; [] where there is no /proc."""
    parents: dict[int, int] = {}
    with contextlib.suppress(OSError):
        for d in Path("/proc").iterdir():
            if d.name.isdigit():
                with contextlib.suppress(OSError, IndexError, ValueError):
                    parents[int(d.name)] = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        kids = [c for c, pp in parents.items() if pp == p]
        found += kids
        todo += kids
    return found


def _cmdline(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text(errors="replace")
    except OSError:
        return None


def wait_gone(procs: dict[int, str], timeout: float) -> None:
    """Wait up to `timeout` s until none of `procs` (pid -> command line) runs any more: Triton's Python stubs
    finish their own clean-up after tritonserver exits."""
    import time

    deadline = time.monotonic() + timeout
    while any(_cmdline(p) == cmd for p, cmd in procs.items()) and time.monotonic() < deadline:
        time.sleep(0.1)


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


# -- a server in a child process (tests, benchmarks/serve_load.py, your own integration tests) ------------------
def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """n distinct ports free on `host` now (the OS picks them: parallel test workers never collide)."""
    import socket

    socks = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(n)]
    try:
        for s in socks:
            s.bind((host, 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclass
class Child:
    """A `bigmodel serve` child process and where it listens."""

    proc: subprocess.Popen
    http: str  # host:port, as tritonclient.http takes it
    grpc: str
    metrics: str
    log: Path

    def descendants(self) -> list[int]:
        """Process ids under the child (tritonserver and its Python stubs), read from /proc."""
        return descendants(self.proc.pid)

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM, then wait up to `timeout` s (SIGKILL after that); the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode


@contextlib.contextmanager
def launched(bundle: str | os.PathLike, *args: str, log: Path, timeout: float = 180.0,
             env: dict[str, str] | None = None, python: str | None = None) -> Iterator[Child]:
    """`bigmodel serve BUNDLE ARGS` on free 127.0.0.1 ports, once it prints "ready"; stopped (SIGTERM) on exit.

    `python`: the interpreter to run it with (default this one; the serve extra may live in its own venv).
    Its stdout and stderr go to `log`; InputError with the log's tail if it exits or is not ready in `timeout` s.
    """
    import sys
    import time

    http, grpc, metrics = free_ports(3)
    cmd = [python or sys.executable, "-m", "bigmodel", "serve", str(bundle), "--host", "127.0.0.1",
           "--http-port", str(http), "--grpc-port", str(grpc), "--metrics-port", str(metrics), *args]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    child = Child(proc, f"127.0.0.1:{http}", f"127.0.0.1:{grpc}", f"127.0.0.1:{metrics}", Path(log))
    try:
        deadline = time.monotonic() + timeout
        while b"\nready (" not in Path(log).read_bytes():
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = Path(log).read_text(errors="replace")[-3000:]
                raise InputError(f"bigmodel serve {'exited' if proc.poll() is not None else 'was not ready'} "
                                 f"({' '.join(cmd)}); its log ends:\n{tail}")
            time.sleep(0.2)
        yield child
    finally:
        child.stop()

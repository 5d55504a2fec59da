"""One adapter per backend: `preflight()` (untimed checks), `open()` (timed cold load), `runner(role, feeds)`.

`TorchAdapter` runs the checkpoint's PyTorch model eagerly (or replayed as CUDA graphs);
`CompiledTorchAdapter` the same model through Inductor: `torch.compile` (torch-compile,
torch-compile-max) or torch.export + an AOTInductor package (aoti); `RuntimeAdapter` runs a
`bigmodel.runtime` backend through `load` + `Model.run`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bigmodel.errors import BackendUnavailable
from bigmodel.manifest import BATCH, Manifest
from bigmodel.runtime.backends import registry

if TYPE_CHECKING:
    from bigmodel.bench.run import BenchSettings

# the torch side: PyTorch itself running the bundle's float32 reference, eager, as CUDA graphs or compiled by Inductor
COMPILE_MODES = {"torch-compile": "default", "torch-compile-max": "max-autotune-no-cudagraphs"}
COMPILED_BACKENDS = (*COMPILE_MODES, "aoti")
TORCH_BACKENDS = ("torch", "torch-cudagraph", *COMPILED_BACKENDS)
RUNTIME_BACKENDS = registry.NAMES
ALL_BACKENDS = TORCH_BACKENDS + RUNTIME_BACKENDS
# cpu: torch eager and every CPU backend (those not installed are reported as skipped); cuda: all but the
# Inductor forms, which take seconds to minutes to build and are asked for by name
DEFAULT_BACKENDS = {"cpu": ("torch", *registry.names_for("cpu")),
                    "cuda": tuple(b for b in ALL_BACKENDS if b not in COMPILED_BACKENDS)}


def role_inputs(manifest: Manifest, role: str, batch: int, seed: int) -> dict[str, np.ndarray]:
    """Feeds for one role at one batch size: images uniform in their range (the data range unless declared),
    class labels uniform ids in [0, classes), codes and other inputs standard normal, each in its shape."""
    rng = np.random.default_rng([seed, batch, sorted(manifest.roles).index(role)])
    feeds = {}
    for t in manifest.roles[role].inputs:
        shape = tuple(batch if d == BATCH else int(d) for d in t.shape)
        if t.kind == "image":
            lo, hi = t.range or manifest.data.value_range
            x = lo + (hi - lo) * rng.random(shape, dtype=np.float32)
        elif t.kind == "label":
            x = rng.integers(t.classes or 1, size=shape)
        else:
            x = rng.standard_normal(shape, dtype=np.float32)
        feeds[t.name] = np.ascontiguousarray(x, dtype=t.dtype)
    return feeds



Runner = Callable[[], Any]


class TorchAdapter:
    """The checkpoint's PyTorch model, eager (or replayed as CUDA graphs), eval mode, inference_mode.

    On CUDA with copies, a run is timed exactly like the runtime's TensorRT backend: numpy in
    (pageable), copied into a pinned staging tensor allocated once, then host->device
    (non-blocking), compute, device->pinned (non-blocking), synchronise, numpy copy out.
    TF32 follows the bench's choice (off by default), as on the onnxruntime and TensorRT backends.
    """

    def __init__(self, name: str, bundle: Path, manifest: Manifest, settings: BenchSettings):
        self.name = name
        self.device = "cuda" if name == "torch-cudagraph" else settings.device
        self.device_id = settings.device_id
        self.copies = settings.copies
        self.tf32 = settings.tf32
        self.given = settings.checkpoint
        self.checkpoint = Path(settings.checkpoint) if settings.checkpoint else bundle.parent / "checkpoint.pt"
        self.manifest = manifest
        self.bundle = bundle

    @property
    def where(self) -> str:
        return "cpu" if self.device == "cpu" else f"cuda:{self.device_id}"

    def preflight(self) -> None:
        """Untimed checks: the bundle's PyTorch reference exists and is the one it was exported from."""
        from bigmodel.errors import CheckpointError

        if self.manifest.reference.kind == "torch.export" and self.given is None:
            return  # the programs inside the bundle, sha256-checked as they load in open()
        path = self.checkpoint / "checkpoint.pt" if self.checkpoint.is_dir() else self.checkpoint
        if not path.is_file():
            raise BackendUnavailable(f"no checkpoint for the torch baseline at {path} (pass --checkpoint)")
        want = self.manifest.checkpoint_sha256
        from bigmodel.fileio import sha256_file

        if want and sha256_file(path) != want:
            raise BackendUnavailable(f"{path} is not the checkpoint this bundle was exported from "
                                     "(sha256 differs from the manifest; pass --checkpoint)")
        if not want:
            raise BackendUnavailable(str(CheckpointError(f"{self.bundle} records no checkpoint_sha256 and carries "
                                                         "no torch.export programs: no torch baseline")))
        self.checkpoint = path

    def open(self) -> None:
        import torch

        from bigmodel.parity.reference import reference_modules

        self.torch = torch
        if self.device != "cpu":
            torch.backends.cuda.matmul.allow_tf32 = self.tf32
            torch.backends.cudnn.allow_tf32 = self.tf32
        use = None if self.manifest.reference.kind == "torch.export" and self.given is None else self.checkpoint
        modules, _, _ = reference_modules(self.bundle, self.manifest, use)
        self.modules = {role: m.to(self.where) for role, m in modules.items()}

    def settings(self) -> dict[str, Any]:
        if self.device == "cpu":
            return {}
        return {"device_id": self.device_id, "tf32": self.tf32, "pinned_host_buffers": self.copies}

    def runner(self, role: str, feeds: dict[str, np.ndarray]) -> Runner:
        torch = self.torch
        module = self.modules[role]
        names = [t.name for t in self.manifest.roles[role].inputs]
        arrays = [np.asarray(feeds[n], dtype=np.float32 if feeds[n].dtype.kind == "f" else feeds[n].dtype)
                  for n in names]
        if self.device == "cpu":
            host = [torch.from_numpy(a) for a in arrays]

            def run_cpu():
                with torch.inference_mode():
                    return module(*host)
            return run_cpu
        with torch.inference_mode():
            resident = [torch.from_numpy(a).to(self.where) for a in arrays]
            staging = [torch.empty(a.shape, dtype=torch.from_numpy(a[:0]).dtype).pin_memory() for a in arrays]
            sample = module(*resident)  # output shapes, for the pinned output buffers
        outs = list(sample) if isinstance(sample, (tuple, list)) else [sample]
        out_staging = [torch.empty(tuple(o.shape), dtype=o.dtype).pin_memory() for o in outs]
        copy = _HostCopies(torch, arrays, staging, resident, out_staging) if self.copies else None
        if self.name == "torch-cudagraph":
            return self._graph_runner(module, resident, copy)
        sync = torch.cuda.synchronize

        def run_cuda():
            with torch.inference_mode():
                if copy is not None:
                    copy.inputs()
                out = module(*resident)
                if copy is not None:
                    return copy.outputs(out)
                sync()
                return out
        return run_cuda

    def _graph_runner(self, module, static_in, copy: _HostCopies | None) -> Runner:
        """Capture one CUDA graph for this (role, batch); a run copies inputs in, replays, copies out.

        Capture happens here, in `runner()`, which the harness times as `prepare_s`, not as the first run.
        """
        torch = self.torch
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.inference_mode(), torch.cuda.stream(stream):
            for _ in range(3):  # let lazy init and autotuning happen outside the capture
                module(*static_in)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.inference_mode(), torch.cuda.graph(graph):
            static_out = module(*static_in)
        torch.cuda.synchronize()
        sync = torch.cuda.synchronize

        def replay():
            with torch.inference_mode():  # the static tensors are inference tensors: updated in this mode only
                if copy is not None:
                    copy.inputs()
                graph.replay()
                if copy is not None:
                    return copy.outputs(static_out)
                sync()
                return static_out
        return replay

    def close(self) -> None:
        self.model = None


class CompiledTorchAdapter(TorchAdapter):
    """The same PyTorch reference compiled by Inductor, run exactly as `TorchAdapter` runs eager modules.

    torch-compile: `torch.compile(mode="default", dynamic=False)`, compiled in `runner()` for each role and
    batch (each shape its own kernels, as a fixed-batch server would). torch-compile-max: the same with
    mode="max-autotune-no-cudagraphs" and Inductor's `freezing` (weights as constants: on a CPU its GEMM
    templates need them, without it there is nothing to tune). aoti: each role torch.export-ed with a dynamic
    batch axis (the bundle's own program when it carries one), built by `aoti_compile_and_package` and loaded
    with `aoti_load_package` in `runner()` of the role's first batch: one package for every batch size.
    `build_s` records the Inductor build per (role, batch) (aoti: per role, at its first batch); caches live
    in the bench's temporary `inductor_cache`.
    """

    def __init__(self, name: str, bundle: Path, manifest: Manifest, settings: BenchSettings):
        super().__init__(name, bundle, manifest, settings)
        self.device = settings.device  # torch-compile on cuda: CUDA graphs stay off (the -no-cudagraphs mode)
        self.build_s: dict[tuple[str, int | None], float] = {}
        self.compiled: dict[tuple[str, int | None], Any] = {}
        self.first_batch: dict[str, int] = {}

    def open(self) -> None:
        super().open()
        self.eager = dict(self.modules)

    def _package(self, role: str):
        """aoti: the role exported, built into a .pt2 package in the run's Inductor folder, and loaded."""
        import time

        torch = self.torch
        t0 = time.perf_counter()
        with _inductor_settings(self.name):
            program = self._program(role, self.eager[role])
            path = Path(inductor_cache_path()) / f"aoti-{role}.pt2"
            with torch.no_grad():
                built = torch._inductor.aoti_compile_and_package(program, package_path=str(path))
            package = torch._inductor.aoti_load_package(built, device_index=-1 if self.device == "cpu"
                                                        else self.device_id)
        self.build_s[(role, None)] = time.perf_counter() - t0
        return package

    def _program(self, role: str, module):
        """The role as a torch.export program with a dynamic batch axis: the bundle's own when it carries one."""
        torch = self.torch
        ref = self.manifest.reference
        if ref.kind == "torch.export" and self.given is None and role in ref.programs:
            return torch.export.load(str(self.bundle / ref.programs[role].file))
        feeds = role_inputs(self.manifest, role, 2, 0)
        examples = tuple(torch.from_numpy(feeds[t.name]).to(self.where) for t in self.manifest.roles[role].inputs)
        batch = torch.export.Dim("batch", min=1)
        with torch.no_grad():
            return torch.export.export(module, examples, dynamic_shapes=tuple({0: batch} for _ in examples),
                                       strict=False)

    def runner(self, role: str, feeds: dict[str, np.ndarray]) -> Runner:
        """Builds first where this (role, batch) has not been built (timed by the bench as prepare_s)."""
        batch = len(next(iter(feeds.values())))
        key = (role, batch if self.name in COMPILE_MODES else None)
        if key not in self.compiled:  # a second runner of the cell (the contention control) reuses the build
            self.compiled[key] = self._compile(role, feeds) if self.name in COMPILE_MODES else self._package(role)
        self.modules[role] = self.compiled[key]
        return super().runner(role, feeds)

    def _compile(self, role: str, feeds: dict[str, np.ndarray]):
        """torch.compile of the role for this batch, compiled now by one call (its seconds into `build_s`)."""
        import time

        torch = self.torch
        compiled = torch.compile(_fresh_callable(self.eager[role]), mode=COMPILE_MODES[self.name], dynamic=False)
        args = [torch.from_numpy(np.ascontiguousarray(feeds[t.name])).to(self.where)
                for t in self.manifest.roles[role].inputs]
        t0 = time.perf_counter()
        with _inductor_settings(self.name), torch.inference_mode():
            compiled(*args)
            if self.device != "cpu":
                torch.cuda.synchronize()
        self.build_s[(role, len(args[0]))] = time.perf_counter() - t0
        return compiled

    def cell_build_s(self, role: str, batch: int) -> float | None:
        """Seconds Inductor built for right before this cell's first run: compiling (role, batch), or aoti's
        package of the role (built at the role's first batch, for every batch: None at the others)."""
        if self.name in COMPILE_MODES:
            return self.build_s.get((role, batch))
        first = self.first_batch.setdefault(role, batch)
        return self.build_s.get((role, None)) if first == batch else None

    def settings(self) -> dict[str, Any]:
        out = dict(super().settings())
        if self.name in COMPILE_MODES:
            out.update(mode=COMPILE_MODES[self.name], dynamic=False, freezing=self.name == "torch-compile-max")
        else:
            out.update(dynamic_batch=True)
        return out

    def close(self) -> None:
        self.modules = self.eager = self.compiled = {}


def _fresh_callable(module):
    """`module(*args)` behind a code object of its own: Dynamo keeps compiled code on the code object it
    traced, so two compiled forms of one model (two modes, two batch sizes) would otherwise share entries."""
    import types

    def call(*args):
        return module(*args)

    return types.FunctionType(call.__code__.replace(), call.__globals__, "call", None, call.__closure__)


@contextlib.contextmanager
def _inductor_settings(name: str):
    """Inductor's settings for building `name`: freezing for torch-compile-max; its autotuning tables and
    torch's deprecation warnings kept off the bench's output."""
    import warnings

    import torch._inductor.config as config

    with config.patch(freezing=name == "torch-compile-max", autotune_num_choices_displayed=0,
                      max_autotune_report_choices_stats=False), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", UserWarning)
        yield


_CACHE: list[str] = []  # the directory of the bench run in progress


def inductor_cache_path() -> str:
    if not _CACHE:
        raise RuntimeError("Inductor backends are opened inside bench's inductor_cache()")
    return _CACHE[-1]


@contextlib.contextmanager
def inductor_cache(needed: bool = True):
    """A fresh TORCHINDUCTOR_CACHE_DIR for one bench run, removed afterwards: no build comes from an earlier run's
    cache (Inductor's FX-graph, AOTAutograd and autotuning caches are also off, so every backend pays its own
    build, and so are precompiled headers, which Inductor keeps in a global folder), and nothing is left in the
    user's temp or home folder."""
    if not needed:
        yield None
        return
    import os
    import shutil
    import tempfile

    # before torch's imports: importing torch._dynamo sets TORCHINDUCTOR_CACHE_DIR to its default (and makes
    # that folder, empty) when it is unset; afterwards it is put back as the caller had it
    before = {k: os.environ.get(k) for k in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR")}
    import torch._functorch.config as functorch_config
    import torch._inductor.config as config

    folder = tempfile.mkdtemp(prefix="bigmodel-inductor-")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = folder
    os.environ["TRITON_CACHE_DIR"] = os.path.join(folder, "triton")
    _CACHE.append(folder)
    try:
        from torch._inductor.utils import clear_caches
    except ImportError:  # an older torch: its in-memory caches stay (the folder is still fresh)
        def clear_caches():
            return None
    clear_caches()
    try:
        with config.patch({"fx_graph_cache": False, "autotune_local_cache": False,
                           "cpp_cache_precompile_headers": False, "aot_inductor.precompile_headers": False}), \
                functorch_config.patch(enable_autograd_cache=False):
            yield folder
    finally:
        clear_caches()
        _CACHE.pop()
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        shutil.rmtree(folder, ignore_errors=True)


def inductor_unavailable(name: str, device: str) -> str | None:
    """Why Inductor cannot build `name` here: a CPU build needs a C++ compiler and Python's headers, a GPU one
    Triton; None when it can."""
    import importlib.util
    import sysconfig

    if device == "cuda":
        if importlib.util.find_spec("triton") is None:
            return f"{name} on a GPU needs Triton, which is not installed (pip install triton)"
        return None
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler

        get_cpp_compiler()
    except Exception:
        return (f"{name}: Inductor compiles C++ on the CPU and found no C++ compiler ($CXX, g++, clang++); install "
                "one (e.g. apt-get install g++)")
    include = sysconfig.get_paths().get("include") or ""
    if not (Path(include) / "Python.h").is_file():
        return (f"{name}: Inductor builds against Python's headers, missing here ({include}/Python.h); install "
                "them (e.g. apt-get install python3-dev)")
    return None


class _HostCopies:
    """numpy -> pinned -> device before a run, device -> pinned -> numpy after it (the runtime's own path)."""

    def __init__(self, torch, arrays, staging, device_in, out_staging):
        self.torch, self.arrays, self.staging, self.device_in = torch, arrays, staging, device_in
        self.out_staging = out_staging
        self.host = [torch.from_numpy(a) for a in arrays]  # views of the (pageable) numpy feeds

    def inputs(self) -> None:
        for src, pin, dst in zip(self.host, self.staging, self.device_in, strict=True):
            pin.copy_(src)
            dst.copy_(pin, non_blocking=True)

    def outputs(self, out):
        outs = list(out) if isinstance(out, (tuple, list)) else [out]
        for o, pin in zip(outs, self.out_staging, strict=True):
            pin.copy_(o, non_blocking=True)
        self.torch.cuda.synchronize()
        return [pin.numpy().copy() for pin in self.out_staging]


class RuntimeAdapter:
    """A bigmodel.runtime backend: `load(bundle, backend=..., device=..., threads=...)` + `Model.run`.

    On CUDA with copies excluded, onnxruntime backends run through I/O binding with inputs and
    outputs resident on the GPU; otherwise each run is numpy in, numpy out (copies included).
    """

    def __init__(self, name: str, bundle: Path, manifest: Manifest, settings: BenchSettings):
        self.name = name
        self.bundle = bundle
        self.settings_ = settings
        self.device = registry.entry(name).device
        self.device_id = settings.device_id
        self.copies = True

    def preflight(self) -> None:
        pass

    def open(self) -> None:
        from bigmodel.runtime import load

        s = self.settings_
        device = "cpu" if self.device == "cpu" else f"cuda:{self.device_id}"
        self.model = load(self.bundle, backend=self.name, device=device, threads=s.threads, tf32=s.tf32,
                          strict=s.strict, precision=s.precision)
        sessions = getattr(self.model.backend, "sessions", None)
        self.copies = not (self.device == "cuda" and not s.copies and sessions is not None)

    def settings(self) -> dict[str, Any]:
        return dict(getattr(self.model.backend, "settings", {}) or {})

    def runner(self, role: str, feeds: dict[str, np.ndarray]) -> Runner:
        if self.copies:
            model = self.model
            return lambda: model.run(role, feeds)
        return self._bound_runner(role, feeds)

    def _bound_runner(self, role: str, feeds: dict[str, np.ndarray]) -> Runner:
        import onnxruntime as ort

        from bigmodel.runtime.checks import prepare

        manifest = self.model.manifest
        session = self.model.backend.sessions[role]
        binding = session.io_binding()
        for t in manifest.roles[role].inputs:
            x = prepare(t, feeds[t.name], manifest.data, f"{role} input {t.name!r}")
            binding.bind_ortvalue_input(t.name, ort.OrtValue.ortvalue_from_numpy(x, "cuda", self.device_id))
        for t in manifest.roles[role].outputs:
            binding.bind_output(t.name, "cuda", self.device_id)

        def run_bound():
            session.run_with_iobinding(binding)
            binding.synchronize_outputs()
        return run_bound

    def close(self) -> None:
        self.model = None


def gpu_presence(device_id: int = 0) -> dict[str, str]:
    """What was looked for to find a GPU, each -> what was found (one phrase). Finding means using:
    torch's CUDA, an onnxruntime CUDA session created and run, or cuda-python seeing the device."""
    found = {}
    try:
        import torch

        found["torch.cuda"] = (f"available ({torch.cuda.get_device_name(device_id)})"
                               if torch.cuda.is_available() and device_id < torch.cuda.device_count()
                               else f"torch {torch.__version__}: no CUDA GPU {device_id} (torch.cuda.is_available() "
                                    f"is {torch.cuda.is_available()})")
    except ImportError:
        found["torch.cuda"] = "torch is not installed"
    from bigmodel.runtime.backends import ort as ort_backend

    reason = ort_backend.unavailable_reason("ort-cuda", device_id)
    found["onnxruntime providers"] = "available (a CUDAExecutionProvider session ran)" if reason is None else reason
    from bigmodel.runtime.backends import tensorrt as trt_backend

    reason = trt_backend.unavailable_reason(device_id)
    found["TensorRT"] = "available (tensorrt imports, cuda-python sees the GPU)" if reason is None else reason
    return found


def has_gpu(found: dict[str, str]) -> bool:
    """A GPU was really reached by at least one of the ways `gpu_presence` looks (an importable
    `tensorrt` alone is not a GPU)."""
    return any(v.startswith("available") for v in found.values())


def unavailable(name: str, device: str, status: dict[str, str | None]) -> str | None:
    """Why backend `name` cannot run for `device`, or None."""
    if name in TORCH_BACKENDS:
        try:
            import torch
        except ImportError:
            return "torch is not installed (install the torch build for your platform, see README)"
        if name == "torch-cudagraph" and device != "cuda":
            return "CUDA graphs need --device cuda"
        if (name == "torch-cudagraph" or device == "cuda") and not torch.cuda.is_available():
            return f"torch {torch.__version__} finds no CUDA GPU (torch.cuda.is_available() is False)"
        if name in COMPILED_BACKENDS:
            return inductor_unavailable(name, device)
        return None
    if registry.entry(name).device == "cuda" and device != "cuda":
        return f"{name} runs on a GPU; pass --device cuda"
    return status.get(name)

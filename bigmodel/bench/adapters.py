"""One adapter per backend: `preflight()` (untimed checks), `open()` (timed cold load), `runner(role, feeds)`.

`TorchAdapter` runs the checkpoint's PyTorch model eagerly (or replayed as CUDA graphs);
`RuntimeAdapter` runs a `bigmodel.runtime` backend through `load` + `Model.run`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bigmodel.errors import BackendUnavailable
from bigmodel.manifest import BATCH, Manifest
from bigmodel.runtime.backends import registry

if TYPE_CHECKING:
    from bigmodel.bench.run import BenchSettings

TORCH_BACKENDS = ("torch", "torch-cudagraph")
RUNTIME_BACKENDS = registry.NAMES
ALL_BACKENDS = TORCH_BACKENDS + RUNTIME_BACKENDS
# cpu: torch eager and every CPU backend (those not installed are reported as skipped); cuda: everything
DEFAULT_BACKENDS = {"cpu": ("torch", *registry.names_for("cpu")), "cuda": ALL_BACKENDS}


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
                          strict=s.strict)
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
    if name in ("torch", "torch-cudagraph"):
        try:
            import torch
        except ImportError:
            return "torch is not installed (install the torch build for your platform, see README)"
        if name == "torch-cudagraph" and device != "cuda":
            return "CUDA graphs need --device cuda"
        if (name == "torch-cudagraph" or device == "cuda") and not torch.cuda.is_available():
            return f"torch {torch.__version__} finds no CUDA GPU (torch.cuda.is_available() is False)"
        return None
    if registry.entry(name).device == "cuda" and device != "cuda":
        return f"{name} runs on a GPU; pass --device cuda"
    return status.get(name)

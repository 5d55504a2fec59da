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

if TYPE_CHECKING:
    from bigmodel.bench.run import BenchSettings

TORCH_BACKENDS = ("torch", "torch-cudagraph")
RUNTIME_BACKENDS = ("ort-cpu", "ort-cuda", "ort-trt", "tensorrt")
ALL_BACKENDS = ("torch", "torch-cudagraph", "ort-cpu", "ort-cuda", "ort-trt", "tensorrt")
DEFAULT_BACKENDS = {"cpu": ("torch", "ort-cpu"), "cuda": ALL_BACKENDS}


def role_inputs(manifest: Manifest, role: str, batch: int, seed: int) -> dict[str, np.ndarray]:
    """Feeds for one role at one batch size: images uniform in the data range, latents standard normal."""
    rng = np.random.default_rng([seed, batch, sorted(manifest.roles).index(role)])
    feeds = {}
    for t in manifest.roles[role].inputs:
        shape = tuple(batch if d == BATCH else int(d) for d in t.shape)
        if t.kind == "image":
            lo, hi = manifest.data.value_range
            x = lo + (hi - lo) * rng.random(shape, dtype=np.float32)
        else:
            x = rng.standard_normal(shape, dtype=np.float32)
        feeds[t.name] = np.ascontiguousarray(x, dtype=t.dtype)
    return feeds



Runner = Callable[[], Any]


class TorchAdapter:
    """The checkpoint's PyTorch model, eager (or replayed as CUDA graphs), eval mode, inference_mode."""

    def __init__(self, name: str, bundle: Path, manifest: Manifest, settings: BenchSettings):
        self.name = name
        self.device = "cuda" if name == "torch-cudagraph" else settings.device
        self.copies = settings.copies
        self.checkpoint = Path(settings.checkpoint) if settings.checkpoint else bundle.parent / "checkpoint.pt"
        self.manifest = manifest

    def preflight(self) -> None:
        """Untimed checks: the checkpoint exists and is the one the bundle was exported from."""
        from bigmodel.fileio import sha256_file

        path = self.checkpoint / "checkpoint.pt" if self.checkpoint.is_dir() else self.checkpoint
        if not path.is_file():
            raise BackendUnavailable(f"no checkpoint for the torch baseline at {path} (pass --checkpoint)")
        want = self.manifest.checkpoint_sha256
        if want and sha256_file(path) != want:
            raise BackendUnavailable(f"{path} is not the checkpoint this bundle was exported from "
                                     "(sha256 differs from the manifest; pass --checkpoint)")
        self.checkpoint = path

    def open(self) -> None:
        import torch

        from bigmodel.training.checkpoint import load_checkpoint, model_from_checkpoint

        self.torch = torch
        self.model = model_from_checkpoint(load_checkpoint(self.checkpoint)).to(self.device).eval()

    def runner(self, role: str, feeds: dict[str, np.ndarray]) -> Runner:
        torch = self.torch
        module = self.model.role_module(role).eval()
        names = [t.name for t in self.manifest.roles[role].inputs]
        host = [torch.from_numpy(np.asarray(feeds[n], dtype=np.float32)) for n in names]
        if self.device == "cpu":
            def run_cpu():
                with torch.inference_mode():
                    return module(*host)
            return run_cpu
        if self.copies:
            host = [h.pin_memory() for h in host]
        resident = [h.to(self.device) for h in host]
        if self.name == "torch-cudagraph":
            return self._graph_runner(module, host, resident)
        sync = torch.cuda.synchronize

        def run_cuda():
            with torch.inference_mode():
                out = module(*([h.to(self.device, non_blocking=True) for h in host] if self.copies else resident))
                if self.copies:
                    return _to_host(out)
                sync()
                return out
        return run_cuda

    def _graph_runner(self, module, host, static_in) -> Runner:
        """Capture one CUDA graph for this (role, batch); a run copies inputs in, replays, copies out."""
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
        sync = torch.cuda.synchronize

        def replay():
            if self.copies:
                for dst, src in zip(static_in, host, strict=True):
                    dst.copy_(src, non_blocking=True)
            graph.replay()
            if self.copies:
                return _to_host(static_out)
            sync()
            return static_out
        return replay

    def close(self) -> None:
        self.model = None


def _to_host(out):
    if isinstance(out, (tuple, list)):
        return [o.cpu() for o in out]  # .cpu() synchronises
    return out.cpu()


class RuntimeAdapter:
    """A bigmodel.runtime backend: `load(bundle, backend=..., device=..., threads=...)` + `Model.run`.

    On CUDA with copies excluded, onnxruntime backends run through I/O binding with inputs and
    outputs resident on the GPU; otherwise each run is numpy in, numpy out (copies included).
    """

    def __init__(self, name: str, bundle: Path, manifest: Manifest, settings: BenchSettings):
        self.name = name
        self.bundle = bundle
        self.settings = settings
        self.device = "cpu" if name == "ort-cpu" else "cuda"
        self.copies = True

    def preflight(self) -> None:
        pass

    def open(self) -> None:
        from bigmodel.runtime import load

        self.model = load(self.bundle, backend=self.name, device=self.device, threads=self.settings.threads)
        sessions = getattr(self.model.backend, "sessions", None)
        self.copies = not (self.device == "cuda" and not self.settings.copies and sessions is not None)

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
            binding.bind_ortvalue_input(t.name, ort.OrtValue.ortvalue_from_numpy(x, "cuda", 0))
        for t in manifest.roles[role].outputs:
            binding.bind_output(t.name, "cuda", 0)

        def run_bound():
            session.run_with_iobinding(binding)
            binding.synchronize_outputs()
        return run_bound

    def close(self) -> None:
        self.model = None


def gpu_presence() -> dict[str, str]:
    """What was looked for to find a GPU, each -> what was found (one phrase)."""
    found = {}
    try:
        import torch

        found["torch.cuda"] = (f"available ({torch.cuda.get_device_name(0)})" if torch.cuda.is_available()
                               else f"torch {torch.__version__}: torch.cuda.is_available() is False")
    except ImportError:
        found["torch.cuda"] = "torch is not installed"
    try:
        import onnxruntime

        providers = onnxruntime.get_available_providers()
        found["onnxruntime providers"] = ", ".join(providers)
    except ImportError:
        found["onnxruntime providers"] = "onnxruntime is not installed"
    try:
        import tensorrt

        found["TensorRT"] = f"tensorrt {tensorrt.__version__}"
    except ImportError:
        found["TensorRT"] = "the tensorrt package is not installed"
    return found


def has_gpu(found: dict[str, str]) -> bool:
    return (found["torch.cuda"].startswith("available") or "CUDAExecutionProvider" in found["onnxruntime providers"]
            or found["TensorRT"].startswith("tensorrt "))


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
    if name != "ort-cpu" and device != "cuda":
        return f"{name} runs on a GPU; pass --device cuda"
    return status.get(name)

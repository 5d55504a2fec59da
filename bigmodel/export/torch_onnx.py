"""One role of a PyTorch model -> one ONNX graph: torch.onnx (dynamo), onnxslim, and PyTorch's reference outputs.

Memory: PyTorch's reference outputs are computed before each graph is written, and the exported
program lets go of the weights, so a big model is never held twice.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bigmodel.errors import ExportError
from bigmodel.export.graph import EXTERNAL_DATA_BYTES, check_graph, data_files, import_optional, save_onnx
from bigmodel.export.options import ExportOptions
from bigmodel.fileio import os_refusal, sha256_file, storage_error
from bigmodel.manifest import BATCH, RoleSpec, TensorSpec
from bigmodel.models.probes import role_probes


@dataclass
class Reference:
    """PyTorch's outputs for one role's probe inputs, computed before the model is released."""

    inputs: dict[str, np.ndarray]  # probe set -> its inputs
    outputs: dict[tuple[str, int], list[np.ndarray]]  # (probe set, batch) -> outputs on inputs[:batch]


def export_role(model, role: str, folder: Path, opts: ExportOptions, val: np.ndarray) -> tuple[RoleSpec, Reference]:
    """Export, clean and check one role; returns its manifest entry and PyTorch's outputs on its probes."""
    module = model.role_module(role).eval()
    io_spec = model.roles[role]
    probes = role_probes(io_spec.inputs[0][1], model.config.latent_dim, val, opts.probes, seed=0)
    ref = torch_reference(module, probes)
    example = torch.from_numpy(next(iter(probes.values()))[:2])
    path = folder / f"{role}.onnx"
    big = opts.external_data
    if big is None:
        big = sum(p.numel() * p.element_size() for p in module.parameters()) >= EXTERNAL_DATA_BYTES
    write_onnx(module, example, [n for n, _ in io_spec.inputs], [n for n, _ in io_spec.outputs], path, opts.opset, big)
    check_graph(path)
    outs = next(iter(ref.outputs.values()))
    spec = RoleSpec(
        file=path.name,
        sha256=sha256_file(path),
        data_files=data_files(path),
        inputs=[TensorSpec(n, "float32", [BATCH, *example.shape[1:]], k) for n, k in io_spec.inputs],
        outputs=[TensorSpec(n, "float32", [BATCH, *o.shape[1:]], k) for (n, k), o in zip(io_spec.outputs, outs,
                                                                                        strict=True)],
    )
    return spec, ref


def torch_reference(module: torch.nn.Module, probes: dict[str, np.ndarray]) -> Reference:
    """PyTorch's outputs at batch 1 and at an odd batch (all but one probe) for every probe set."""
    outputs = {}
    with torch.no_grad():
        for probe, x in probes.items():
            for batch in sorted({1, len(x) - 1 or 1}):
                got = module(torch.from_numpy(x[:batch]))
                outputs[(probe, batch)] = [t.numpy().copy() for t in (got if isinstance(got, tuple) else (got,))]
    return Reference(probes, outputs)


def write_onnx(module: torch.nn.Module, example: torch.Tensor, inputs: list[str], outputs: list[str], path: Path,
               opset: int, external_data: bool) -> None:
    """torch.onnx (dynamo) with a dynamic batch axis, then cleanup; exporter chatter is captured.

    torch.onnx runs onnxscript's optimizer (constant folding, BatchNorm fusion, dead code) on
    every graph. Embedded-weight graphs then go through onnxslim; external-data graphs are saved
    straight from the exporter, which streams the weights to `<name>.data` one tensor at a time
    (loading them back into a ModelProto for onnxslim would hold them twice).
    """
    onnx = import_optional("onnx", "ONNX export")
    onnxslim = import_optional("onnxslim", "ONNX graph cleanup")
    log = io.StringIO()
    dynamic = ({0: torch.export.Dim("batch", min=1)},)
    path.with_suffix(".onnx.data").unlink(missing_ok=True)
    try:
        with _quiet(log), _cached_torchlib_registry():
            program = torch.onnx.export(module, (example,), None, input_names=inputs, output_names=outputs,
                                        dynamic_shapes=dynamic, dynamo=True, opset_version=opset, optimize=True,
                                        verbose=False)
            try:
                program.save(str(path), external_data=external_data)
            finally:
                _release_weights(program)
                del program
            if external_data:
                got = {o.version for o in onnx.load(str(path), load_external_data=False).opset_import
                       if o.domain in ("", "ai.onnx")}
            else:
                slim = onnxslim.slim(onnx.load(str(path)))
                got = {o.version for o in slim.opset_import if o.domain in ("", "ai.onnx")}
    except Exception as e:
        if os_refusal(e) is not None:  # disk full, read-only: the machine's refusal, not the exporter's
            raise storage_error(os_refusal(e), path, "write") from e
        raise ExportError(f"torch.onnx could not export {path.stem}: {type(e).__name__}: {str(e)[:300]}") from e
    if got != {opset}:
        raise ExportError(f"asked for opset {opset}, but the exporter wrote {sorted(got)}; pick one of those")
    if not external_data:
        save_onnx(slim, path, False)


def _release_weights(program) -> None:
    """Drop the exported program's references to the module's weights.

    onnxscript's rewrite rules (module-level objects) keep the last graph they matched, and with
    it every initializer, i.e. the PyTorch weights: without this a released model stays in memory.
    """
    with contextlib.suppress(Exception):
        graph = program.model.graph
        for value in graph.initializers.values():
            value.const_value = None
        graph.initializers.clear()


_REGISTRIES: dict = {}


@contextlib.contextmanager
def _cached_torchlib_registry():
    """Build torch.onnx's operator registry once per process (about 1 s per export otherwise).

    torch.onnx builds it afresh on every call and only adds to it when given a custom translation
    table, which we never pass. Private API: when it moves, exports just take the extra second.
    """
    try:
        from torch.onnx._internal.exporter import _registration

        cls = _registration.ONNXRegistry
        original = cls.__dict__["from_torchlib"]
    except (ImportError, AttributeError, KeyError):
        yield
        return

    def from_torchlib(klass, *args, **kwargs):
        key = (args, tuple(sorted(kwargs.items())))
        if key not in _REGISTRIES:
            _REGISTRIES[key] = original.__func__(klass, *args, **kwargs)
        return _REGISTRIES[key]

    cls.from_torchlib = classmethod(from_torchlib)
    try:
        yield
    finally:
        cls.from_torchlib = original


@contextlib.contextmanager
def _quiet(buffer: io.StringIO):
    """Keep torch.onnx's prints, warnings and log lines off the user's screen (library code never prints)."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)

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
from bigmodel.export.declare import Resolved
from bigmodel.export.graph import EXTERNAL_DATA_BYTES, check_graph, data_files, import_optional, save_onnx
from bigmodel.export.options import ExportOptions
from bigmodel.fileio import os_refusal, sha256_file, storage_error
from bigmodel.manifest import DataFile, RoleSpec


@dataclass
class Reference:
    """PyTorch's outputs for one role's probe inputs, computed before the model is released."""

    inputs: dict[str, dict[str, np.ndarray]]  # probe set -> {input name: array}
    outputs: dict[tuple[str, int], list[np.ndarray]]  # (probe set, batch) -> outputs on inputs[:batch]


def export_role(role: str, r: Resolved, folder: Path, opts: ExportOptions, probes: dict[str, dict[str, np.ndarray]],
                keep_program: bool = False) -> tuple[RoleSpec, Reference, DataFile | None]:
    """Trace, export, clean and check one role; returns its manifest entry, PyTorch's outputs on its probes
    and, with keep_program, the saved torch.export program (the reference that travels)."""
    from bigmodel.export.program import PROGRAM_DIR, check_batch_independent, save_program, trace

    module = r.module.eval()
    first = next(iter(probes.values()))
    feeds = [torch.from_numpy(first[t.name]) for t in r.inputs]
    program = trace(role, module, [f[:2] for f in feeds], r.source)
    check_batch_independent(role, module, feeds, r.outputs)
    ref = torch_reference(module, probes, [t.name for t in r.inputs])
    path = folder / f"{role}.onnx"
    big = opts.external_data
    if big is None:
        big = sum(p.numel() * p.element_size() for p in module.parameters()) >= EXTERNAL_DATA_BYTES
    kept = None
    if keep_program:
        file = folder / PROGRAM_DIR / f"{role}.pt2"
        save_program(program, file)
        kept = DataFile(f"{PROGRAM_DIR}/{role}.pt2", sha256_file(file))
    write_onnx(program, tuple(f[:2] for f in feeds), [t.name for t in r.inputs], [t.name for t in r.outputs], path,
               opts.opset, big)
    del program
    check_graph(path)
    spec = RoleSpec(file=path.name, sha256=sha256_file(path), data_files=data_files(path), inputs=list(r.inputs),
                    outputs=list(r.outputs))
    return spec, ref, kept


def torch_reference(module: torch.nn.Module, probes: dict[str, dict[str, np.ndarray]],
                    names: list[str]) -> Reference:
    """PyTorch's outputs at batch 1 and at an odd batch (all but one probe) for every probe set."""
    outputs = {}
    with torch.no_grad():
        for probe, feeds in probes.items():
            n = len(feeds[names[0]])
            for batch in sorted({1, n - 1 or 1}):
                got = module(*[torch.from_numpy(feeds[k][:batch]) for k in names])
                outputs[(probe, batch)] = [t.float().numpy().copy() for t in got]
    return Reference(probes, outputs)


def write_onnx(program, examples: tuple[torch.Tensor, ...], inputs: list[str], outputs: list[str], path: Path,
               opset: int, external_data: bool) -> None:
    """torch.onnx (dynamo) of a role's torch.export program (dynamic batch axis), then cleanup; exporter
    chatter is captured.

    torch.onnx runs onnxscript's optimizer (constant folding, BatchNorm fusion, dead code) on
    every graph. Embedded-weight graphs then go through onnxslim; external-data graphs are saved
    straight from the exporter, which streams the weights to `<name>.data` one tensor at a time
    (loading them back into a ModelProto for onnxslim would hold them twice).
    """
    onnx = import_optional("onnx", "ONNX export")
    onnxslim = import_optional("onnxslim", "ONNX graph cleanup")
    log = io.StringIO()
    path.with_suffix(".onnx.data").unlink(missing_ok=True)
    try:
        with _quiet(log), _cached_torchlib_registry():
            program = torch.onnx.export(program, examples, None, input_names=inputs, output_names=outputs,
                                        dynamo=True, opset_version=opset, optimize=True, verbose=False)
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
        raise ExportError(f"torch.onnx could not export {path.stem}: {_onnx_refusal(e)}") from e
    if got != {opset}:
        raise ExportError(f"asked for opset {opset}, but the exporter wrote {sorted(got)}; pick one of those")
    if not external_data:
        save_onnx(slim, path, False)


def _onnx_refusal(e: Exception) -> str:
    """torch.onnx's error in one line; an operator it has no ONNX translation for is named, with the fix."""
    import re

    text = str(e)
    unsupported = "No ONNX function" in text or "Unsupported" in text
    op = re.search(r"(aten::\w+|aten\.\w+(?:\.\w+)?)", text) if unsupported else None
    if op:
        return (f"the operator {op.group(1)} has no ONNX translation in torch {torch.__version__}; rewrite that step "
                "with supported operators or register a translation (torch.onnx custom_translation_table)")
    return f"{type(e).__name__}: {text.strip()[:300]}"


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

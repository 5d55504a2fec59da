"""One role as a `torch.export` program: traced once with a dynamic batch axis, checked, saved to travel.

The program is what the ONNX graph is made from and, for models from outside bigmodel, the PyTorch
reference the bundle carries (`reference/ROLE.pt2`): parity and bench load it in a process that
cannot import the user's code. Failures that users of torch.onnx meet most (random operators in
`forward`, data-dependent control flow, a batch size baked into a reshape, outputs that depend on
the rest of the batch) are caught here with one line naming the role, the Python line and the fix.
"""

from __future__ import annotations

import re
import traceback
from pathlib import Path

import numpy as np
import torch

from bigmodel.errors import ExportError
from bigmodel.manifest import TensorSpec

PROGRAM_DIR = "reference"  # inside a bundle: one ROLE.pt2 per role, for bundles made from user modules
BATCH_CHECK = 7  # rows run alone and together: an output of one sample must not depend on the others
_TORCH_DIR = str(Path(torch.__file__).parent)


def is_user_file(path: str) -> bool:
    """Whether a source file is the user's own: not torch's, not an installed package's, not bigmodel's.

    Messages point at the user's file and line; nn.Sequential's or bigmodel's own tell them nothing.
    """
    import bigmodel

    ours = str(Path(bigmodel.__file__).parent)
    return bool(path) and not path.startswith((_TORCH_DIR, ours)) and "site-packages" not in path
_RANDOM_FIX = "take the noise as an input of the role (declare it, kind 'latent' or 'tensor') and draw it outside"


def trace(role: str, module: torch.nn.Module, examples: list[torch.Tensor], source: str = ""):
    """`torch.export.export` of the role with batch as a dynamic axis, or ExportError saying why and what to do."""
    batch = torch.export.Dim("batch", min=1)
    dynamic = (tuple({0: batch} for _ in examples),)  # the wrapper's forward(*args): one tuple of inputs
    try:
        with torch.no_grad():
            program = torch.export.export(module, tuple(examples), dynamic_shapes=dynamic, strict=False)
    except Exception as e:
        raise ExportError(f"{role}: {explain(e, source)}") from e
    found = random_ops(program)
    if found:
        op, where = found[0]
        raise ExportError(f"{role}: forward draws random numbers ({op}{' at ' + where if where else ''}), which no "
                          f"exported graph can seed; {_RANDOM_FIX}")
    return program


def explain(e: Exception, source: str = "") -> str:
    """torch.export's refusal in one line: what broke, where in the user's code, and the fix."""
    text = str(e)
    where = _user_frame(e) or source
    at = f" at {where}" if where else ""
    name = type(e).__name__
    if "GuardOnDataDependent" in name or "data-dependent" in text or "data dependent" in text:
        return (f"data-dependent control flow{at} (a Python `if`/loop on tensor values) cannot be exported; compute "
                "both branches and pick with torch.where, or move the decision out of forward")
    if "Constraint" in name or ("batch" in text and ("specializ" in text or "constant" in text)):
        return (f"the batch size is fixed inside the module{at} (e.g. x.view(64, -1) or a batch-sized buffer); use "
                "x.flatten(1) or x.view(x.shape[0], -1) so any batch size works")
    first = text.strip().splitlines()[0][:240] if text.strip() else name
    return f"torch.export could not trace it{at}: {name}: {first}"


def _user_frame(e: BaseException) -> str:
    """`file:line (code)` of the innermost frame of the traceback outside torch and bigmodel."""
    frames = [f for f in traceback.extract_tb(e.__traceback__) if is_user_file(f.filename)]
    if not frames:
        return ""
    f = frames[-1]
    return f"{f.filename}:{f.lineno} ({(f.line or '').strip()})"


def random_ops(program) -> list[tuple[str, str]]:
    """(operator, `file:line (code)`) of every random operator in the program (dropout in eval mode is not)."""
    found = []
    for node in program.graph.nodes:
        target = node.target
        if node.op != "call_function" or torch.Tag.nondeterministic_seeded not in getattr(target, "tags", ()):
            continue
        name = str(getattr(target, "_overloadpacket", target))
        if "dropout" in name and len(node.args) > 2 and node.args[2] is False:
            continue  # F.dropout(training=False): the identity
        found.append((name.replace("aten.", "torch."), _trace_line(node.meta.get("stack_trace") or "")))
    return found


def _trace_line(stack: str) -> str:
    """The innermost frame of an fx stack trace that is the user's code."""
    frames = re.findall(r'File "([^"]+)", line (\d+), in \w+\n\s*(.*)', stack)
    mine = [f for f in frames if is_user_file(f[0])]
    if not mine:
        return ""
    file, line, code = mine[-1]
    return f"{file}:{line} ({code.strip()})"


def check_batch_independent(role: str, module: torch.nn.Module, feeds: list[torch.Tensor],
                            outputs: list[TensorSpec]) -> None:
    """ExportError when a sample's outputs change with the rest of its batch (rows alone vs together)."""
    n = min(BATCH_CHECK, len(feeds[0]))
    with torch.no_grad():
        together = [t.float().numpy() for t in module(*[f[:n] for f in feeds])]
        alone = [[t.float().numpy() for t in module(*[f[i:i + 1] for f in feeds])] for i in range(n)]
    for k, spec in enumerate(outputs):
        rows = np.concatenate([a[k] for a in alone])
        diff = float(np.max(np.abs(rows - together[k]))) if rows.size else 0.0
        scale = max(1.0, float(np.max(np.abs(together[k])))) if rows.size else 1.0
        if not diff <= 1e-4 * scale:
            raise ExportError(
                f"{role}: output {spec.name!r} of a sample depends on the rest of its batch (alone vs in a batch of "
                f"{n}: max difference {diff:.3g}); batch norm in training mode, a statistic over the batch axis or a "
                "baked batch size? Call module.eval() and compute per sample")


def save_program(program, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.export.save(program, str(path))


def load_program(path: Path, role: str) -> torch.nn.Module:
    """The saved program of `role` as a callable module (no user code needed), or ExportError."""
    try:
        return torch.export.load(str(path)).module()
    except Exception as e:
        raise ExportError(f"cannot load the PyTorch reference of {role} from {path}: {type(e).__name__}: "
                          f"{str(e).strip()[:200]}") from e

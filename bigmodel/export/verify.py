"""Export's verification: each fp32 graph against PyTorch, and fp16/int8 graphs against the fp32 ones.

`check_against_reference` holds each fp32 graph to PyTorch's outputs with parity's statistics and
fp32 tolerances. For fp16/int8, `Verifier` runs `bigmodel parity`'s checks, the fp32 graphs as reference:

The same role-and-chain checks as parity (`bigmodel.parity.check`), on the same probe sets
(validation, generated and noise images, prior samples, ±4σ codes; parity's default size and
seed), with the same statistics and tolerance table, each graph run through the runtime's
ort-cpu backend as `bigmodel parity --backend ort-cpu` runs it. The reference is the fp32 ONNX
graphs, already checked against PyTorch, so no torch work is needed here.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from bigmodel.export.graph import ort_session
from bigmodel.manifest import Manifest, RoleSpec
from bigmodel.parity.check import check_targets, model_reference
from bigmodel.parity.inputs import DEFAULT_SAMPLES, probe_inputs, targets_of
from bigmodel.parity.report import Case
from bigmodel.parity.stats import compare
from bigmodel.parity.tolerances import rule, tolerances_for

if TYPE_CHECKING:
    from bigmodel.export.torch_onnx import Reference

VERIFY_SEED = 0  # parity's default seed: export checks exactly the inputs `bigmodel parity` checks


def check_against_reference(path: Path, ref: Reference, spec: RoleSpec,
                            value_range: tuple[float, float]) -> tuple[dict[str, float], list[str]]:
    """The graph in onnxruntime against PyTorch's outputs with parity's statistics and fp32 tolerances.

    Returns (max |onnx - torch| per probe set, one line per failed check). For the report, an output
    whose values pass 1 in size (a decoder's logits at ±4σ codes reach ~50) counts its error relative
    to that size: float32 rounding there is relative, not absolute (the checks use rtol for it).
    """
    tol = tolerances_for("fp32")
    session = ort_session(path)
    errors: dict[str, float] = {}
    failures: list[str] = []
    for (probe, batch), want in ref.outputs.items():
        got = session.run(None, {k: v[:batch] for k, v in ref.inputs[probe].items()})
        for t, g, w in zip(spec.outputs, got, want, strict=True):
            check = compare(g, w, t.kind, rule(tol, t.kind, probe), value_range, t.name)
            size = max(1.0, float(np.max(np.abs(w)))) if w.size else 1.0
            errors[probe] = max(errors.get(probe, 0.0), check.stats.get("max_abs", float("inf")) / size)
            failures += [f"{path.stem} output {t.name!r} ({t.kind}; {probe} inputs, batch {batch}): {f.describe()}"
                         for f in check.failures]
    return errors, failures


def runtime_model(folder: Path, manifest: Manifest):
    """A runtime Model (ort-cpu; ov-cpu in bf16 for a bf16 manifest) on the graphs `manifest` names."""
    from bigmodel.runtime.backends.ort import OrtBackend
    from bigmodel.runtime.model import Model

    if manifest.precision == "bf16":
        from bigmodel.runtime.backends.openvino import OpenVINOBackend

        return Model(folder, manifest, OpenVINOBackend(folder, manifest))
    return Model(folder, manifest, OrtBackend(folder, manifest, "ort-cpu"))


def with_files(manifest: Manifest, files: dict[str, str], dtype: str | None = None) -> Manifest:
    """A copy of `manifest` whose roles name other graph files (and, if given, another I/O dtype for the
    float inputs and outputs; class labels stay int64)."""
    roles = dict(manifest.roles)

    def io(t):
        return replace(t, dtype=dtype) if np.dtype(t.dtype).kind == "f" else t

    for role, file in files.items():
        spec = roles[role]
        if dtype is not None:
            spec = replace(spec, inputs=[io(t) for t in spec.inputs], outputs=[io(t) for t in spec.outputs])
        roles[role] = replace(spec, file=file, data_files=[])  # read in place, never verified: no data list
    return replace(manifest, roles=roles, engines=[], extra={})


class Verifier:
    """Checks candidate graphs role by role against the fp32 graphs that `reference` names."""

    def __init__(self, folder: Path, reference: Manifest, val: np.ndarray, precision: str,
                 samples: int = DEFAULT_SAMPLES, seed: int = VERIFY_SEED):
        self.folder = Path(folder)
        self.precision = precision
        self.tolerances = tolerances_for(precision)
        self.fp32 = runtime_model(self.folder, reference)
        self.reference = model_reference(self.fp32, reference)
        self.targets = targets_of(reference)
        _, self.feeds = probe_inputs(reference, self.targets, val, reference.data.source, samples, seed,
                                     self.generate)

    def generate(self, role: str, feeds: dict[str, np.ndarray]) -> np.ndarray | None:
        """The fp32 graph of `role` on `feeds` -> its first output; None when the bundle has no such role."""
        spec = self.fp32.manifest.roles.get(role)
        return None if spec is None else self.fp32.run(role, feeds)[spec.outputs[0].name]

    def check(self, manifest: Manifest, role: str | None = None) -> list[Case]:
        """The targets that hold `role` (the role and the chains through it; all when None), on `manifest`'s graphs.

        A role's search sees the chains it feeds as well as those that feed it: an int8 generator whose
        images move the discriminator's verdict too far is the generator's failure to fix.
        """
        targets = [t for t in self.targets if role is None or role in t]
        # int8 graphs run with the session options a loaded int8 bundle gets (`ort.disabled_optimizers`)
        runs = replace(manifest, precision="int8") if self.precision == "int8" else manifest
        return check_targets(runtime_model(self.folder, runs), self.reference, manifest, targets, self.feeds,
                             self.tolerances)

"""Export's verification of fp16/int8 graphs: `bigmodel parity`'s checks, the fp32 graphs as reference.

The same role-and-chain checks as parity (`bigmodel.parity.check`), on the same probe sets
(validation, generated and noise images, prior samples, ±4σ codes; parity's default size and
seed), with the same statistics and tolerance table, each graph run through the runtime's
ort-cpu backend as `bigmodel parity --backend ort-cpu` runs it. The reference is the fp32 ONNX
graphs, already checked against PyTorch, so no torch work is needed here.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from bigmodel.manifest import Manifest
from bigmodel.parity.check import check_targets, model_reference
from bigmodel.parity.inputs import DEFAULT_SAMPLES, probe_inputs, targets_of
from bigmodel.parity.report import Case
from bigmodel.parity.tolerances import tolerances_for

VERIFY_SEED = 0  # parity's default seed: export checks exactly the inputs `bigmodel parity` checks


def runtime_model(folder: Path, manifest: Manifest):
    """A runtime Model (ort-cpu) on the graphs `manifest` names, relative to `folder`."""
    from bigmodel.runtime.backends.ort import OrtBackend
    from bigmodel.runtime.model import Model

    return Model(folder, manifest, OrtBackend(folder, manifest, "ort-cpu"))


def with_files(manifest: Manifest, files: dict[str, str], dtype: str | None = None) -> Manifest:
    """A copy of `manifest` whose roles name other graph files (and, if given, another I/O dtype)."""
    roles = dict(manifest.roles)
    for role, file in files.items():
        spec = roles[role]
        if dtype is not None:
            spec = replace(spec, inputs=[replace(t, dtype=dtype) for t in spec.inputs],
                           outputs=[replace(t, dtype=dtype) for t in spec.outputs])
        roles[role] = replace(spec, file=file, data_files=[])  # read in place, never verified: no data list
    return replace(manifest, roles=roles, engines=[], extra={})


class Verifier:
    """Checks candidate graphs role by role against the fp32 graphs that `reference` names."""

    def __init__(self, folder: Path, reference: Manifest, val: np.ndarray, precision: str,
                 samples: int = DEFAULT_SAMPLES, seed: int = VERIFY_SEED):
        self.folder = Path(folder)
        self.tolerances = tolerances_for(precision)
        self.fp32 = runtime_model(self.folder, reference)
        self.reference = model_reference(self.fp32, reference)
        self.targets = targets_of(reference)
        _, self.feeds = probe_inputs(reference, self.targets, val, reference.data.source, samples, seed,
                                     self.generate)

    def generate(self, role: str, x: np.ndarray) -> np.ndarray | None:
        """The fp32 graph of `role` on `x` -> its first output; None when the bundle has no such role."""
        spec = self.fp32.manifest.roles.get(role)
        return None if spec is None else self.fp32.run(role, {spec.inputs[0].name: x})[spec.outputs[0].name]

    def check(self, manifest: Manifest, role: str | None = None) -> list[Case]:
        """The targets that hold `role` (the role and the chains through it; all when None), on `manifest`'s graphs.

        A role's search sees the chains it feeds as well as those that feed it: an int8 generator whose
        images move the discriminator's verdict too far is the generator's failure to fix.
        """
        targets = [t for t in self.targets if role is None or role in t]
        return check_targets(runtime_model(self.folder, manifest), self.reference, manifest, targets, self.feeds,
                             self.tolerances)

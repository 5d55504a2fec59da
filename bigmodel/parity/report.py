"""The parity report: backends x targets (roles and chains) x probe sets x batch sizes x outputs."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from bigmodel.parity.stats import Failure, OutputCheck
from bigmodel.parity.tolerances import REL_EPS, Tolerance


@dataclass
class Case:
    """One target (a role, or a chain `a->b`) on one probe set at one batch size."""

    target: str
    probe: str
    batch: int
    outputs: list[OutputCheck]
    stress: bool = False  # held to the stress rule (inputs outside any calibration range), where one is set

    @property
    def passed(self) -> bool:
        return all(o.passed for o in self.outputs)


@dataclass
class BackendRun:
    backend: str
    status: str  # "ran" | "skipped"
    reason: str | None = None
    seconds: float = 0.0
    cases: list[Case] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)  # GPU backends: device, TF32, node placement

    @property
    def passed(self) -> bool:
        return self.status == "ran" and all(c.passed for c in self.cases)


@dataclass
class ProbeInput:
    """One input set: where it came from, the seed, its shape and a digest of its float32 bytes."""

    target: str
    probe: str
    source: str
    seed: int
    shape: tuple[int, ...]
    sha256: str


@dataclass
class ParityReport:
    bundle: str
    checkpoint: str
    checkpoint_sha256: str
    family: str
    arch: str
    bundle_precision: str
    tolerance_precision: str
    tolerances: dict[str, Tolerance]
    samples: int
    seed: int
    data: str
    inputs: list[ProbeInput]
    backends: list[BackendRun]
    versions: dict[str, str]
    seconds: float = 0.0

    @property
    def ran(self) -> list[BackendRun]:
        return [b for b in self.backends if b.status == "ran"]

    @property
    def passed(self) -> bool:
        """True when at least one backend ran and every check of every backend that ran passed."""
        return bool(self.ran) and all(b.passed for b in self.ran)

    @property
    def checks(self) -> int:
        """Output checks made, over every backend that ran."""
        return sum(len(c.outputs) for b in self.ran for c in b.cases)

    @property
    def failed_checks(self) -> int:
        return sum(1 for b in self.ran for c in b.cases for o in c.outputs if not o.passed)

    def where(self) -> str:
        """'ort-cpu against PyTorch (fp32 tolerances), 1.2s': what ran, for one-line verdicts."""
        ran = ", ".join(b.backend for b in self.ran)
        return f"{ran} against PyTorch ({self.tolerance_precision} tolerances), {self.seconds:.1f}s"

    def failures(self) -> list[tuple[BackendRun, Case, OutputCheck, Failure]]:
        return [(b, c, o, f) for b in self.ran for c in b.cases for o in c.outputs for f in o.failures]

    def messages(self) -> list[str]:
        """One line per failure: backend, role or chain, output, inputs, statistic, index, both values."""
        return [f"{b.backend} {c.target} output {o.output!r} ({o.kind}; {c.probe} inputs, batch {c.batch}): "
                f"{f.describe()}" for b, c, o, f in self.failures()]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["passed"] = self.passed
        for b, bd in zip(self.backends, d["backends"], strict=True):
            bd["passed"] = b.passed if b.status == "ran" else None  # skipped: neither pass nor fail
            for c, cd in zip(b.cases, bd["cases"], strict=True):
                cd["passed"] = c.passed
                for o, od in zip(c.outputs, cd["outputs"], strict=True):
                    od["passed"] = o.passed
        d["failures"] = self.messages()
        d["rel_eps"] = REL_EPS
        return _json_safe(d)


def _json_safe(x):
    """Non-finite floats as strings ("inf", "nan"), tuples as lists: strict JSON."""
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    return x

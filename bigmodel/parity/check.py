"""The role-and-chain checks, one loop shared by `bigmodel parity` and export's verification.

A model under test (anything with `run(role, feeds) -> {output: array}`, e.g. a runtime `Model`)
runs every target (a role, or a chain whose first role's first output feeds the next role's first
input, its other inputs taken by name from the first role's feeds) on every probe set at batch 1
and N; a reference gives the expected outputs; `stats.compare` judges each
output with the tolerance table's rule for its kind and probe set. Parity's reference is the
PyTorch model; export's is the bundle's fp32 ONNX graphs (themselves checked against PyTorch).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from bigmodel.manifest import Manifest
from bigmodel.parity.feeds import Feeds, chain_feeds
from bigmodel.parity.inputs import target_name
from bigmodel.parity.report import Case
from bigmodel.parity.stats import compare
from bigmodel.parity.tolerances import STRESS_PROBES, Tolerance, rule
from bigmodel.progress import Progress, ProgressFn

# (target, (probe, batch), the first role's feeds) -> the last role's outputs, in the manifest's order
Reference = Callable[[tuple[str, ...], tuple[str, int], Feeds], list[np.ndarray]]


def run_target(model, manifest: Manifest, target: tuple[str, ...], feeds: Feeds) -> dict[str, np.ndarray]:
    """The target through `model.run`, role by role (a chain feeds the first output on)."""
    out: dict[str, np.ndarray] = {}
    step = feeds
    for i, role in enumerate(target):
        spec = manifest.roles[role]
        if i:
            step = chain_feeds(spec, out[manifest.roles[target[i - 1]].outputs[0].name], feeds)
        out = model.run(role, step)
    return out


def model_reference(model, manifest: Manifest) -> Reference:
    """A reference from another model with `run` (export: the fp32 graphs), cached per input."""
    cache: dict[tuple, list[np.ndarray]] = {}

    def reference(target: tuple[str, ...], key: tuple[str, int], feeds: Feeds) -> list[np.ndarray]:
        if (target, key) not in cache:
            out = run_target(model, manifest, target, feeds)
            cache[target, key] = [out[t.name] for t in manifest.roles[target[-1]].outputs]
        return cache[target, key]

    return reference


def check_targets(model, reference: Reference, manifest: Manifest, targets: list[tuple[str, ...]],
                  feeds: dict[tuple[str, str], list[Feeds]], tol: dict[str, Tolerance],
                  progress: ProgressFn | None = None, label: str = "") -> list[Case]:
    """Every target on every probe set and batch: one `Case` each, outputs judged by `compare`.

    progress: Progress("parity", "LABEL TARGET PROBE batch N", done, total) before each check.
    """
    cases: list[Case] = []
    total = sum(len(v) for (t, _), v in feeds.items() if t in {target_name(x) for x in targets})
    for target in targets:
        tname = target_name(target)
        last = manifest.roles[target[-1]]
        for (fname, probe), batches in feeds.items():
            if fname != tname:
                continue
            for f in batches:
                batch = len(next(iter(f.values())))
                if progress:
                    progress(Progress("parity", f"{label} {tname} {probe} batch {batch}".strip(), len(cases), total))
                got = run_target(model, manifest, target, f)
                want = reference(target, (probe, batch), f)
                outs = [compare(got[t.name], w, t.kind, rule(tol, t.kind, probe), manifest.data.value_range, t.name)
                        for t, w in zip(last.outputs, want, strict=True)]
                cases.append(Case(tname, probe, batch, outs, stress=probe in STRESS_PROBES))
    return cases


def tolerance_used(cases: list[Case]) -> float:
    """The largest share of its tolerance any output used: <= 1 means every check passed."""
    return max((o.used for c in cases for o in c.outputs), default=0.0)


def failure_lines(cases: list[Case], prefix: str = "") -> list[str]:
    """One line per failure: role or chain, output, inputs, statistic, index, both values."""
    return [f"{prefix}{c.target} output {o.output!r} ({o.kind}; {c.probe} inputs, batch {c.batch}): {f.describe()}"
            for c in cases for o in c.outputs for f in o.failures]


def error_summary(cases: list[Case]) -> dict[str, float]:
    """Error figures over cases: in-distribution max/mean abs, min PSNR and cosine; the same on stress inputs.

    What export reports per role and precision (`quality` in the manifest); `tolerance_used` <= 1 passes.
    """
    def over(selected: list[Case], suffix: str) -> dict[str, float]:
        outs = [o for c in selected for o in c.outputs if o.stats]
        if not outs:
            return {}
        d = {f"max_abs{suffix}": max(o.stats["max_abs"] for o in outs),
             f"cosine{suffix}": min(o.stats["cosine"] for o in outs)}
        if not suffix:
            d["mean_abs"] = float(np.mean([o.stats["mean_abs"] for o in outs]))
        psnr = [o.stats["psnr"] for o in outs if "psnr" in o.stats]
        if psnr:
            d[f"psnr_db{suffix}"] = min(psnr)
        return d

    summary = {**over([c for c in cases if not c.stress], ""), **over([c for c in cases if c.stress], "_stress")}
    summary["tolerance_used"] = tolerance_used(cases)
    return {k: (v if math.isfinite(v) else str(v)) for k, v in summary.items()}

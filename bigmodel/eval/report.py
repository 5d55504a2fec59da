"""The report for a person: (metric, value, note) rows, and the rows of a comparison."""

from __future__ import annotations

import math
from typing import Any

NOTES = {
    "reconstruction.bce": "nats/image, decode(encode(x)) logits vs x",
    "reconstruction.mse": "squared error summed per image",
    "nll.nelbo": "-ELBO, nats/image",
    "nll.iwae": "importance-weighted NLL bound, nats/image",
    "fid": "lower is better; bootstrap error",
    "precision": "share of samples on the data manifold",
    "recall": "share of data covered by samples",
    "label_agreement": "share of samples the feature net puts in the class they were drawn for",
}


def summary_rows(r: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(metric, value, note) rows of one report, in reading order."""
    rows = []
    if "reconstruction" in r:
        rows += [("reconstruction BCE", f"{r['reconstruction']['bce']:.2f}", NOTES["reconstruction.bce"]),
                 ("reconstruction MSE", f"{r['reconstruction']['mse']:.2f}", NOTES["reconstruction.mse"])]
    if "nll" in r:
        n = r["nll"]
        rows += [("-ELBO", f"{n['nelbo']:.2f}", f"{NOTES['nll.nelbo']}, {n['images']} images"),
                 (f"IWAE NLL (K={n['k']})", f"{n['iwae']:.2f}", NOTES["nll.iwae"])]
    if "samples" in r:
        ref = r["reference"]
        rows += [("samples", str(r["samples"]), "generated: the model's side of FID, KID, precision/recall"),
                 ("reference images", str(ref["images"]), f"the real side: {ref['source']}")]
    if "fid" in r:
        rows += [("FID", plus_minus(r["fid"], r["fid_se"]),
                  f"{NOTES['fid']}; validation images vs the reference: {r['fid_floor']:.2f}"),
                 ("KID", plus_minus(r["kid"], r["kid_se"]), "unbiased, lower is better; validation images vs the "
                  f"reference: {plus_minus(r['kid_floor'], r['kid_floor_se'])}")]
    if "precision" in r:
        rows += [("precision", f"{r['precision']:.3f}", NOTES["precision"]),
                 ("recall", f"{r['recall']:.3f}", NOTES["recall"])]
    if "label_agreement" in r:
        rows.append(("label agreement", f"{r['label_agreement']:.3f}", NOTES["label_agreement"]))
    if "coverage" in r:
        rare = r["rare_classes"]
        rows.append(("classes >= 1%", f"{len(r['coverage']) - len(rare)}/{len(r['coverage'])}",
                     "below 1%: " + ", ".join(map(str, rare)) if rare else "every class drawn"))
    if r.get("classifier"):
        rows.append(("feature net accuracy", f"{r['classifier']['accuracy']:.3f}",
                     ("cached " if r["classifier"]["cached"] else "trained, cached at ") + r["classifier"]["cache"]))
    return rows


def plus_minus(value: float, error: float) -> str:
    """'189.04 ± 2.9': the value to the error's second significant digit (at least 2 decimals)."""
    decimals = 2 if not error > 0 else min(6, max(2, 1 - math.floor(math.log10(error))))
    return f"{value:.{decimals}f} ± {error:.{decimals}f}"


def skipped_lines(r: dict[str, Any]) -> list[str]:
    """'skipped METRIC: why' for each metric the report does not hold."""
    return [f"skipped {metric}: {why}" for metric, why in r.get("skipped", {}).items()]


def compare_rows(deltas: dict[str, dict[str, float | None]]) -> list[tuple[str, str, str, str]]:
    """(metric, this, other, other - this) rows; '-' where a side lacks the metric."""
    def cell(v: float | None) -> str:
        return "-" if v is None else f"{v:.3f}"

    return [(k, cell(d["this"]), cell(d["other"]), "-" if d["delta"] is None else f"{d['delta']:+.3f}")
            for k, d in deltas.items()]

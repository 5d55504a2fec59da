"""What each reduced precision costs, per family: error against the fp32 graphs, nodes kept in float, export time.

For every run (family x arch, trained here with `bigmodel train F --arch A --epochs E` when its
folder is missing) and every precision -- fp16, int8 static, int8 dynamic, int8 weight-only --
exports a bundle with `export_bundle` (which verifies it with `bigmodel parity`'s checks against
the fp32 graphs, searching calibration methods and nodes kept in float for int8), then runs
`run_parity` (ort-cpu, against PyTorch) on it. Prints one table row per run and precision: the
export's verdict, parity's verdict, in-distribution max abs error and min PSNR (images), the same
on stress inputs (noise images, ±4σ codes), the share of tolerance used, the calibration method and
nodes kept in float ("+stress": calibrated with ±4σ codes / noise images added), and the export
time. A failing export is a row too (`refused`), never a crash.

    python benchmarks/precision_table.py [--archs mlp,conv] [--families ae,vae,gan,aae] [--epochs 3]
                                         [--runs DIR] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PRECISIONS = (("fp16", "static"), ("int8", "static"), ("int8", "dynamic"), ("int8", "weights"))


def train(run: Path, family: str, arch: str, epochs: int) -> None:
    if (run / "checkpoint.pt").is_file():
        return
    subprocess.run([sys.executable, "-m", "bigmodel", "train", family, "--arch", arch, "--epochs", str(epochs),
                    "--out", str(run)], check=True, capture_output=True)


def measure(run: Path, precision: str, mode: str, out: Path) -> dict:
    from bigmodel.errors import CheckFailed
    from bigmodel.export import ExportOptions, export_bundle
    from bigmodel.parity import run_parity

    t0 = time.perf_counter()
    row: dict = {"precision": precision if precision == "fp16" else f"int8 {mode}"}
    try:
        result = export_bundle(run, ExportOptions(out=out, precision=precision, int8_mode=mode, force=True))
    except CheckFailed as e:
        row.update(export="refused", seconds=time.perf_counter() - t0, reason=str(e)[:300])
        return row
    row.update(export="pass", seconds=time.perf_counter() - t0, quality=result.quality)
    report = run_parity(out, checkpoint=run / "checkpoint.pt", backends="ort-cpu")
    row["parity"] = "pass" if report.passed else f"FAIL ({len(report.failures())})"
    return row


def summary(row: dict) -> list[str]:
    q = row.get("quality", {})

    def worst(key: str, pick=max) -> str:
        vals = [v[key] for v in q.values() if isinstance(v.get(key), float)]
        return f"{pick(vals):.3g}" if vals else "-"

    kept = sum(len(v.get("kept_float") or []) for v in q.values())
    methods = sorted({v["calibration"] + ("+stress" if "stress" in (v.get("calibration_set") or "") else "")
                      for v in q.values() if v.get("calibration")})
    return [row["precision"], row["export"], row.get("parity", "-"), worst("max_abs"), worst("psnr_db", min),
            worst("max_abs_stress"), worst("psnr_db_stress", min), worst("tolerance_used"), str(kept),
            "/".join(methods) or "-", f"{row['seconds']:.1f}"]


HEAD = ["precision", "export", "parity", "max abs", "PSNR dB", "stress max", "stress PSNR", "tol used",
        "kept float", "calibration", "export s"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--families", default="ae,vae,gan,aae")
    ap.add_argument("--archs", default="mlp,conv")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--runs", type=Path, default=None, help="folder of FAMILY-ARCH run dirs (made when missing)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    runs = args.runs or Path(tempfile.mkdtemp(prefix="precision_table."))
    work = Path(tempfile.mkdtemp(prefix="precision_bundles."))
    rows = []
    print(f"runs in {runs}; {os.cpu_count()} CPUs; load {os.getloadavg()[0]:.2f}")
    try:
        for arch in args.archs.split(","):
            for family in args.families.split(","):
                run = runs / f"{family}-{arch}"
                train(run, family, arch, args.epochs)
                for precision, mode in PRECISIONS:
                    row = measure(run, precision, mode, work / f"{family}-{arch}-{precision}-{mode}")
                    row["model"] = f"{family}-{arch}"
                    rows.append(row)
                    print(" | ".join([row["model"], *summary(row)]), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print()
    print("| model | " + " | ".join(HEAD) + " |")
    print("|" + "---|" * (len(HEAD) + 1))
    for row in rows:
        print("| " + " | ".join([row["model"], *summary(row)]) + " |")
    print(f"load after: {os.getloadavg()[0]:.2f}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()

"""One-line answers from the JSON files gpu_check.sh writes (so the shell script holds no Python).

    python benchmarks/gpu_check_json.py doctor DOCTOR_JSON            -> backends that can run here
    python benchmarks/gpu_check_json.py parity-skips PARITY_JSON A,B  -> required backends parity skipped
    python benchmarks/gpu_check_json.py parity-ran PARITY_JSON        -> what ran, at which tolerances
    python benchmarks/gpu_check_json.py bench-skips BENCH_JSON A,B    -> required backends bench skipped
"""

from __future__ import annotations

import json
import sys


def answer(what: str, path: str, required: str = "") -> str:
    with open(path, encoding="utf-8") as f:
        d = json.load(f)
    need = [n for n in required.split(",") if n]
    if what == "doctor":
        return "backends here: " + ", ".join(b["name"] for b in d.get("backends", []) if b["ok"])
    if what == "parity-skips":
        return "; ".join(f"{b['backend']}: {b['reason']}" for b in d["backends"]
                         if b["status"] == "skipped" and b["backend"] in need)
    if what == "parity-ran":
        ran = ", ".join(b["backend"] for b in d["backends"] if b["status"] == "ran")
        return f"{ran} within {d['tolerance_precision']} tolerances"
    if what == "bench-skips":
        return "; ".join(f"{s['backend']}: {s['reason']}" for s in d["skipped"] if s["backend"] in need)
    raise SystemExit(f"unknown question {what!r}")


if __name__ == "__main__":
    print(answer(*sys.argv[1:4]))

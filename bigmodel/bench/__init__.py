"""Latency/throughput harness: every backend side by side, torch eager as the baseline, one process.

One adapter per backend: `open()` (timed: checkpoint load or session/engine build) and
`runner(role, batch)` (the first call is timed as the cold first inference, then warm-up; then the
backends of the cell take turns in alternating rounds of timed runs, each synchronised: the harness
in `bigmodel.bench.timing`, shared with `bigmodel tune` and benchmarks/). Inputs come from the
manifest (images: uniform in [0, 1); latents: standard normal), drawn once per (role, batch) by a
seeded numpy Generator and shared by every backend. Speed-up = torch p50 / backend p50 for the same role and batch.

>>> report = run_bench("runs/vae/bundle", BenchSettings(batch_sizes=(1, 256), duration=1.0))
>>> report["results"][0]["warm"]["p50"]
"""

from bigmodel.bench.report import parse_list, write_plot
from bigmodel.bench.run import BenchSettings, run_bench

# The public API; the parts (adapters, stats, report tables) are imported from their modules.
__all__ = ["BenchSettings", "parse_list", "run_bench", "write_plot"]

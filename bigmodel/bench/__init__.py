"""Latency/throughput harness: every backend side by side, torch eager as the baseline, one process.

One adapter per backend: `open()` (timed: checkpoint load or session/engine build) and
`runner(role, batch)` (the first call is timed as the cold first inference, then warm-up, then
timed iterations, each synchronised). Inputs come from the manifest (images: uniform in [0, 1);
latents: standard normal), drawn once per (role, batch) by a seeded numpy Generator and shared by
every backend. Speed-up = torch p50 / backend p50 for the same role and batch.

>>> report = run_bench("runs/vae/bundle", BenchSettings(batch_sizes=(1, 256), duration=1.0))
>>> report["results"][0]["warm"]["p50"]
"""

from bigmodel.bench.adapters import (
    ALL_BACKENDS,
    RUNTIME_BACKENDS,
    TORCH_BACKENDS,
    RuntimeAdapter,
    TorchAdapter,
    gpu_presence,
    has_gpu,
    role_inputs,
    unavailable,
)
from bigmodel.bench.report import TABLE_COLUMNS, TableRow, parse_list, table_rows, write_plot
from bigmodel.bench.run import DEFAULT_BACKENDS, BenchEvent, BenchSettings, machine_info, measure, run_bench
from bigmodel.bench.stats import NOISY_CV, STAT_KEYS, add_speedups, percentile, summarize

__all__ = ["ALL_BACKENDS", "BenchEvent", "BenchSettings", "DEFAULT_BACKENDS", "NOISY_CV", "RUNTIME_BACKENDS",
           "STAT_KEYS", "TABLE_COLUMNS", "TORCH_BACKENDS", "RuntimeAdapter", "TableRow", "TorchAdapter",
           "add_speedups", "gpu_presence", "has_gpu", "machine_info", "measure", "parse_list", "percentile",
           "role_inputs", "run_bench", "summarize", "table_rows", "unavailable", "write_plot"]

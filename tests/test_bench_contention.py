"""bench under contention: busy processes on every core flag every cell, and no speed-up comes from a
side that ran slower on its threads than on one. No timed assertions: the flags, not the figures."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from bigmodel.bench import BenchSettings, run_bench
from bigmodel.bench import contention as c
from bigmodel.bench.report import contention_lines, speed_cell
from bigmodel.bench.stats import withhold_collapsed


def test_others_runnable_reads_the_run_queue_less_this_process(tmp_path):
    (tmp_path / "stat").write_text("cpu  1 2 3\nprocs_running 7\nprocs_blocked 0\n")
    for i, state in enumerate(("R", "S", "R", "S")):
        task = tmp_path / "self" / "task" / str(100 + i)
        task.mkdir(parents=True)
        task.joinpath("stat").write_text(f"{100 + i} (py thon) x) {state} 1 2 3\n")  # a name with ') ' in it
    assert c.others_runnable(tmp_path) == 5
    (tmp_path / "stat").write_text("cpu  1 2 3\n")
    assert c.others_runnable(tmp_path) is None


def test_verdict_names_the_collapsed_side_and_withholds_its_speedup():
    # the cell: torch 33.45 ms on 2 threads, 0.3 ms on one; onnxruntime 0.118 ms, 0.111 ms on one
    cell = c.verdict([3, 4], threads=2, cpus=2, spreads={"torch": 1.4, "ort-cpu": 1.1},
                     p50={"torch": 33.45e-3, "ort-cpu": 0.118e-3},
                     one_thread_p50={"torch": 0.3e-3, "ort-cpu": 0.111e-3})
    assert cell["unreliable"] and cell["collapsed"] == ["torch"]
    assert cell["reasons"][0] == "4 runnable threads of other processes on 2 CPUs (and 2 of ours)"
    assert cell["reasons"][1] == "torch ran 111.5x slower on 2 threads than on 1"
    row = {"backend": "ort-cpu", "role": "decoder", "batch": 16, "speedup_vs_torch": 283.5,
           "speedup_paired_vs_torch": 280.0, "contention": cell}
    withhold_collapsed(row, cell)
    assert row["speedup_vs_torch"] is None and row["speedup_paired_vs_torch"] is None
    assert row["speedup_withheld"] == "torch collapsed on 2 threads"
    assert row["speedup_one_thread_vs_torch"] == pytest.approx(0.3 / 0.111)
    assert speed_cell(row) == "- ?"
    lines = contention_lines({"results": [row]})
    assert "decoder batch 16: 4 runnable threads" in lines[1]
    assert lines[2].endswith("torch collapsed on 2 threads; with one thread each, ort-cpu is 2.70x torch")


def test_a_quiet_cell_is_reliable_and_keeps_its_speedup():
    cell = c.verdict([0, 1], threads=2, cpus=4, spreads={"torch": 1.5, "ort-cpu": 1.2},
                     p50={"torch": 0.2e-3, "ort-cpu": 0.1e-3}, one_thread_p50=None)
    assert not cell["unreliable"] and cell["reasons"] == [] and cell["collapsed"] == []
    assert not c.needs_control(1, 2, 4, {"torch": 1.5})
    assert c.needs_control(1, 2, 4, {"torch": 3.5})  # the rounds disagree: measure the control
    assert not c.needs_control(5, 1, 2, {"torch": 3.5})  # one thread: nothing to collapse
    row = {"backend": "ort-cpu", "speedup_vs_torch": 2.0, "speedup_paired_vs_torch": 2.1}
    withhold_collapsed(row, cell)
    assert row["speedup_vs_torch"] == 2.0 and not row["unreliable"] and row["speedup_withheld"] is None
    assert speed_cell(row) == "2.00x" and contention_lines({"results": [row]}) == []


@pytest.fixture
def busy_machine():
    """A busy loop per CPU we may use, plus one: every core is taken while the test runs."""
    n = c.cpus_available() + 1
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
    try:
        deadline = time.monotonic() + 20  # wait for the scheduler to see them (not a timing assertion)
        while time.monotonic() < deadline and (c.sample_others() or 0) < n - 1:
            time.sleep(0.1)
        yield n
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait()


def test_bench_under_made_contention_flags_every_cell(exported, busy_machine):
    bundle: Path = exported("vae")
    settings = BenchSettings(backends=("torch", "ort-cpu"), roles=("decoder",), batch_sizes=(1, 16), warmup=2,
                             iters=20, threads=2, roofline=False)
    report = run_bench(bundle, settings)
    results = report["results"]
    assert {(r["backend"], r["batch"]) for r in results} == {(b, n) for b in ("torch", "ort-cpu") for n in (1, 16)}
    for r in results:
        cell = r["contention"]
        assert r["unreliable"] and cell["unreliable"], cell
        assert "runnable threads of other processes" in cell["reasons"][0]
        assert set(cell["one_thread_p50"]) == {"torch", "ort-cpu"}  # the control ran for both sides
        if r["backend"] == "torch":
            continue
        gone = {"torch", "ort-cpu"} & set(cell["collapsed"])
        # never a ratio from a collapsed side; where one collapsed, the one-thread ratio stands in
        assert (r["speedup_vs_torch"] is None) == bool(gone), (r["speedup_vs_torch"], cell)
        assert r["speedup_one_thread_vs_torch"] == pytest.approx(
            cell["one_thread_p50"]["torch"] / cell["one_thread_p50"]["ort-cpu"])
        assert speed_cell(r).endswith(" ?")
    lines = contention_lines(report)
    assert lines and lines[0].startswith("'?': measured while the machine was busy")

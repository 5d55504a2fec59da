"""Everything the `bigmodel` command line shows: consoles, progress bars, tables and summaries.

The commands in `bigmodel/cli/` parse, call one library function and hand its result to a function here;
rich is imported inside each function, so importing this module costs nothing.
"""

from __future__ import annotations

from pathlib import Path

PARITY_SHOWN = 12  # failure lines printed; --json has every one


def console():
    from rich.console import Console

    return Console(stderr=False, highlight=False)


def wide_console():
    from rich.console import Console

    return Console(stderr=False, highlight=False, width=160)


def table_console():
    """The terminal's width on a terminal; 160 columns when the output goes to a file or pipe."""
    from rich.console import Console

    console = Console(highlight=False)
    return console if console.is_terminal else Console(highlight=False, width=160)


def error(message: str) -> None:
    from rich.console import Console
    from rich.markup import escape

    # escape: messages carry things like "pip install 'bigmodel[gpu]'" that rich would eat as markup
    Console(stderr=True, highlight=False).print(f"[red]error:[/red] {escape(message)}", soft_wrap=True)


class TrainProgress:
    """A rich progress bar fed by the training loop's `Progress` callback, refreshed ~10x a second."""

    def __init__(self, console):
        self.console = console

    def __enter__(self):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.bar = Progress(
            TextColumn("epoch {task.fields[epoch]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeRemainingColumn(),
            console=self.console,
            refresh_per_second=8,
            transient=False,
        )
        self.bar.__enter__()
        self.task = None
        self.last = 0.0
        return self.report

    def report(self, p) -> None:
        import time

        if self.task is None or p.batch == 1 and not p.done:
            if self.task is not None:
                self.bar.remove_task(self.task)
            self.task = self.bar.add_task("train", total=p.batches, epoch=f"{p.epoch}/{p.epochs}", info="")
        now = time.perf_counter()
        if p.done:
            val = " ".join(f"{k}={v:.4g}" for k, v in p.record["val"].items())
            self.bar.update(self.task, completed=p.batches, info=f"val {val} | {p.samples_per_s:,.0f} samples/s")
            self.bar.console.print(
                f"epoch {p.epoch}/{p.epochs}: {val}  ({p.record['seconds']:.1f}s, {p.samples_per_s:,.0f} samples/s)"
            )
            self.bar.remove_task(self.task)
            self.task = None
        elif now - self.last > 0.1 or p.batch == p.batches:
            self.last = now
            losses = " ".join(f"{k}={float(v):.4g}" for k, v in p.losses.items())
            self.bar.update(self.task, completed=p.batch, info=f"{losses} | {p.samples_per_s:,.0f} samples/s")

    def __exit__(self, *exc):
        self.bar.__exit__(*exc)
        return False


def quality_cell(precision: str, q: dict | None) -> str:
    """One role's cost of fp16/int8: errors against the fp32 graphs, tolerance used, int8 choices."""
    if not q:
        return ""

    def num(key: str, fmt: str) -> str:
        v = q.get(key)
        return format(v, fmt) if isinstance(v, float) else str(v)

    cell = f"  {precision} vs fp32: max {num('max_abs', '.2e')} mean {num('mean_abs', '.2e')}"
    cell += f" PSNR {num('psnr_db', '.1f')} dB" if "psnr_db" in q else ""
    cell += f" (noise/±4σ max {num('max_abs_stress', '.2e')})" if "max_abs_stress" in q else ""
    cell += f", {num('tolerance_used', '.0%')} of tolerance"
    if q.get("calibration"):
        cell += f", calibration {q['calibration']}"
    if q.get("kept_float"):
        cell += f", kept in float: {', '.join(q['kept_float'])}"
    return cell


def checked_err(report) -> float:
    """Max |onnx - torch| over the inputs the 1e-5 bound applies to (validation images, prior, ±4σ)."""
    from bigmodel.export.options import ABS_CHECKED

    return max((v for k, v in report.max_abs_err.items() if k in ABS_CHECKED), default=0.0)


def parity_table(report, run):
    """One backend's checks: a row per role or chain, probe set, batch and output."""
    from rich.table import Table

    def e(v):
        return "" if v is None else f"{v:.1e}"

    tol = report.tolerance_precision
    table = Table(
        "role / chain",
        "output",
        "inputs",
        "max abs",
        "mean abs",
        "max rel",
        "1 - cos",
        "image / logit",
        "verdict",
        box=None,
        header_style="bold",
        title_justify="left",
        pad_edge=False,
        title=f"{run.backend} vs PyTorch, {report.family}/{report.arch} {report.bundle_precision} bundle, "
        f"{tol} tolerances ({run.seconds:.1f}s)",
    )
    for column in table.columns:
        column.no_wrap = True
    relaxed = any(t.stress is not None for t in report.tolerances.values())
    if relaxed:
        table.caption = (
            "* stress inputs (±4σ codes, noise images) lie outside the calibrated range and are held "
            f"to the {tol} stress rule (see TOLERANCES)"
        )
        table.caption_justify = "left"
    as_p = report.tolerances.get("logit") is not None and report.tolerances["logit"].probability
    if as_p:
        table.caption = (table.caption + "\n" if table.caption else "") + (
            "(p): discriminator logits compared as probabilities, sigmoid(logit)"
        )
        table.caption_justify = "left"
    last = None
    for c in run.cases:
        for o in c.outputs:
            s = o.stats
            if "psnr" in s:
                extra = f"{s['psnr']:.1f} dB, {s['uint8_changed']:.2%} u8"
            elif "sign_agreement" in s:
                extra = f"sign {s['sign_agreement']:.1%}"
            else:
                extra = ""
            verdict = (
                "[green]pass[/green]"
                if o.passed
                else "[red]FAIL " + ",".join(f.statistic for f in o.failures) + "[/red]"
            )
            cos = s.get("cosine")
            inputs = f"{c.probe} x{c.batch}" + ("*" if relaxed and c.stress else "")
            name = f"{o.output} (p)" if as_p and o.kind == "logit" else o.output
            table.add_row(
                c.target if c.target != last else "",
                name,
                inputs,
                e(s.get("max_abs")),
                e(s.get("mean_abs")),
                e(s.get("max_rel")),
                e(None if cos is None else 1 - cos),
                extra,
                verdict,
            )
            last = c.target
    return table


class ParityProgress:
    """A transient rich progress bar fed by run_parity's (what, done, total) callback."""

    def __init__(self, console):
        self.console = console

    def __enter__(self):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        self.bar = None
        if not self.console.is_terminal:  # nothing to animate in a pipe or a log file
            return None
        self.bar = Progress(
            TextColumn("parity"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.description}"),
            console=self.console,
            transient=True,
        )
        self.bar.__enter__()
        self.task = None
        return self.report

    def report(self, what: str, done: int, total: int) -> None:
        if self.task is None:
            self.task = self.bar.add_task(what, total=total)
        self.bar.update(self.task, description=what, completed=done, total=total)

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.__exit__(*exc)
        return False


def print_verification(console, m: dict) -> None:
    """fp16/int8 bundles: export's check against the fp32 graphs, per role's cost, and any failures."""
    from rich.markup import escape

    v, quality = m["extra"].get("verification"), m["extra"].get("quality", {})
    if not v:
        return
    verdict = "[green]passed[/green]" if v.get("passed") else "[red]FAILED (written with --allow-failing)[/red]"
    console.print(
        f"{m['precision']} check at export against the fp32 graphs ({v.get('tolerances')} tolerances): {verdict}"
    )
    for role, q in quality.items():
        console.print(f"  {role}: {escape(quality_cell(m['precision'], q).strip())}", soft_wrap=True)
    failures = v.get("failures") or []
    for line in failures[:PARITY_SHOWN]:
        console.print(f"[red]FAIL[/red] {escape(line)}", soft_wrap=True)
    if len(failures) > PARITY_SHOWN:
        console.print(f"... and {len(failures) - PARITY_SHOWN} more (all in manifest.json, extra.verification)")


def check_cell(check: str) -> str:
    return "[green]ok[/green]" if check == "ok" else f"[red]{check}[/red]"


class BenchProgress:
    """A rich progress bar over the bench's (backend, role, batch) cells."""

    def __init__(self, console):
        self.console = console

    def __enter__(self):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.bar = Progress(
            TextColumn("bench"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.description}"),
            TimeElapsedColumn(),
            console=self.console,
            transient=True,
        )
        self.bar.__enter__()
        self.task = self.bar.add_task("starting", total=None)
        return self.report

    def report(self, event) -> None:
        self.bar.update(self.task, total=event.total, completed=event.done, description=event.what)

    def __exit__(self, *exc):
        self.bar.__exit__(*exc)
        return False


def bench_table(console, report) -> None:
    from rich.markup import escape
    from rich.table import Table

    from bigmodel.bench.report import TABLE_COLUMNS, table_rows
    from bigmodel.bench.stats import NOISY_CV

    s, m = report["settings"], report["machine"]
    where = m.get("gpu", {}).get("name") if s["device"].startswith("cuda") and m.get("gpu") else m.get("cpu")
    table = Table(
        *TABLE_COLUMNS,
        box=None,
        title=f"{s['family']}/{s['arch']} {s['precision']} on {s['device']} ({where}; {s['threads']} threads)",
        title_justify="left",
    )
    for col in table.columns[2:]:
        col.justify = "right"
    last = None
    for row in table_rows(report):
        if last is not None and (row.role, row.batch) != last:
            table.add_section()
        last = (row.role, row.batch)
        cells = list(row.cells)
        if row.noisy:
            cells[8] = f"[yellow]{cells[8]}[/yellow]"
        table.add_row(*cells)
    console.print(table)
    if any(r["noisy"] for r in report["results"]):
        console.print(
            f"[yellow]warning[/yellow]: cv > {NOISY_CV:.0%} marked '!': timings vary a lot (a busy or "
            "noisy machine); compare p50s with care, or rerun with a longer --duration"
        )
    load = m.get("load_average_1m")
    if load is not None and load > m.get("logical_cpus", 1):
        console.print(
            f"[yellow]warning[/yellow]: load average {load:.1f} on {m['logical_cpus']} CPUs while "
            "benchmarking: other processes compete for the cores, so these figures understate both sides"
        )
    if s["device"].startswith("cuda"):
        console.print(f"copies: {escape(s['copies_note'])}")
        for name, used in report.get("backend_settings", {}).items():
            if used:
                console.print(f"[dim]{name}: {escape(', '.join(f'{k}={v}' for k, v in used.items()))}[/dim]")
    from bigmodel.bench.roofline import ceiling_lines

    for line in ceiling_lines(report.get("roofline")):
        console.print(line, markup=False, soft_wrap=True)
    for sk in report["skipped"]:
        where = f" {sk['role']} batch {sk['batch']}" if "role" in sk else ""
        console.print(f"[dim]skipped {sk['backend']}{where}: {escape(sk['reason'])}[/dim]")


def quickstart_summary(console, s) -> None:
    from rich.markup import escape

    def say(line: str) -> None:
        console.print(line, soft_wrap=True)

    steps = ", ".join(f"{k} {v:.0f}s" for k, v in s.seconds.items())
    say(f"\n[green]quickstart done[/green] in {s.total_seconds:.0f}s ({steps})")
    val = "  ".join(f"{k} {v:.4g}" for k, v in s.validation.items())
    say(f"  run directory  {escape(str(s.out))}  (checkpoint.pt, samples.png, curves.png, metrics.jsonl)")
    say(f"  validation     {val}  after {s.epochs} epoch(s)")
    say(f"  bundle         {escape(str(s.bundle))}  (ONNX graphs + manifest.json)")
    say(f"  samples        {escape(str(s.files['samples']))}  (drawn by the runtime from the bundle, no torch)")
    verdict = (
        "[green]PASS[/green]: onnxruntime (CPU) matches PyTorch within fp32 tolerances"
        if s.parity_passed
        else "[red]FAIL[/red]: " + escape("; ".join(s.parity_failures[:3]))
    )
    say(f"  parity         {verdict}  ({escape(str(s.files['parity']))})")
    ups = ", ".join(f"{v:.2f}x at batch {b}" if v is not None else f"- at batch {b}" for b, v in s.speedups.items())
    say(f"  speed-up       onnxruntime over torch eager on {s.bench_role}: {ups}  ({escape(str(s.files['bench']))})")
    for backend, lat in s.latency_ms.items():
        say(f"                 {backend:8s} p50 " + ", ".join(f"{ms:.3f} ms @ {b}" for b, ms in lat.items()))
    if s.load_average is not None and s.cpus and s.load_average > s.cpus:
        say(
            f"  [yellow]warning[/yellow]: the machine was busy (load average {s.load_average:.1f} on {s.cpus} CPUs), "
            "so the speed-ups above are unreliable; rerun `bigmodel bench` when it is quiet"
        )
    console.print("next:")
    for cmd in s.next_commands:
        console.print(f"  {cmd}", markup=False, soft_wrap=True)


def print_export(console, result) -> None:
    """`bigmodel export`'s report: size, fp32 error against PyTorch per role, fp16/int8 verdict, engines."""
    from rich.markup import escape

    from bigmodel.export.options import FP32_ATOL

    m = result.manifest
    total = sum(r.bytes for r in result.roles)
    worst = max(checked_err(r) for r in result.roles)
    console.print(
        f"[green]exported[/green] {m.family}/{m.arch} {m.precision} -> {result.bundle} "
        f"({len(result.roles)} roles, {total / 1e6:.2f} MB, opset {m.opset}, {result.seconds:.1f}s)"
    )
    for r in result.roles:
        console.print(
            f"  {m.roles[r.role].file:<22} {r.bytes / 1e6:9.2f} MB  fp32 |onnx - torch| "
            f"{checked_err(r):.1e}{quality_cell(m.precision, result.quality.get(r.role))}",
            markup=False,
        )
    console.print(
        f"fp32 check: max |onnx - torch| = {worst:.2e} (allowed {FP32_ATOL:.0e}) on validation images, "
        "prior samples and ±4σ latents: [green]pass[/green]"
    )
    if m.precision != "fp32":
        verdict = "[red]FAILED[/red]" if result.failures else "[green]pass[/green]"
        console.print(
            f"{m.precision} check against the fp32 graphs (bigmodel parity's checks and "
            f"{m.precision} tolerances): {verdict}"
        )
        for line in result.failures[:PARITY_SHOWN]:
            console.print(f"[red]FAIL[/red] {escape(line)}", soft_wrap=True)
        if result.failures:
            console.print(
                f"[red]{len(result.failures)} failed check(s) recorded in {result.bundle}/manifest.json "
                "(--allow-failing)[/red]"
            )
    for e in m.engines:
        console.print(
            f"engine {e.file}: TensorRT {e.tensorrt_version}, sm{e.compute_capability}, {e.precision}, "
            f"batch {e.profile['min']}/{e.profile['opt']}/{e.profile['max']}"
        )
    if result.triton:
        console.print(f"Triton model repository: {result.triton}")
    console.print(f"next: bigmodel parity {result.bundle}")



def print_parity(console, report) -> None:
    """One table per backend that ran, then the skipped ones with the reason (and GPU node placement)."""
    wide = console if console.is_terminal else wide_console()
    for b in report.ran:
        wide.print(parity_table(report, b))
    for b in report.backends:
        if b.status == "skipped":
            console.print(f"skipped {b.backend}: {b.reason}", soft_wrap=True, markup=False)
        elif b.settings.get("placement"):
            console.print(f"{b.backend} nodes per provider: {b.settings['placement']}", soft_wrap=True, markup=False)



def print_parity_verdict(console, report) -> None:
    """The last lines of `bigmodel parity`: passed, or the first failures (--json has every one)."""
    if report.passed:
        console.print(f"[green]parity passed[/green]: {report.checks} checks on {report.where()}")
        return
    from rich.markup import escape

    messages = report.messages()
    for m in messages[:PARITY_SHOWN]:
        console.print(f"[red]FAIL[/red] {escape(m)}", soft_wrap=True)
    if len(messages) > PARITY_SHOWN:
        console.print(f"... and {len(messages) - PARITY_SHOWN} more failures (all of them in --json)")


def print_info(console, bundle: Path, d: dict) -> None:
    """`bigmodel info`: the bundle's header, roles, engines, export verification, versions, backends here."""
    from rich.table import Table

    m = d["manifest"]
    data, latent = m["data"], m["latent"]
    params = f" ({len(latent['params'].get('means', []))} components)" if latent["prior"] == "mixture" else ""
    console.print(
        f"[bold]{bundle}[/bold]: {m['family']}/{m['arch']}, precision {m['precision']}, "
        f"opset {m['opset']}, format {m['format_version']}"
    )
    console.print(
        f"data: {data['source']} {tuple(data['shape'])} in {tuple(data['value_range'])}   "
        f"latent: {latent['dim']}, prior {latent['prior']}{params}   methods: {', '.join(d['methods'])}"
    )
    console.print(f"prior: {latent['params'].get('source') or 'set by the model family (not fitted to data)'}")
    roles = Table("role", "file", "MB", "sha256", "inputs", "outputs", box=None, title="roles", title_justify="left")
    for name, r in d["roles"].items():
        ios = [
            ", ".join(f"{t['name']} {t['dtype']} ({', '.join(map(str, t['shape']))})" for t in r[k])
            for k in ("inputs", "outputs")
        ]
        roles.add_row(name, r["file"], f"{r['bytes'] / 1e6:.2f}", check_cell(r["check"]), *ios)
    console.print(roles)
    if d["engines"]:
        eng = Table(
            "role",
            "file",
            "precision",
            "TensorRT",
            "GPU",
            "profile min/opt/max",
            "sha256",
            "here",
            box=None,
            title="TensorRT engines",
            title_justify="left",
        )
        for e in d["engines"]:
            p = e["profile"]
            eng.add_row(
                e["role"],
                e["file"],
                e["precision"],
                e["tensorrt_version"],
                f"sm {e['compute_capability']} {e['device_name']}".strip(),
                f"{p.get('min')}/{p.get('opt')}/{p.get('max')}",
                check_cell(e["check"]),
                e["here"].split(":", 1)[0],
            )
        console.print(eng)
    else:
        console.print("TensorRT engines: none (build them on the target GPU with `bigmodel export RUN_DIR --engine`)")
    print_verification(console, m)
    console.print("versions: " + "  ".join(f"{k} {v}" for k, v in m["versions"].items()))
    console.print(
        "backends here: "
        + "  ".join(f"{k} [green]yes[/green]" if v is None else f"{k} [dim]no[/dim]" for k, v in d["backends"].items())
    )
    console.print("TF32 on the GPU: " + "; ".join(f"{k} {v}" for k, v in d.get("tf32", {}).items()), markup=False)
    if d.get("tuning"):
        tuning_table(console, d["tuning"])


def tuning_table(console, tuning: dict) -> None:
    """The tuning table (p50 ms per backend, the fastest marked) and whether it applies here."""
    from rich.table import Table

    t = tuning["table"]
    if t is None:
        console.print(f"[red]tuning table: {tuning['stale']}[/red]", soft_wrap=True)
        return
    m = t["machine"]
    state = "[green]applies here[/green]" if tuning["stale"] is None else f"[yellow]stale: {tuning['stale']}[/yellow]"
    table = Table("role", "batch", *[f"{b} ms" for b in t["backends"]], "fastest", box=None, title_justify="left",
                  title=f"tuning ({tuning['file']}: {m['cpu']}, {m['threads']} threads)")
    for role, cells in t["roles"].items():
        for batch, cell in cells.items():
            table.add_row(role, batch, *[f"{cell['p50_s'][b] * 1e3:.3f}" if b in cell["p50_s"] else "-"
                                         for b in t["backends"]], cell["best"])
    console.print(table)
    console.print(f"tuning table {state}", soft_wrap=True)



def print_doctor(report: dict) -> None:
    """`bigmodel doctor`: packages found, and each backend here or why not (and what installs it)."""
    from rich.markup import escape
    from rich.table import Table

    console = table_console()
    packages = Table("package", "version", "detail", box=None, title="found", title_justify="left")
    for p in report["packages"]:
        version = p["version"] if p["found"] else f"[red]{p['version'] or 'missing'}[/red]"
        packages.add_row(p["name"], version, escape(p["detail"]))
    console.print(packages)
    backends = Table("backend", "here", "why not / what installs it", box=None, title="backends", title_justify="left")
    for b in report["backends"]:
        backends.add_row(
            b["name"],
            "[green]yes[/green]" if b["ok"] else "[red]no[/red]",
            ""
            if b["ok"]
            else escape(b["why"])
            + ("" if "install" in b["why"] else f"\n[dim]install: {escape(b['extra'] or '')}[/dim]"),
        )
    console.print(backends)
    if report.get("error"):
        console.print(f"[red]doctor could not finish[/red]: {escape(report['error'])}")


def print_eval(console, path: Path, report: dict, samples: int) -> None:
    """One `bigmodel eval` report: a metric table and where the nearest-neighbour picture went."""
    from rich.table import Table

    from bigmodel.eval.report import summary_rows

    m, d = report["model"], report["data"]
    table = Table("metric", "value", "note", box=None, title_justify="left",
                  title=f"{path}: {m['family']}/{m['arch']} {m['precision']} on {m['backend']}, "
                        f"{d['images']} {d['source']} validation images, {samples} samples ({report['seconds']}s)")
    for row in summary_rows(report):
        table.add_row(*row)
    console.print(table)
    console.print(f"samples above their nearest training images: {report['picture']}", markup=False)


def print_eval_comparison(console, target: Path, compare: Path, deltas: dict) -> None:
    """`bigmodel eval --compare`: each metric on both sides and the difference."""
    from rich.table import Table

    from bigmodel.eval.report import compare_rows

    table = Table("metric", str(target), str(compare), "other - this", box=None, title="comparison",
                  title_justify="left")
    for row in compare_rows(deltas):
        table.add_row(*row)
    console.print(table)


def print_train(console, result) -> None:
    """The end of `bigmodel train`: the last validation losses and what to run next."""
    if not result.epochs_run:
        console.print(f"nothing to do: {result.out} already reached epoch {result.history[-1]['epoch']}")
        return
    last = result.history[-1]
    val = "  ".join(f"{k} {v:.4g}" for k, v in last["val"].items())
    console.print(f"[green]done[/green]: epoch {last['epoch']}  validation: {val}")
    console.print(f"run directory: {result.out}  (checkpoint.pt, metrics.jsonl, samples.png, curves.png)")
    console.print(f"next: bigmodel export {result.out}")


def models_lines(rows: list[dict]) -> list[str]:
    """Plain aligned columns, one line per model whatever the terminal width (a wrapped rich table would not be)."""
    cells = [("family", "arch", "roles", "latent", "description")]
    cells += [(r["family"], r["arch"], ", ".join(r["roles"]), str(r["latent_dim"]), r["description"]) for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(4)]
    return ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)) + "  " + row[4] for row in cells]

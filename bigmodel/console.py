"""Everything the `bigmodel` command line shows: consoles, progress bars, tables and summaries.

The commands in `bigmodel/cli/` parse, call one library function and hand its result to a function here;
rich is imported inside each function, so importing this module costs nothing.
"""

from __future__ import annotations

PARITY_SHOWN = 12  # failure lines printed; --json has every one

# What a character the terminal cannot show becomes (anything else unencodable: "?")
ASCII_FALLBACK = {"±": "+/-", "σ": "sigma", "μ": "u", "µ": "u", "—": "-", "–": "-", "…": "...", "→": "->",
                  "←": "<-", "×": "x", "≥": ">=", "≤": "<=", "≈": "~", "✓": "ok", "✗": "x", "•": "*", "‘": "'",
                  "’": "'", "“": '"', "”": '"', "━": "-", "─": "-", "│": "|", "█": "#", "°": " deg", "²": "^2"}
ASCII_ERRORS = "bigmodel-ascii"


def _ascii_fallback(e: UnicodeError):
    """codecs error handler: each character the stream's encoding cannot show -> its ASCII stand-in."""
    if not isinstance(e, UnicodeEncodeError):
        raise e
    return "".join(ASCII_FALLBACK.get(c, "?") for c in e.object[e.start:e.end]), e.end


def safe_output() -> None:
    """Make stdout and stderr degrade to ASCII (ASCII_FALLBACK) where their encoding cannot show a
    character, instead of raising UnicodeEncodeError after the work is done (PYTHONIOENCODING=ascii)."""
    import codecs
    import sys

    try:
        codecs.lookup_error(ASCII_ERRORS)
    except LookupError:
        codecs.register_error(ASCII_ERRORS, _ascii_fallback)
    for stream in (sys.stdout, sys.stderr):
        encoding = getattr(stream, "encoding", None)
        if encoding is None or not hasattr(stream, "reconfigure"):
            continue  # (a StringIO under test capture holds any character)
        try:
            "±σ→—".encode(encoding)
        except (UnicodeEncodeError, LookupError):
            stream.reconfigure(errors=ASCII_ERRORS)


def console():
    from rich.console import Console

    return Console(stderr=False, highlight=False)


def table_console():
    """The terminal's width on a terminal, or $COLUMNS; else 160 columns when the output goes to a file or pipe."""
    import os

    from rich.console import Console

    console = Console(highlight=False)
    return console if console.is_terminal or os.environ.get("COLUMNS") else Console(highlight=False, width=160)


def error(message: str) -> None:
    from rich.console import Console
    from rich.markup import escape

    # escape: messages carry things like "pip install 'bigmodel[gpu]'" that rich would eat as markup
    Console(stderr=True, highlight=False).print(f"[red]error:[/red] {escape(message)}", soft_wrap=True)


class TrainProgress:
    """A rich progress bar fed by the training loop's progress events, refreshed ~10x a second."""

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
        """Progress("train") after each batch, Progress("train:epoch") after each epoch's validation."""
        import time

        if p.stage == "train:note":  # a default fitted to the data, said before the first batch
            self.bar.console.print(f"note: {p.message}", markup=False, soft_wrap=True)
            return
        m = p.metrics
        epoch = f"{m['epoch']}/{m['epochs']}"
        if self.task is None or p.stage == "train" and p.done == 1:
            if self.task is not None:
                self.bar.remove_task(self.task)
            self.task = self.bar.add_task("train", total=p.total, epoch=epoch, info="")
        now = time.perf_counter()
        if p.stage == "train:epoch":
            val = " ".join(f"{k}={v:.4g}" for k, v in metric_group(m, "val").items())
            self.bar.update(self.task, completed=p.total, info=f"val {val} | {m['samples_per_s']:,.0f} samples/s")
            # one whole line per epoch (piped logs never split one); images/s as "img/s" keeps it near 80 columns
            self.bar.console.print(f"epoch {epoch}: {val}  ({m['seconds']:.1f}s, {m['samples_per_s']:,.0f} img/s)",
                                   soft_wrap=True)
            self.bar.remove_task(self.task)
            self.task = None
        elif now - self.last > 0.1 or p.done == p.total:
            self.last = now
            losses = " ".join(f"{k}={v:.4g}" for k, v in metric_group(m, "train").items())
            self.bar.update(self.task, completed=p.done, info=f"{losses} | {m['samples_per_s']:,.0f} samples/s")

    def __exit__(self, *exc):
        self.bar.__exit__(*exc)
        return False


def metric_group(metrics, group: str) -> dict[str, float]:
    """The "GROUP/NAME" entries of progress metrics (training's "train/loss", "val/kl"...) as {NAME: value}."""
    return {k.removeprefix(group + "/"): v for k, v in metrics.items() if k.startswith(group + "/")}


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


class ParityProgress:
    """A transient rich progress bar fed by run_parity's progress events (`done` of `total` checks)."""

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

    def report(self, p) -> None:
        if self.task is None:
            self.task = self.bar.add_task(p.message, total=p.total)
        self.bar.update(self.task, description=p.message, completed=p.done, total=p.total)

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.__exit__(*exc)
        return False


class BenchProgress:
    """A rich progress bar over the bench's (backend, role, batch) cells, fed by run_bench's progress events."""

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

    def report(self, p) -> None:
        self.bar.update(self.task, total=p.total, completed=p.done, description=p.message)

    def __exit__(self, *exc):
        self.bar.__exit__(*exc)
        return False


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
    notes = getattr(s, "speedup_notes", {})
    ups = ", ".join((f"{v:.2f}x" if v is not None else "-") + f" at batch {b}" + (" ?" if b in notes else "")
                    for b, v in s.speedups.items())
    say(f"  speed-up       onnxruntime over torch eager on {s.bench_role}: {ups}  ({escape(str(s.files['bench']))})")
    for b, note in notes.items():
        say(f"                 ? batch {b}: {escape(note)}")
    for backend, lat in s.latency_ms.items():
        say(f"                 {backend:8s} p50 " + ", ".join(f"{ms:.3f} ms @ {b}" for b, ms in lat.items()))
    if notes:
        say("  [yellow]warning[/yellow]: '?' speed-ups were measured while the machine was busy and are unreliable; "
            "rerun `bigmodel bench` when it is quiet")
    elif s.load_average is not None and s.cpus and s.load_average > s.cpus:
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
    forms = f" (+ {', '.join(m.forms)} forms)" if m.forms else ""
    console.print(
        f"[green]exported[/green] {m.family}/{m.arch} {m.precision}{forms} -> {result.bundle} "
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
    for precision in (p for p in m.precisions if p != "fp32"):
        failed = m.forms[precision].verification.get("failures") if precision in m.forms else result.failures
        verdict = "[red]FAILED[/red]" if failed else "[green]pass[/green]"
        console.print(
            f"{precision} check against the fp32 graphs (bigmodel parity's checks and "
            f"{precision} tolerances): {verdict}"
        )
    if m.precision != "fp32" or m.forms:
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


def print_train(console, result) -> None:
    """The end of `bigmodel train`: the last validation losses, whether it learned, and what to run next."""
    from rich.markup import escape

    if not result.epochs_run:
        console.print(f"nothing to do: {result.out} already reached epoch {result.history[-1]['epoch']}")
        return
    last = result.history[-1]
    val = "  ".join(f"{k} {v:.4g}" for k, v in last["val"].items())
    console.print(f"[green]done[/green]: epoch {last['epoch']}  validation: {val}")
    for warning in (result.learning or {}).get("warnings", []):
        console.print(f"[yellow]warning[/yellow]: {escape(warning)}; train longer (--epochs) or on more images",
                      soft_wrap=True)
    console.print(f"run directory: {result.out}  (checkpoint.pt, metrics.jsonl, samples.png, curves.png)")
    console.print(f"next: bigmodel export {result.out}")


def models_lines(rows: list[dict]) -> list[str]:
    """Plain aligned columns, one line per model whatever the terminal width (a wrapped rich table would not be)."""
    cells = [("family", "arch", "roles", "latent", "description")]
    cells += [(r["family"], r["arch"], ", ".join(r["roles"]), str(r["latent_dim"]), r["description"]) for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(4)]
    return ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)) + "  " + row[4] for row in cells]


def print_models(rows: list[dict]) -> None:
    """`bigmodel models`: one plain line per family/arch (stdout, no rich)."""
    for line in models_lines(rows):
        print(line)


def print_saved(console, label: str, path, markup: bool = False, soft_wrap: bool = False) -> None:
    """One 'LABEL: PATH' line for a file a command wrote besides its table (report, plot, inputs)."""
    console.print(f"{label}: {path}", markup=markup, soft_wrap=soft_wrap)


def print_sampled(console, paths: list, n: int, model, seed) -> None:
    """The line `bigmodel sample` ends with: the files written (grid first), what they hold, the backend."""
    console.print(f"wrote {', '.join(str(p) for p in paths)}: {n} samples of {model.family}/{model.manifest.arch}, "
                  f"seed {seed}, backend {model.backend_name}")


def print_encoded(console, out, codes, model) -> None:
    console.print(f"wrote {out}: codes {tuple(codes.shape)} float32 (backend {model.backend_name})")


def print_decoded(console, out, png, images, model) -> None:
    also = f" and {png}" if png else ""
    console.print(f"wrote {out}{also}: images {tuple(images.shape)} float32 (backend {model.backend_name})")


def export_steps(console):
    """A callback for `export_bundle(progress=...)`: each step's message, indented."""
    return lambda p: console.print(f"  {p.message}", markup=False)


def status_progress(status, prefix: str):
    """A callback that shows each progress message on a rich status line, after `prefix`."""
    return lambda p: status.update(f"{prefix}{p.message}")


def print_skipped(console, skipped: dict[str, str]) -> None:
    """`bigmodel tune`: the backends it could not time, and why."""
    from rich.markup import escape

    for name, reason in skipped.items():
        console.print(f"[dim]skipped {escape(name)}: {escape(reason)}[/dim]", soft_wrap=True)


class QuickstartProgress:
    """`bigmodel quickstart`'s screen: a '[i/n] step: message' line per step, a training bar during train.

    `report` takes every event of the run: "quickstart:STEP" starts a step, "train"/"train:epoch" feed the
    bar; the export, parity and bench steps' own events are not shown (their lines would drown the five).
    """

    def __init__(self, console):
        self.console = console
        self.bar = TrainProgress(console)
        self.train = None

    def report(self, p) -> None:
        from rich.markup import escape

        if p.stage.startswith("quickstart:"):
            self.close()
            name = p.stage.removeprefix("quickstart:")
            self.console.print(f"[bold]\\[{p.done + 1}/{p.total}] {name}[/bold]: {escape(p.message)}", soft_wrap=True)
            if name == "train":
                self.train = self.bar.__enter__()
        elif p.stage in ("train", "train:epoch", "train:note") and self.train is not None:
            self.train(p)

    def close(self) -> None:
        if self.train is not None:
            self.bar.__exit__(None, None, None)
            self.train = None


def print_serving(console, started) -> None:
    """The lines `bigmodel serve` prints once every model is loaded (tests and scripts wait for "ready")."""
    console.print(f"models   {', '.join(started.models)}", soft_wrap=True)
    console.print(f"http     {started.http}  (health: {started.http}/v2/health/ready)", soft_wrap=True)
    console.print(f"grpc     {started.grpc}", soft_wrap=True)
    console.print(f"metrics  {started.metrics}", soft_wrap=True)
    if started.libdir_fix:
        console.print(f"LD_LIBRARY_PATH starts with {started.libdir_fix} (this interpreter's libpython, for "
                      "Triton's Python stub)", soft_wrap=True)
    console.print("ready (Ctrl-C or SIGTERM stops)", soft_wrap=True)
    console.file.flush()

"""The command line's tables: parity per backend, bench, bundle info, doctor, eval (rich, imported inside each)."""

from __future__ import annotations

from pathlib import Path

from bigmodel.console import PARITY_SHOWN, quality_cell, table_console
from bigmodel.console import console as plain_console

PARITY_COLUMNS = ("role / chain", "output", "inputs", "max abs", "mean abs", "max rel", "1 - cos", "image / logit",
                  "verdict")
PARITY_OPTIONAL = ("image / logit", "mean abs", "1 - cos", "max rel")  # left out first when the terminal is narrow


def parity_table(report, run, width: int = 160):
    """One backend's checks: a row per role or chain, probe set, batch and output, fitted to `width` columns."""

    def e(v):
        return "" if v is None else f"{v:.1e}"

    tol = report.tolerance_precision
    relaxed = any(t.stress is not None for t in report.tolerances.values())
    captions = []
    if relaxed:
        captions.append("* stress inputs (±4σ codes, noise images) lie outside the calibrated range and are held "
                        f"to the {tol} stress rule (see TOLERANCES)")
    as_p = report.tolerances.get("logit") is not None and report.tolerances["logit"].probability
    if as_p:
        captions.append("(p): discriminator logits compared as probabilities, sigmoid(logit)")
    rows, last = [], None
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
            stats = [e(s.get(k)) for k in ("max_abs", "mean_abs", "max_rel")] + [e(None if cos is None else 1 - cos)]
            rows.append([c.target if c.target != last else "", name, inputs, *stats, extra, verdict])
            last = c.target
    title = (f"{run.backend} vs PyTorch, {report.family}/{report.arch} {report.bundle_precision} bundle, "
             f"{tol} tolerances ({run.seconds:.1f}s)")
    return fitted_table(PARITY_COLUMNS, rows, width, PARITY_OPTIONAL, title=title, captions=captions,
                        header_style="bold", pad_edge=False)


def fitted_table(headers, rows, width: int, optional, right_from: int | None = None, title: str = "",
                 captions=(), **kw):
    """A rich Table of `rows` that fits `width` columns: `optional` columns are left out, in order, until the
    rest fits (a caption names them: --json has every column). Cells never wrap, so numbers stay whole."""
    from rich.table import Table
    from rich.text import Text

    cells = [r for r in rows if r is not None]
    natural = [max([len(h), *(Text.from_markup(r[i]).cell_len for r in cells)]) + 2 for i, h in enumerate(headers)]
    keep = list(range(len(headers)))
    left_out = []
    for name in optional:
        if sum(natural[i] for i in keep) <= width:
            break
        keep.remove(headers.index(name))
        left_out.append(name)
    table = Table(*[headers[i] for i in keep], box=None, title=title, title_justify="left", **kw)
    for col, i in zip(table.columns, keep, strict=True):
        col.no_wrap = True
        if right_from is not None and i >= right_from:
            col.justify = "right"
    for r in rows:
        if r is None:
            table.add_section()
        else:
            table.add_row(*[r[i] for i in keep])
    if left_out:
        captions = [*captions, f"left out at {width} columns: {', '.join(left_out)} (--json has them)"]
    if captions:
        table.caption, table.caption_justify = "\n".join(captions), "left"
    return table


def print_parity(console, report) -> None:
    """One table per backend that ran, then the skipped ones with the reason (and GPU node placement)."""
    wide = table_console()
    for b in report.ran:
        wide.print(parity_table(report, b, wide.width))
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



BENCH_OPTIONAL = ("GB/s (%bw)", "GFLOP/s (%GEMM)", "p90 ms", "samples/s", "load ms", "p99 ms", "vs best",
                  "first ms")


def bench_table(console, report) -> None:
    from rich.markup import escape

    from bigmodel.bench.report import TABLE_COLUMNS, table_rows
    from bigmodel.bench.stats import NOISY_CV

    s, m = report["settings"], report["machine"]
    where = m.get("gpu", {}).get("name") if s["device"].startswith("cuda") and m.get("gpu") else m.get("cpu")
    rows, last = [], None
    for row in table_rows(report):
        if last is not None and (row.role, row.batch) != last:
            rows.append(None)  # a section line between (role, batch) groups
        last = (row.role, row.batch)
        cells = list(row.cells)
        if row.noisy:
            cells[8] = f"[yellow]{cells[8]}[/yellow]"
        rows.append(cells)
    title = f"{s['family']}/{s['arch']} {s['precision']} on {s['device']} ({where}; {s['threads']} threads)"
    headers = list(TABLE_COLUMNS)
    from bigmodel.bench.adapters import COMPILED_BACKENDS, TORCH_BACKENDS

    ran = {r["backend"] for r in report["results"]}
    if len(ran & set(TORCH_BACKENDS)) < 2:  # one torch-side form: "vs best torch" would repeat "vs torch"
        cut = headers.index("vs best")
        headers.pop(cut)
        rows = [None if r is None else r[:cut] + r[cut + 1:] for r in rows]
    captions = []
    if ran & set(COMPILED_BACKENDS):
        captions.append("first ms of torch-compile* includes compiling that role and batch, of aoti torch.export + "
                        "building its package at the role's first batch (build_s in --json)")
    table = fitted_table(headers, rows, console.width, [c for c in BENCH_OPTIONAL if c in headers], right_from=2,
                         title=title, captions=captions)
    if "vs best" in [c.header for c in table.columns]:
        best = "vs best: the fastest torch-side form's p50 / this p50"
        table.caption = best if not table.caption else f"{best}\n{table.caption}"
        table.caption_justify = "left"
    console.print(table)
    if any(r["noisy"] for r in report["results"]):
        console.print(
            f"[yellow]warning[/yellow]: cv > {NOISY_CV:.0%} marked '!': timings vary a lot (a busy or "
            "noisy machine); compare p50s with care, or rerun with a longer --duration"
        )
    from bigmodel.bench.report import contention_lines

    flagged = contention_lines(report)
    for i, line in enumerate(flagged):
        console.print(("[yellow]warning[/yellow]: " if i == 0 else "") + escape(line), soft_wrap=False)
    load = m.get("load_average_1m")
    if not flagged and load is not None and load > m.get("logical_cpus", 1):
        console.print(
            f"[yellow]warning[/yellow]: load average {load:.1f} on {m['logical_cpus']} CPUs while "
            "benchmarking, though no cell showed contention; compare with a run on a quiet machine"
        )
    if s["device"].startswith("cuda"):
        console.print(f"copies: {escape(s['copies_note'])}")
        for name, used in report.get("backend_settings", {}).items():
            if used:
                console.print(f"[dim]{name}: {escape(', '.join(f'{k}={v}' for k, v in used.items()))}[/dim]")
    from bigmodel.bench.roofline import ceiling_lines

    for line in ceiling_lines(report.get("roofline")):
        console.print(line, markup=False)
    for role, shares in (report.get("int8_flops_share") or {}).items():
        console.print(f"int8 kernels run {', '.join(f'{v:.0%} on {k}' for k, v in shares.items())} of the {role}'s "
                      "GEMM FLOPs (read at export from the engines' optimized graphs)", markup=False)
    for sk in report["skipped"]:
        where = f" {sk['role']} batch {sk['batch']}" if "role" in sk else ""
        console.print(f"[dim]skipped {sk['backend']}{where}: {escape(sk['reason'])}[/dim]")



def io_note(t: dict) -> str:
    """What a graph input or output says beyond name, dtype and shape: a label's classes, an image's own range."""
    if t.get("classes"):
        return f" {t['classes']} classes"
    return f" in [{t['range'][0]:g}, {t['range'][1]:g}]" if t.get("range") else ""


def reference_line(m: dict) -> str:
    """What parity, bench's torch baseline and eval compare against: the run's checkpoint, programs inside, or none."""
    ref = m.get("reference") or {"kind": "checkpoint", "programs": {}}
    if ref["kind"] == "checkpoint":
        sha = m.get("checkpoint_sha256") or "unrecorded"
        return f"reference: the run's checkpoint.pt beside the bundle (sha256 {sha[:12]})"
    if ref["kind"] == "torch.export":
        programs = ", ".join(f"{role} {f['file']} ({f['sha256'][:12]})" for role, f in ref["programs"].items())
        return f"reference: torch.export programs in the bundle: {programs}"
    return "reference: none (no PyTorch reference travels with this bundle: parity and bench's torch baseline refuse)"


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
        f"latent: {latent['dim']}{' as ' + str(tuple(latent['shape'])) if latent.get('shape') else ''}, "
        f"prior {latent['prior']}{params}   methods: {', '.join(d['methods'])}"
    )
    console.print(f"prior: {latent['params'].get('source') or 'set by the model family (not fitted to data)'}")
    console.print(reference_line(m), markup=False)
    # one tensor a line, shapes without spaces: 80 columns never split a shape
    roles = Table("role", "file", "MB", "sha256", "inputs and outputs", box=None, title="roles", title_justify="left")
    for name, r in d["roles"].items():
        ios = [f"{way} {t['name']} {t['dtype']} ({','.join(map(str, t['shape']))}){io_note(t)}"
               for way, k in (("in ", "inputs"), ("out", "outputs")) for t in r[k]]
        roles.add_row(name, r["file"], f"{r['bytes'] / 1e6:.2f}", check_cell(r["check"]), "\n".join(ios))
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
    for f in d.get("forms") or []:
        verdict = "pass" if f["passed"] else "FAILED (exported with --allow-failing)"
        used = f", {f['tolerance_used']:.0%} of tolerance used" if f["tolerance_used"] is not None else ""
        files = "" if f["check"] == "ok" else f"; files: {f['check']}"
        console.print(f"{f['precision']} form: verified against the fp32 graphs on {f['runs_on']}: {verdict}{used}"
                      f"{files}; load(..., precision={f['precision']!r})", markup=False, soft_wrap=False)
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
    forms = bool(t.get("form_graphs"))  # several precisions: a column per backend:precision, two-line headers
    cell_key, pick = ("forms_p50_s", "fastest") if forms else ("p50_s", "best")
    keys = sorted({k for cells in t["roles"].values() for c in cells.values() for k in c.get(cell_key, {})})
    heads = [k.replace(":", "\n") + " ms" if forms else f"{k} ms" for k in keys]
    table = Table("role", "batch", *heads, "fastest", box=None, title_justify="left",
                  title=f"tuning ({tuning['file']}: {m['cpu']}, {m['threads']} threads)")
    for role, cells in t["roles"].items():
        for batch, cell in cells.items():
            row = cell.get(cell_key, {})
            table.add_row(role, batch, *[f"{row[k] * 1e3:.3f}" if k in row else "-" for k in keys], cell[pick])
    console.print(table)
    console.print(f"tuning table {state}" + ("; precision='fastest' follows the fastest column"
                                             if forms else ""), soft_wrap=True)



def print_doctor(report: dict) -> None:
    """`bigmodel doctor`: packages found, and each backend here or why not (and what installs it)."""
    from rich.markup import escape
    from rich.table import Column, Table

    console = plain_console()  # the terminal's width, 80 columns when piped: cells wrap, rows stay whole
    packages = Table("package", Column("version", overflow="fold"), "detail", box=None, title="found",
                     title_justify="left")
    for p in report["packages"]:
        version = p["version"] if p["found"] else f"[red]{p['version'] or 'missing'}[/red]"
        packages.add_row(p["name"], version, escape(p["detail"]))
    console.print(packages)
    if report.get("cpu"):
        from bigmodel.doctor import cpu_line

        console.print(escape(cpu_line(report["cpu"])))
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



def print_eval(console, path: Path, report: dict) -> None:
    """One `bigmodel eval` report: a metric table and where the nearest-neighbour picture went."""
    from rich.table import Table

    from bigmodel.eval.report import summary_rows

    m, d = report["model"], report["data"]
    table = Table("metric", "value", "note", box=None, title_justify="left",
                  title=f"{path}: {m['family']}/{m['arch']} {m['precision']} on {m['backend']}, "
                        f"{d['images']} {d['source']} validation images ({report['seconds']}s)")
    for row in summary_rows(report):
        table.add_row(*row)
    console.print(table)
    from bigmodel.eval.report import skipped_lines

    for line in skipped_lines(report):
        console.print(line, markup=False, style="dim", soft_wrap=True)
    if "picture" in report:
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

"""Typer commands mounted by :mod:`ddsd.cli` as ``ddsd compare`` and ``ddsd report``.

``ddsd compare`` runs (or, with ``--plan``, prints) the grid methods x datasets x seeds and writes
``runs.csv``, ``table.md`` and ``plots/`` in ``--out``; ``--collect DIR`` rebuilds them from finished runs.
``ddsd report DIR`` writes one self-contained ``report.html``.
"""

from __future__ import annotations

import shlex
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from ddsd._errors import fail
from ddsd._io import LockedError, exclusive_lock
from ddsd.compare import grid as _grid
from ddsd.compare.grid import build_plan, dataset_label, parse_methods, parse_seeds, run_state, write_grid_meta
from ddsd.config import METHODS, ConfigError, RunConfig, apply_overrides, load_config
from ddsd.engine.interrupts import sigterm_as_interrupt

__all__ = ["compare_command", "report_command"]

console = Console(stderr=True)


def _fail(message: str, code: int = 2) -> typer.Exit:
    return fail(console, message, code)


def _command_line(**opts) -> str:
    """The canonical ``ddsd compare`` command of these options (recorded in table.md)."""
    argv = ["ddsd", "compare"]
    for key, value in opts.items():
        flag = "--" + key.replace("_", "-")
        if value is None or value is False or value == []:
            continue
        if value is True:
            argv.append(flag)
        elif isinstance(value, list):
            for v in value:
                argv += [flag, str(v)]
        else:
            argv += [flag, str(value)]
    return shlex.join(argv)


def compare_command(
    methods: Annotated[str, typer.Option(help=f"comma list of methods ({', '.join(METHODS)})")] = ",".join(METHODS),
    variant: Annotated[list[str] | None, typer.Option(
        "--variant", help='extra method column "label=method,section.key=value,..." (repeatable)',
        show_default="none")] = None,
    datasets: Annotated[str, typer.Option(help="comma list of datasets, as ddsd train --data accepts")] = (
        "procedural_binary"),
    seeds: Annotated[str, typer.Option(help="comma list and/or ranges, e.g. 0,1,2 or 0-4")] = "0,1,2",
    teacher: Annotated[list[str] | None, typer.Option(
        help="teacher checkpoint for the methods that use one (kd, static, cwd, ddsd): PATH ({dataset} is "
             "replaced by the dataset name) or DATASET=PATH; repeatable",
        show_default="none (virtual teacher)")] = None,
    teacher_cache: Annotated[Path | None, typer.Option(
        help="folder caching the teacher's per-image logits, shared by the runs that read a teacher",
        show_default="none")] = None,
    config_dir: Annotated[Path | None, typer.Option(
        help="folder of per-dataset train configs: DIR/<dataset>.yaml is passed as --config (e.g. configs/train)",
        show_default="none")] = None,
    set_: Annotated[list[str] | None, typer.Option(
        "--set", help="section.key=value for every run (repeatable)", show_default="none")] = None,
    epochs: Annotated[int | None, typer.Option(min=1, help="epochs of every run",
                                               show_default="the config's (20)")] = None,
    size: Annotated[str | None, typer.Option(help="training/eval resolution HxW of every run",
                                             show_default="the dataset's")] = None,
    model: Annotated[str | None, typer.Option(help="student model of every run", show_default="simple")] = None,
    models: Annotated[str | None, typer.Option(
        help="comma list of student models: every method runs once per model (columns <method>+<model>)",
        show_default="none")] = None,
    out: Annotated[Path | None, typer.Option(help="comparison directory (runs/, runs.csv, table.md, plots/)",
                                             show_default="none: required")] = None,
    jobs: Annotated[int, typer.Option(
        min=1, help="parallel training processes (threads each: idle cores // jobs, 1 on 2 cores)")] = 1,
    plan: Annotated[bool, typer.Option(
        "--plan", help="print one `ddsd train` command per unfinished run instead of running them")] = False,
    collect: Annotated[Path | None, typer.Option(
        help="only rebuild runs.csv, table.md and plots from the finished runs in this directory",
        show_default="none")] = None,
    baseline: Annotated[str | None, typer.Option(
        help="the method the differences are against", show_default="ce; with --collect, the one the grid used")
    ] = None,
    snapshots: Annotated[int, typer.Option(
        min=0, help="val images whose difficulty / dropped maps the first seed's ddsd runs save (0 = none)")] = 4,
    progress: Annotated[bool, typer.Option("--progress/--no-progress")] = True,
) -> None:
    """Compare methods on datasets over seeds: train the grid (resumable, parallel) and tabulate the students."""
    if collect is not None:
        _collect_only(collect, baseline)
        return
    if out is None:
        raise _fail("--out DIR is required (or --collect DIR to tabulate finished runs)")
    try:
        variants = _grid.expand_models(parse_methods(methods, variant or []), (models or "").split(","))
        seed_list = parse_seeds(seeds)
        if size is not None:
            from ddsd.models.cli import parse_size

            try:
                parse_size(size)
            except typer.BadParameter as e:
                raise ValueError(str(e)) from None
        data_list = [d.strip() for d in datasets.split(",") if d.strip()]
        grid = build_plan(variants, data_list, seed_list, out, teachers=teacher or [], teacher_cache=teacher_cache,
                          config_dir=config_dir,
                          sets=set_ or [], epochs=epochs, size=size, model=model, snapshots=snapshots)
    except (ValueError, ConfigError) as e:
        raise _fail(str(e)) from None
    labels = [v.label for v in variants]
    baseline = baseline or next((lab for lab in labels if lab.split("+")[0] == "ce"), "ce")  # --models: ce+<first>
    if baseline not in labels:
        console.print("[yellow]note:[/] " + escape(f"baseline {baseline!r} is not in the grid ({', '.join(labels)}): "
                                                   "no difference-to-baseline column"))
    command = _command_line(
        methods=methods, variant=variant or [], datasets=datasets, seeds=seeds, teacher=teacher or [],
        teacher_cache=teacher_cache,
        config_dir=config_dir, set=set_ or [], epochs=epochs, size=size, model=model, models=models, out=out, jobs=jobs,
        baseline=baseline, snapshots=snapshots if snapshots != 4 else None,
    )
    meta = {"command": command, "methods": labels, "datasets": [dataset_label(d) for d in data_list],
            "seeds": seed_list, "baseline": baseline}
    write_grid_meta(out, meta)
    if plan:
        todo = [s for s in grid if run_state(s.rundir) != "done"]
        for spec in todo:
            typer.echo(shlex.join(spec.argv(resume=True)))
        console.print(escape(f"{len(todo)} of {len(grid)} runs to do ({len(grid) - len(todo)} finished, not listed); "
                             f"then: ddsd compare --collect {shlex.quote(str(out))}"))
        return
    _run(grid, out, jobs, baseline, progress)


def _collect_only(collect: Path, baseline: str | None) -> None:
    """``--collect DIR``: tabulate the finished runs under DIR (table.md, runs.csv, plots/), train nothing."""
    from ddsd.compare.collect import collect as collect_dir

    if not collect.is_dir():
        raise _fail(f"--collect directory {str(collect)!r} does not exist")
    try:
        collect_dir(collect, baseline=baseline, console=console)
    except (FileNotFoundError, ValueError) as e:
        raise _fail(str(e)) from None
    console.print(escape(f"wrote {collect / 'table.md'}, {collect / 'runs.csv'} and {collect / 'plots'}/"))


def _run(grid, out: Path, jobs: int, baseline: str, progress: bool) -> None:
    """Check the teachers and datasets, train the unfinished runs under the grid's lock, then tabulate; exit 1
    when a run failed (the others are still tabulated)."""
    from ddsd.compare.collect import collect as collect_dir
    from ddsd.compare.runner import execute

    missing = sorted({s.teacher for s in grid if s.teacher and not Path(s.teacher).is_file()
                      and not any(o.startswith("teacher_weights=") for o in s.overrides)})
    if missing:
        raise _fail(f"teacher checkpoint not found: {', '.join(missing)}")
    try:
        _check_datasets(grid)
    except ValueError as e:
        raise _fail(str(e)) from None
    t0 = time.perf_counter()
    try:
        with exclusive_lock(out / ".compare.lock", f"comparison directory {out}"), sigterm_as_interrupt():
            results = execute(grid, jobs=jobs, console=console, progress=progress)
    except LockedError as e:
        raise _fail(str(e)) from None
    except KeyboardInterrupt:
        raise _fail("interrupted (the runs were stopped; their last checkpoints are intact); run the same command "
                    "again to resume", 130) from None
    write_grid_meta(out, {"elapsed_s": time.perf_counter() - t0})
    failed = [r for r in results if r.status == "failed"]
    if any(r.status != "failed" for r in results):
        collect_dir(out, baseline=baseline, console=console)
        console.print(escape(f"wrote {out / 'table.md'}, {out / 'runs.csv'} and {out / 'plots'}/ "
                             f"(ddsd report {shlex.quote(str(out))} for one HTML file)"))
    if failed:
        console.print(f"[bold red]{len(failed)} run(s) failed:[/]")
        for r in failed:
            console.print(escape(f"  {r.spec.name}: exit {r.returncode}, log {r.spec.log}"))
        raise typer.Exit(1)


def _check_datasets(grid) -> None:
    """Refuse before any run starts when a dataset of the grid cannot be found (ValueError naming it)."""
    from ddsd.data import load_spec
    from ddsd.data.errors import DataError

    seen: set[tuple[str, str | None]] = set()
    for spec in grid:
        try:
            base = load_config(spec.config) if spec.config is not None else RunConfig()
            root = apply_overrides(base, list(spec.overrides)).data.root
        except ConfigError as e:
            raise ValueError(str(e)) from None
        if (spec.dataset, root) in seen:
            continue
        seen.add((spec.dataset, root))
        try:
            load_spec(spec.dataset, root)
        except (DataError, FileNotFoundError, ValueError) as e:
            raise ValueError(f"dataset {spec.dataset!r} of --datasets: {e}; no run was started") from None


def report_command(
    dir: Annotated[Path, typer.Argument(help="a ddsd compare output directory")],
    baseline: Annotated[str | None, typer.Option(help="the method the differences are against "
                                                 "(default: the one the comparison used, else ce)")] = None,
) -> None:
    """Write DIR/report.html: the comparison's tables and all pictures in one self-contained file."""
    from ddsd.compare.report import write_report

    if not dir.is_dir():
        raise _fail(f"report directory {str(dir)!r} does not exist")
    try:
        path = write_report(dir, baseline=baseline, console=console)
    except (FileNotFoundError, ValueError) as e:
        raise _fail(str(e)) from None
    console.print(escape(f"wrote {path}"))

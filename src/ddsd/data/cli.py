"""``ddsd data ...``: dataset commands (mounted by the main CLI as the ``data`` group).

``ddsd data check <config-or-root>`` validates a dataset and prints a summary; exit status 1 when anything
is wrong. ``ddsd data split <root>`` writes seeded train/val/test lists for a folder of images + masks that has
none. ``ddsd data list`` shows the built-in and shipped dataset names.
"""

from __future__ import annotations

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ddsd._errors import fail
from ddsd.data.check import CheckReport, check_dataset
from ddsd.data.errors import MAX_SHOWN, DataError, name_list
from ddsd.data.spec import PROCEDURAL_NAMES, load_spec, shipped_names
from ddsd.data.splits import plan_splits, write_splits

app = typer.Typer(help="Datasets: validate and summarise (layouts, mask encodings, class shares).",
                  no_args_is_help=True)


@app.callback()
def _data() -> None:
    """Datasets: validate and summarise them."""


def _print_report(console: Console, report: CheckReport) -> None:
    s = report.summary
    where = f" at {s['root']}" if s.get("root") else ""
    console.print(f"[bold]{escape(s['name'])}[/bold]{escape(where)}")
    void = f", void value {s['void_value']}" if s.get("void_value") is not None else ""
    pos = f", positive class {s['positive_class']}" if len(s["class_names"]) == 2 else ""
    console.print(f"layout [cyan]{s['layout']}[/cyan], encoding [cyan]{s['encoding']}[/cyan], "
                  f"{len(s['class_names'])} classes{void}{pos}")
    if s.get("source"):
        console.print(f"[dim]description: {escape(s['source'])}[/dim]")
    if s.get("description"):
        console.print(f"[dim]{escape(s['description'])}[/dim]")
    splits = s["splits"]
    if splits:
        t = Table(title="splits")
        t.add_column("split")
        t.add_column("images", justify="right")
        t.add_column("sizes (WxH: n)")
        t.add_column("W / H min-median-max")
        t.add_column("void share", justify="right")
        if s["encoding"] == "binary":
            t.add_column("masks with in-between values", justify="right")
        for name, v in splits.items():
            sizes = ", ".join(f"{k}: {n}" for k, n in list(v["sizes"].items())[:4])
            if len(v["sizes"]) > 4:
                sizes += f" (+{len(v['sizes']) - 4} more sizes)"
            rng = v.get("size_range") or {}
            span = " / ".join("-".join(map(str, rng[k])) for k in ("width", "height")) if rng.get("width") else ""
            row = [name, str(v["count"]), sizes, span, f"{v['void_share']:.2%}"]
            if s["encoding"] == "binary":
                row.append(f"{v['inbetween_files']} ({v['inbetween_pixels']} px)")
            t.add_row(*row)
        console.print(t)
        c = Table(title="class pixel share (of all mask pixels)")
        c.add_column("id", justify="right")
        c.add_column("class")
        for name in splits:
            c.add_column(name, justify="right")
        for i, cname in enumerate(s["class_names"]):
            c.add_row(str(i), escape(cname), *(f"{v['class_share'][cname]:.2%}" for v in splits.values()))
        c.add_row("255", "void", *(f"{v['void_share']:.2%}" for v in splits.values()))
        console.print(c)
    t_size = s.get("training_size")
    if t_size:
        console.print(f"training size {t_size['size'][0]}x{t_size['size'][1]} (HxW) without data.size: "
                      f"{escape(t_size['reason'])}", highlight=False)
    for w in report.warnings[:MAX_SHOWN]:
        console.print(f"[yellow]warning:[/yellow] {escape(w)}", highlight=False)
    if report.errors:
        console.print(f"[red bold]{len(report.errors)} problem(s)[/red bold]")
        for e in report.errors[:MAX_SHOWN]:
            console.print(f"[red]-[/red] {escape(e)}", highlight=False)
        if len(report.errors) > MAX_SHOWN:
            console.print(f"... and {len(report.errors) - MAX_SHOWN} more")
    else:
        console.print("[green]OK[/green]")


@app.command()
def check(
    dataset: str = typer.Argument("procedural", help="A dataset name, a YAML description or a root folder."),
    strict: bool = typer.Option(False, "--strict", help="Binary masks with values between 0 and 255 are "
                                "errors (default: object = value > 128, counted)."),
    split: list[str] | None = typer.Option(None, "--split", "-s",
                                           help="Split(s) to check (default: all present)."),
    layout: str | None = typer.Option(None, help="Root folder only: layout (folder|camvid|voc)."),
    encoding: str | None = typer.Option(None, help="Root folder only: mask encoding (binary|index|rgb)."),
    void_value: int | None = typer.Option(None, help="Root folder only: mask value meaning void."),
    data_root: str | None = typer.Option(None, help="Folder holding the shipped datasets' folders "
                                         "(default $DDSD_DATASETS, else ../shared/datasets)."),
) -> None:
    """Validate a dataset and print a summary; exit status 1 if anything is wrong."""
    console = Console(width=max(Console().width, 120))
    overrides = {k: v for k, v in (("layout", layout), ("encoding", encoding), ("void_value", void_value))
                 if v is not None}
    try:
        spec = load_spec(dataset, data_root, **overrides)
        report = check_dataset(spec, splits=split or None, strict=strict)
    except DataError as e:
        raise fail(console, str(e), 1) from None
    _print_report(console, report)
    if not report.ok:
        raise typer.Exit(1)


@app.command()
def split(
    root: str = typer.Argument(..., help="A dataset folder with images/ + masks/ (or the spellings detection "
                               "knows: Imgs/ + GT/, ...)."),
    val: float = typer.Option(0.1, help="Share of the pairs for val (0: no val list)."),
    test: float = typer.Option(0.1, help="Share of the pairs for test (0: no test list)."),
    seed: int = typer.Option(0, help="Seed of the partition (order: SHA-256 of '<seed>:<stem>')."),
    image_dir: str | None = typer.Option(None, help="Image folder relative to ROOT (default: detected)."),
    mask_dir: str | None = typer.Option(None, help="Mask folder relative to ROOT (default: detected)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing train/val/test lists."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the partition; write nothing."),
) -> None:
    """Write seeded train/val/test split lists for a folder dataset that has none."""
    console = Console(width=max(Console().width, 120))
    try:
        plan = plan_splits(root, val=val, test=test, seed=seed, image_dir=image_dir, mask_dir=mask_dir)
        removed = [p for p in plan.stale if p.exists()]
        written = [] if dry_run else write_splits(plan, overwrite=overwrite)
    except DataError as e:
        raise fail(console, str(e), 1) from None
    for what, stems in (("image(s) without a mask", plan.images_without_mask),
                        ("mask(s) without an image", plan.masks_without_image)):
        if stems:
            console.print(f"[yellow]warning:[/yellow] left out {len(stems)} {what}: {escape(name_list(stems))}",
                          highlight=False)
    t = Table(title=f"{escape(str(plan.root))} (seed {plan.seed})")
    t.add_column("split")
    t.add_column("pairs", justify="right")
    t.add_column("list")
    for s, stems in plan.lists.items():
        t.add_row(s, str(len(stems)), escape(str(plan.files[s])))
    console.print(t)
    if dry_run:
        console.print("dry run: nothing written" + (f" (would remove {', '.join(p.name for p in removed)})"
                                                    if removed else ""), highlight=False)
        return
    gone = f"; removed {', '.join(p.name for p in removed)} (its split is now empty)" if removed else ""
    console.print(f"wrote {len(written)} list(s){gone}; check them with `ddsd data check "
                  f"{escape(str(plan.root))}`", highlight=False)


@app.command("list")
def list_datasets() -> None:
    """Names accepted wherever a dataset is asked for (besides YAML files and root folders)."""
    console = Console()
    t = Table()
    t.add_column("name")
    t.add_column("source")
    for n in PROCEDURAL_NAMES:
        t.add_row(n, "built-in (no files)")
    for n in shipped_names():
        t.add_row(n, f"configs/data/{n}.yaml")
    console.print(t)

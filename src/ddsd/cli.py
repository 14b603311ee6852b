"""The ``ddsd`` command line: each verb is a thin wrapper over the Python API.

``ddsd train`` (one run), ``ddsd eval`` (score a checkpoint), ``ddsd models`` (sizes and speed),
``ddsd data check`` (validate a dataset), ``ddsd export`` (ONNX / TorchScript).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ddsd._errors import DEBUG_ENV, debugging, fail
from ddsd._io import LockedError
from ddsd.compare.cli import compare_command, report_command
from ddsd.config import METHODS, ConfigError, RunConfig, apply_overrides, load_config
from ddsd.data.cli import app as data_app
from ddsd.engine.rundir import RunDir, clear_run
from ddsd.export import export_command
from ddsd.models.cli import models_command, parse_size
from ddsd.predict import predict_command

app = typer.Typer(
    name="ddsd",
    help="Dynamic dropout self-distillation: train, evaluate, compare, export small segmentation students.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(data_app, name="data")
app.command("models", help="Parameters, multiply-accumulates and CPU latency of each model.")(models_command)
app.command("export", help="Export a trained student to ONNX or TorchScript, checked against PyTorch.")(export_command)
app.command(
    "compare", help="Compare methods on datasets over seeds (parallel, resumable): runs.csv, table.md, plots."
)(compare_command)
app.command("predict", help="Predict masks (PNG) for images or folders with a trained checkpoint.")(predict_command)
app.command("report", help="One self-contained report.html from a ddsd compare directory.")(report_command)
console = Console(stderr=True)


@app.callback()
def _options(
    debug: Annotated[bool, typer.Option("--debug", help="show the full traceback of an error (also DDSD_DEBUG=1)")]
    = False,
) -> None:
    """Dynamic dropout self-distillation: train, evaluate, compare, export small segmentation students."""
    if debug:
        os.environ[DEBUG_ENV] = "1"


def _fail(message: str, code: int = 2) -> typer.Exit:
    return fail(console, message, code)


def _default(key: str) -> str:
    """The default of config key ``section.key`` as ``--help`` shows it (from :class:`RunConfig`)."""
    node: object = RunConfig()
    for part in key.split("."):
        node = getattr(node, part)
    return "auto" if node is None else str(node).lower() if isinstance(node, bool) else str(node)


def _resume_base(config: Path | None, out: str | None, resume: bool) -> RunConfig:
    """The settings to start from: ``--config``, else (``--resume`` with an ``--out`` holding a run) the run's
    own ``config.yaml``, so that ``ddsd train --out RUN --resume`` needs no other flag, else the defaults."""
    if config:
        return load_config(config)
    if resume and out is not None and RunDir(out).config.is_file():
        return load_config(RunDir(out).config)
    return RunConfig()


@app.command()
def train(
    config: Annotated[Path | None, typer.Option("--config", "-c", help="YAML run config (see configs/; a run's own "
                                                "config.yaml works too)", show_default="none")] = None,
    method: Annotated[str | None, typer.Option(help=f"one of {', '.join(METHODS)}",
                                               show_default=_default("method.name"))] = None,
    data: Annotated[str | None, typer.Option(help="builtin | procedural_binary | sod | crackforest | "
                                             "isbi2012_membrane | camvid | a dataset YAML | a root folder",
                                             show_default=_default("data.name"))] = None,
    data_root: Annotated[str | None, typer.Option(help="folder holding the shipped datasets' folders",
                                                  show_default="$DDSD_DATASETS, else ../shared/datasets")] = None,
    model: Annotated[str | None, typer.Option(help="simple | unet_small | unet_teacher | segformer_b0..b5 | "
                                              "package.module:factory | a plug-in (ddsd models lists them)",
                                              show_default=_default("model.name"))] = None,
    model_weights: Annotated[str | None, typer.Option(help="local pretrained weights of the student: a file or "
                                                      "a save_pretrained folder (nothing downloads)",
                                                      show_default="none (random init)")] = None,
    epochs: Annotated[int | None, typer.Option(min=1, show_default=_default("train.epochs"))] = None,
    seed: Annotated[int | None, typer.Option(show_default=_default("train.seed"))] = None,
    out: Annotated[str | None, typer.Option(help="run directory", show_default="runs/<method>-<data>-s<seed>")
                   ] = None,
    resume: Annotated[bool, typer.Option(help="continue the run in --out from its last checkpoint, with the "
                                         "settings stored in its config.yaml")] = False,
    overwrite: Annotated[bool, typer.Option(help="delete the run files of an existing run in --out first "
                                            "(only a verified run directory; nothing else in it)")] = False,
    teacher: Annotated[str | None, typer.Option(help="network teacher: a ddsd checkpoint, or a model spec "
                                                "with --teacher-weights", show_default="none (virtual teacher)")
                       ] = None,
    teacher_weights: Annotated[str | None, typer.Option(help="local weights (file or save_pretrained folder) "
                                                        "of a teacher given as a model spec", show_default="none")
                               ] = None,
    teacher_cache: Annotated[str | None, typer.Option(help="folder caching the teacher's per-image logits "
                                                      "(reused across epochs/runs that see the same images)",
                                                      show_default="none")] = None,
    teacher_amp: Annotated[str | None, typer.Option(help="precision of the teacher's forward alone: "
                                                    "none | bf16 | fp16", show_default=_default("train.teacher_amp"))
                           ] = None,
    device: Annotated[str | None, typer.Option(help="cpu | cuda | cuda:N", show_default=_default("train.device"))
                      ] = None,
    batch_size: Annotated[int | None, typer.Option(min=1, show_default=_default("data.batch_size"))] = None,
    lr: Annotated[float | None, typer.Option(show_default=_default("optim.lr"))] = None,
    size: Annotated[str | None, typer.Option(help="training/eval resolution HxW",
                                             show_default="the dataset's, else picked from its images")] = None,
    amp: Annotated[str | None, typer.Option(help="none | bf16 | fp16", show_default=_default("train.amp"))] = None,
    compile: Annotated[bool | None, typer.Option("--compile/--no-compile", help="torch.compile the student",
                                                 show_default=_default("train.compile"))] = None,
    channels_last: Annotated[bool | None, typer.Option("--channels-last/--no-channels-last",
                                                       show_default=_default("train.channels_last"))] = None,
    workers: Annotated[int | None, typer.Option(min=0, help="data-loader worker processes (auto: 0 on 2 cores or "
                                                "fewer, else the cores left over, at most 2)",
                                                show_default=_default("data.num_workers"))] = None,
    threads: Annotated[int | None, typer.Option(min=1, help="torch CPU threads (auto: $OMP_NUM_THREADS, else 1 on "
                                                "2 cores or fewer, else the idle cores, at most 8)",
                                                show_default=_default("train.threads"))] = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress")] = True,
    set_: Annotated[list[str] | None, typer.Option("--set", help="override any key: section.key=value",
                                                   show_default="none")] = None,
) -> None:
    """Train one student (every method through the same engine)."""
    from ddsd.data.errors import DataError
    from ddsd.engine import CheckpointError, RunExistsError
    from ddsd.engine import train as run_train
    from ddsd.engine.interrupts import RunWriteError, TrainingInterrupted

    try:
        base = _resume_base(config, out, resume)
        flags = {
            "method.name": method, "data.name": data, "data.root": data_root, "model.name": model,
            "model.weights": model_weights, "teacher_weights": teacher_weights,
            "train.epochs": epochs, "train.seed": seed, "teacher": teacher, "train.teacher_cache": teacher_cache,
            "train.teacher_amp": teacher_amp,
            "train.device": device,
            "data.batch_size": batch_size,
            "optim.lr": lr, "train.amp": amp, "train.compile": compile, "train.channels_last": channels_last,
            "data.num_workers": workers, "train.threads": threads,
        }
        overrides = [f"{k}={json.dumps(v)}" for k, v in flags.items() if v is not None]
        if size is not None:
            h, w = parse_size(size)
            overrides.append(f"data.size=[{h}, {w}]")
        overrides.append(f"train.progress={json.dumps(progress)}")
        cfg = apply_overrides(base, overrides + list(set_ or []))
        if out is None and "out" not in base.model_fields_set:
            out = f"runs/{cfg.method.name}-{Path(cfg.data.name).stem}-s{cfg.train.seed}"
        if out is not None:
            cfg = apply_overrides(cfg, [f"out={json.dumps(out)}"])
        if overwrite:
            clear_run(cfg.out)
        summary = run_train(cfg, resume=resume, console=console)
    except TrainingInterrupted as e:
        raise _fail(str(e), 130) from None
    except RunWriteError as e:
        raise _fail(str(e), 1) from None
    except (ConfigError, DataError, RunExistsError, CheckpointError, LockedError, FileNotFoundError, ValueError,
            RuntimeError) as e:
        raise _fail(str(e)) from None
    _print_summary(summary, cfg.out)


def _print_summary(summary: dict, out: str) -> None:
    t = Table(title=escape(f"{summary['method']} on {summary['dataset']} (best epoch {summary['best_epoch']})"))
    t.add_column("split")
    keys = [k for k in ("fbeta_max", "mae", "s_measure", "iou", "miou", "pixel_acc", "boundary_iou")
            if isinstance(summary.get("best_val", {}).get(k), int | float)]
    for k in keys:
        t.add_column(k, justify="right")
    for split in ["best_val", *[s for s in ("test",) if isinstance(summary.get(s), dict)]]:
        t.add_row(split.replace("best_", ""), *[f"{summary[split][k]:.4f}" for k in keys])
    Console().print(t)
    Console().print(escape(f"run directory: {out}  (wall time {summary['wall_time_s']:.1f}s)"))


@app.command("eval")
def eval_(
    checkpoint: Annotated[Path, typer.Option(help="a checkpoint written by ddsd train")],
    data: Annotated[str | None, typer.Option(help="dataset", show_default="the one it was trained on")] = None,
    split: Annotated[str, typer.Option(help="split to score")] = "test",
    size: Annotated[str | None, typer.Option(help="input resolution HxW", show_default="the training one")] = None,
    device: Annotated[str, typer.Option()] = "cpu",
    batch_size: Annotated[int, typer.Option(min=1)] = 8,
    json_out: Annotated[Path | None, typer.Option("--json", help="write the metrics to this JSON file",
                                                  show_default="none")] = None,
    boundary_width: Annotated[int | None, typer.Option(
        min=1, help="boundary IoU band in pixels (round 1 used 3)", show_default="2 % of each mask's diagonal")
                              ] = None,
) -> None:
    """Score a checkpoint on a split with the field's metrics."""
    from ddsd.data import build_dataset, load_spec
    from ddsd.data.errors import DataError
    from ddsd.engine import CheckpointError, evaluate
    from ddsd.engine.rundir import write_json
    from ddsd.models.loading import load_model

    try:
        model, cfg = load_model(checkpoint)
        k = cfg["model"]["num_classes"]
        spec = load_spec(data or cfg["data"]["name"], cfg["data"].get("root"))
        if spec.num_classes != k:
            raise ValueError(f"{checkpoint} predicts {k} classes but dataset '{spec.name}' has {spec.num_classes}")
        hw = parse_size(size) if size else (tuple(cfg["data"]["size"]) if cfg["data"].get("size") else None)
        ds = build_dataset(spec, split, hw, augment=False, cache_dir=cfg["data"].get("cache_dir"),
                           resize=cfg["data"].get("resize", "auto"))
        metrics = evaluate(model.to(device), ds, device, batch_size, boundary_width=boundary_width)
    except (DataError, CheckpointError, FileNotFoundError, ValueError, KeyError, RuntimeError) as e:
        raise _fail(str(e)) from None
    t = Table(title=escape(f"{checkpoint} on {spec.name}/{split} ({metrics['num_images']} images)"))
    t.add_column("metric")
    t.add_column("value", justify="right")
    for key, v in metrics.items():
        if isinstance(v, float):
            t.add_row(key, f"{v:.4f}")
    Console().print(t)
    if json_out:
        write_json(json_out, {"checkpoint": str(checkpoint), "dataset": spec.name, "split": split, **metrics})


def main() -> None:
    """Console-script entry point: an unexpected error is one line (the full traceback with ``--debug``)."""
    try:
        app(prog_name="ddsd")  # click handles bad options, Ctrl-C outside a run, and exit codes
    except Exception as e:
        if debugging():
            raise
        console.print(f"[bold red]error:[/] {escape(f'{type(e).__name__}: {e}')} "
                      "(run with --debug for the full traceback)")
        sys.exit(1)


if __name__ == "__main__":
    sys.exit(main())

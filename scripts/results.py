"""The results protocol (docs/results/README.md) as a resumable runner over ``ddsd train``.

    python scripts/results.py tune   --datasets sod,crackforest,isbi2012_membrane [--jobs 2]
    python scripts/results.py select --datasets ...        # writes docs/results/tuned.json from val only
    python scripts/results.py grid   --datasets ... --seeds 0-4 [--jobs 2]
    python scripts/results.py paired --datasets isbi2012_membrane --a ddsd --b kd   # paired CIs from runs.csv
    python scripts/results.py ablate --datasets isbi2012_membrane,sod --seeds 0-4 [--jobs 2]
    python scripts/results.py ablate-table --datasets isbi2012_membrane,sod  # docs/results/ablations/table.md
    python scripts/results.py teacher --datasets isbi2012_membrane [--extra train.device=cuda]  # real teacher
    python scripts/results.py gap --datasets isbi2012_membrane,sod   # the unet_small student (gap sweep)
    python scripts/results.py budget --datasets crackforest   # ce / tfkd / ddsd at twice the epochs
    python scripts/results.py budget --datasets sod --methods ce
    python scripts/results.py teacher-table|gap-table|budget-table --datasets ...
    python scripts/results.py classes --datasets camvid --methods ce,kd,tfkd,ddsd  # per-class IoU vs ce

Round 2 (issue 15; scripts/results_round2.py): the stages of ``ROUND2_STAGES`` (fair-tune, fair-select, fair-grid,
own, controls, strength, transfer, defaults, student and their tables), under docs/results/round2/.

``--extra key=value,...`` adds overrides that must not change what a run measures (device, amp, workers), e.g.
to run a stage on a GPU machine.

Tuning runs live in docs/results/tuning/runs/<dataset>/<method>/<candidate>/seed0, the main grid in
docs/results/grid/runs/<dataset>/<method>/seed<k> (the layout ``ddsd compare --collect`` reads). A run whose
summary.json exists is skipped; one with a checkpoint is resumed. Checkpoints (*.pt) are not committed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.modules.setdefault("results", sys.modules[__name__])  # one module object for results_round2 to import
if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results"

# Fixed before any number was seen: 3 candidates per method (ce has no hyper-parameter), chosen on val, seed 0.
CANDIDATES: dict[str, list[dict[str, float]]] = {
    "ce": [{}],
    "kd": [{"method.confidence": a} for a in (0.7, 0.9, 0.99)],
    "ls": [{"method.ls_epsilon": e} for e in (0.05, 0.1, 0.2)],
    "tfkd": [
        {"method.tfkd_confidence": 0.9, "method.tfkd_temperature": 4.0, "method.tfkd_weight": 0.25},
        {"method.tfkd_confidence": 0.9, "method.tfkd_temperature": 1.0, "method.tfkd_weight": 1.0},
        {"method.tfkd_confidence": 0.99, "method.tfkd_temperature": 4.0, "method.tfkd_weight": 0.5},
    ],
    "static": [{"method.rate": r} for r in (0.1, 0.2, 0.4)],
    "ohem": [{"method.ohem_thresh": t} for t in (0.5, 0.7, 0.9)],
    "cwd": [{"method.cwd_tau": 4.0, "method.cwd_weight": 3.0}, {"method.cwd_tau": 1.0, "method.cwd_weight": 3.0},
            {"method.cwd_tau": 4.0, "method.cwd_weight": 1.0}],
    "ddsd": [{"method.confidence": 0.9, "method.r_max": 0.5}, {"method.confidence": 0.99, "method.r_max": 0.5},
             {"method.confidence": 0.99, "method.r_max": 0.3}],
}
SNAPSHOT_METHODS = ("kd", "tfkd", "static", "ddsd")

# Ablations of ddsd (docs/results/README.md): one change at a time on top of the dataset's tuned ddsd setting
# (whose grid runs, same seeds, are the paired baseline). ``{r_max}`` is the tuned r_max.
ABLATIONS: dict[str, dict[str, object]] = {
    "schedule=linear": {"method.schedule": "linear", "method.rate": "{r_max}", "method.end_rate": 0.0},
    "schedule=constant": {"method.schedule": "constant", "method.rate": "{r_max}"},
    "schedule=threshold": {"method.schedule": "threshold", "method.tau": 0.5},
    "capability=pixel_acc": {"method.capability_metric": "pixel_acc"},
    "capability=relative": {"method.capability_relative": True},
    "difficulty=target_gap": {"method.difficulty": "target_gap"},
    "difficulty=l1": {"method.difficulty": "l1"},
    "a=0.7": {"method.confidence": 0.7},
    "a=0.9": {"method.confidence": 0.9},
    "a=0.99": {"method.confidence": 0.99},
    "a=1.0": {"method.confidence": 1.0},
    "ce_on_dropped=false": {"method.ce_on_dropped": False},
}


ROUND2_STAGES = ("fair-tune", "fair-select", "fair-grid", "own", "controls", "strength", "transfer", "defaults",
                 "student", "student-full", "fair-table", "own-table", "controls-table", "strength-table",
                 "strength-plot", "transfer-table", "defaults-table", "student-table")  # scripts/results_round2.py


def cand_name(c: dict[str, float]) -> str:
    return "default" if not c else "_".join(f"{k.split('.')[-1]}={v:g}" for k, v in c.items())


PLAN = False  # --plan: print the commands instead of running them
EXTRA: list[str] = []  # --extra overrides (device etc.), appended to every command
# The library's method defaults changed after these campaigns (docs/method.md, "Defaults and their evidence"):
# every command pins the defaults its campaign ran with (a stage's own overrides win), so re-running a stage
# reproduces its committed runs. Round 1 ran before the difficulty / tie-rule fixes.
ROUND1_PINS: dict[str, object] = {
    "method.confidence": 0.9, "method.temperature": 1.0, "method.kd_weight": 1.0, "method.r_max": 0.5,
    "method.capability_relative": False, "method.difficulty": "kl", "method.tie_break": "index",
    "method.selection": "hardest",
}
ROUND2_PINS: dict[str, object] = {"method.r_max": 0.5, "method.capability_relative": False,
                                  "method.selection": "hardest"}
PINS = ROUND1_PINS  # main() sets the pins of the stage's campaign


def train_cmd(dataset: str, method: str, seed: int, overrides: dict[str, object], out: Path,
              snapshots: bool = True) -> list[str]:
    cmd = [sys.executable, "-m", "ddsd", "train", "--config", str(ROOT / "configs/results" / f"{dataset}.yaml"),
           "--method", method, "--seed", str(seed), "--out", str(out), "--no-progress"]
    for k, v in {**PINS, **overrides}.items():
        cmd += ["--set", f"{k}={v}"]
    for item in EXTRA:
        cmd += ["--set", item]
    if snapshots and seed == 0 and method in SNAPSHOT_METHODS:
        cmd += ["--set", "train.snapshots=4"]
    return cmd


def run_all(jobs: list[tuple[list[str], Path]], n: int) -> int:
    """Run the unfinished jobs, ``n`` at a time. A ``RUNNING`` lock file (created exclusively) lets several
    runners share one job list; a crashed runner's stale lock must be removed by hand."""

    def one(job):
        cmd, out = job
        out.mkdir(parents=True, exist_ok=True)
        lock = out / "RUNNING"
        try:
            os.close(os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            print(f"busy {out.relative_to(ROOT)} (another runner holds {lock.name})", flush=True)
            return 0
        try:
            if (out / "summary.json").exists():  # finished by another runner meanwhile
                return 0
            if (out / "checkpoints" / "last.pt").exists():  # decided when it runs: another runner may have started it
                cmd = [*cmd, "--resume"]
            with (out / "train.log").open("a") as log:
                rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT).returncode
        finally:
            lock.unlink(missing_ok=True)
        print(f"{'ok  ' if rc == 0 else 'FAIL'} {out.relative_to(ROOT)}", flush=True)
        return rc

    todo = [j for j in jobs if not (j[1] / "summary.json").exists()]
    print(f"{len(jobs) - len(todo)} finished, {len(todo)} to run", flush=True)
    if PLAN:
        for cmd, _ in todo:
            print(" ".join(cmd[1:]).replace(str(ROOT) + "/", ""))
        return 0
    with ThreadPoolExecutor(n) as pool:
        return sum(1 for rc in pool.map(one, todo) if rc)


def seeds_of(text: str) -> list[int]:
    if "-" in text:
        a, b = text.split("-")
        return list(range(int(a), int(b) + 1))
    return [int(s) for s in text.split(",")]


def ablation_jobs(datasets: list[str], seeds: list[int], tuned: dict) -> list[tuple[list[str], Path]]:
    jobs = []
    for d in datasets:
        base = tuned[d]["ddsd"]["overrides"]
        for name, change in ABLATIONS.items():
            over = {**base, **{k: (v.format(r_max=base["method.r_max"]) if isinstance(v, str) and "{" in v else v)
                               for k, v in change.items()}}
            if over == base:
                continue  # the tuned setting itself: the grid's ddsd runs
            for s in seeds:
                out = RESULTS / "ablations/runs" / d / name / f"seed{s}"
                jobs.append((train_cmd(d, "ddsd", s, over, out, snapshots=False), out))
    # Seeds 0-2 of every variant before seeds 3+, so that a stopped session leaves every variant with 3 seeds.
    return sorted(jobs, key=lambda j: (datasets.index(j[1].parts[-3]), int(j[1].name[4:]) > 2))


def _summary_metrics(run: Path) -> dict[str, float] | None:
    f = run / "summary.json"
    if not f.exists():
        return None
    summ = json.loads(f.read_text())
    test = summ.get("test", {})
    out = {k: float(v) for k, v in test.items() if isinstance(v, int | float) and not isinstance(v, bool)}
    import csv

    rows = list(csv.DictReader((run / "metrics.csv").open()))
    rates = [float(r["train_rate"]) for r in rows if r.get("train_rate") not in (None, "", "nan")]
    if rates:
        out["rate_first"], out["rate_last"] = rates[0], rates[-1]
    out["wall_time_s"] = float(summ.get("wall_time_s", float("nan")))
    return out


def paired_table(title: str, command: str, sections: dict[str, dict[str, Path]], out: Path) -> int:
    """Write a markdown table per dataset: every row's runs (``<root>/seed<k>``) against the first row, paired
    by seed (Δ = row − first row, 95 % t-interval, ``*`` when it excludes 0)."""
    from ddsd.compare.stats import fmt_diff, fmt_mean_std, mean_std, paired_diff

    lines = [f"# {title}", "", f"Generated by `{command}`; Δ = row − first row of the section, paired by seed, "
             "95 % t-interval (`*`: excludes 0); test split, mean ± std over seeds. MAE: lower is better. "
             "rate: the dropout rate of the first → last epoch (mean over seeds).", ""]
    total_wall = 0.0
    counted: set[Path] = set()
    for d, variants in sections.items():
        keys = (["miou", "pixel_acc", "boundary_iou"] if d.startswith("camvid")
                else ["fbeta_max", "mae", "iou", "boundary_iou"])
        runs = {name: {int(p.name[4:]): m for p in sorted(root.glob("seed*")) if (m := _summary_metrics(p))}
                for name, root in variants.items()}
        base_name = next(iter(runs))
        base_runs = runs[base_name]
        lines += [f"## {d}", "", "| run | seeds | " + " | ".join(keys) + " | " +
                  " | ".join(f"Δ {k}" for k in keys[:2]) + " | rate |",
                  "|---|---:|" + "---:|" * len(keys) + "---:|" * 2 + "---|"]
        for name, rs in runs.items():
            if not rs:
                continue
            cells = [fmt_mean_std(*mean_std([r[k] for r in rs.values() if k in r])) for k in keys]
            deltas = ["—" if name == base_name else
                      fmt_diff(paired_diff({s: r[k] for s, r in rs.items() if k in r},
                                           {s: r[k] for s, r in base_runs.items() if k in r}))
                      for k in keys[:2]]
            rf = [r["rate_first"] for r in rs.values() if "rate_first" in r]
            rl = [r["rate_last"] for r in rs.values() if "rate_last" in r]
            rate = f"{sum(rf) / len(rf):.2f} → {sum(rl) / len(rl):.2f}" if rf and max(rf + rl) > 0 else "—"
            if RESULTS / "grid" not in variants[name].parents and variants[name] not in counted:
                counted.add(variants[name])  # a run listed in two sections counts once
                total_wall += sum(r["wall_time_s"] for r in rs.values())
            lines.append(f"| {name} | {len(rs)} | " + " | ".join(cells) + " | " + " | ".join(deltas) + f" | {rate} |")
        lines.append("")
    lines.append(f"Wall time of this table's own runs (not the grid's), summed: {total_wall / 3600:.2f} h.")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print(out.read_text())
    return 0


# The real-teacher setting: unet_teacher trained with ce (seed 0), distilled into the simple student with the
# tuned kd / static / ddsd settings minus the virtual teacher's confidence (the teacher's own probabilities are
# the targets); the ce baseline is the grid's. The gap sweep: the unet_small student with ce / kd / ddsd at the
# tuned settings against the same (virtual) teacher, next to the simple student's grid runs.
TEACHER_STUDENT_METHODS = ("kd", "static", "ddsd")
GAP_METHODS = ("ce", "kd", "ddsd")
# The budget check: is the grid's epoch budget long enough? ce / tfkd / ddsd at twice the epochs (tuned settings).
BUDGET_METHODS = ("ce", "tfkd", "ddsd")


def save_plot(fig, ax, xlabel: str, ylabel: str, title: str, path: Path) -> None:
    """Label, grid and legend ``ax``, write ``fig`` to ``path`` (PNG, 90 dpi) and close it."""
    import matplotlib.pyplot as plt

    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def config_epochs(d: str) -> int:
    import yaml

    return int(yaml.safe_load((ROOT / "configs/results" / f"{d}.yaml").read_text())["train"]["epochs"])


def budget_jobs(datasets: list[str], seeds: list[int], tuned: dict, methods: list[str]) -> list:
    jobs = []
    for d in datasets:
        epochs = 2 * config_epochs(d)
        for m in (m for m in BUDGET_METHODS if m in methods):
            over = {"train.epochs": epochs, **tuned[d].get(m, {}).get("overrides", {})}
            for s in seeds:
                out = RESULTS / "budget/runs" / d / f"epochs{epochs}" / m / f"seed{s}"
                jobs.append((train_cmd(d, m, s, over, out, snapshots=False), out))
    return jobs


# On one CPU core with avx512_bf16, bf16 autocast + channels-last makes the U-Nets 2.4-2.6x faster (batch 4,
# 256 x 256, two other runs sharing the machine): unet_small step 1.60 s -> 0.66 s, unet_teacher forward
# 3.66 s -> 1.41 s (channels-last alone: 1.18x; unet_teacher step 10.2 s channels-last fp32 -> 4.5 s bf16). The
# simple student gains nothing (step 0.114 s fp32 -> 0.12-0.18 s), so it keeps float32 everywhere: the
# teacher and the gap sweep's unet_small students train in bf16, the real-teacher students in float32 with the
# teacher's forward alone in bf16.
FAST_UNET = {"train.channels_last": "true", "train.amp": "bf16"}
FAST_TEACHER = {"train.teacher_channels_last": "true", "train.teacher_amp": "bf16"}
TEACHER_CACHE = ROOT / ".cache" / "teacher-logits"  # gitignored; ~0.84 GB per ISBI seed, safe to delete


def teacher_ckpt(d: str) -> Path:
    return RESULTS / "teacher/runs" / d / "teacher" / "seed0"


def teacher_jobs(datasets: list[str], seeds: list[int], tuned: dict) -> tuple[list, list]:
    first, second = [], []
    for d in datasets:
        t = teacher_ckpt(d)
        first.append((train_cmd(d, "ce", 0, {"model.name": "unet_teacher", **FAST_UNET}, t), t))
        for m in TEACHER_STUDENT_METHODS:
            over = {**{k: v for k, v in tuned[d][m]["overrides"].items() if k != "method.confidence"}, **FAST_TEACHER}
            for s in seeds:
                out = RESULTS / "teacher/runs" / d / m / f"seed{s}"
                cmd = train_cmd(d, m, s, over, out, snapshots=False)
                # kd / static / ddsd of one seed feed the teacher the same augmented images: cache its logits
                # (method-major order, so a seed's first run has finished before the next method reuses it)
                second.append(([*cmd, "--teacher", str(t / "checkpoints" / "best.pt"),
                                "--teacher-cache", str(TEACHER_CACHE / d)], out))
    return first, second


def gap_jobs(datasets: list[str], seeds: list[int], tuned: dict) -> list:
    jobs = []
    for d in datasets:
        for m in GAP_METHODS:
            over = {"model.name": "unet_small", **tuned[d].get(m, {}).get("overrides", {}), **FAST_UNET}
            for s in seeds:
                out = RESULTS / "gap/runs" / d / "unet_small" / m / f"seed{s}"
                jobs.append((train_cmd(d, m, s, over, out, snapshots=False), out))
    return jobs


def tune_stage(datasets: list[str], methods: list[str], jobs: int) -> int:
    """Round 1's tuning runs: every candidate of every method, seed 0."""
    todo = [(train_cmd(d, m, 0, c, out := RESULTS / "tuning/runs" / d / m / cand_name(c) / "seed0"), out)
            for d in datasets for m in methods for c in CANDIDATES[m]]
    return run_all(todo, jobs)


def select_stage(datasets: list[str], methods: list[str]) -> int:
    """docs/results/tuned.json: per dataset and method the candidate with the best val score (ties: first)."""
    tuned_path = RESULTS / "tuned.json"
    tuned = json.loads(tuned_path.read_text()) if tuned_path.exists() else {}
    for d in datasets:
        for m in methods:
            scores = []
            for c in CANDIDATES[m]:
                s = RESULTS / "tuning/runs" / d / m / cand_name(c) / "seed0" / "summary.json"
                if s.exists():
                    summ = json.loads(s.read_text())
                    scores.append((summ["best_val"][summ["main_metric"]], -CANDIDATES[m].index(c), c))
            if len(scores) == len(CANDIDATES[m]):
                val, _, best = max(scores, key=lambda t: (t[0], t[1]))
                tuned.setdefault(d, {})[m] = {"overrides": best, "val": val,
                                              "candidates": {cand_name(c): v for v, _, c in scores}}
    tuned_path.write_text(json.dumps(tuned, indent=2) + "\n")
    print(json.dumps(tuned, indent=2))
    return 0


def grid_stage(datasets: list[str], methods: list[str], seeds: list[int], jobs: int) -> int:
    """Round 1's grid: every tuned method, every seed (seed 0 reuses its tuning run)."""
    tuned_path = RESULTS / "tuned.json"
    tuned = json.loads(tuned_path.read_text())
    todo = []
    for d in datasets:
        for m in methods:
            if m not in tuned.get(d, {}):
                print(f"skip {d}/{m}: not tuned yet")
                continue
            best = tuned[d][m]["overrides"]
            for s in seeds:
                out = RESULTS / "grid/runs" / d / m / f"seed{s}"
                src = RESULTS / "tuning/runs" / d / m / cand_name(best) / "seed0"
                if s == 0 and (src / "summary.json").exists() and not out.exists() and not PLAN:
                    shutil.copytree(src, out, ignore=shutil.ignore_patterns("*.pt"))  # the same run: reuse it
                todo.append((train_cmd(d, m, s, best, out), out))
    return run_all(todo, jobs)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("stage", choices=["tune", "select", "grid", "paired", "ablate", "ablate-table", "teacher",
                                      "teacher-table", "gap", "gap-table", "budget", "budget-table",
                                      "classes", *ROUND2_STAGES])
    p.add_argument("--plan", action="store_true", help="print the commands of the unfinished runs and stop")
    p.add_argument("--extra", default="", help="comma-separated overrides that do not change what a run measures")
    p.add_argument("--a", default="ddsd", help="paired: method a (a - b)")
    p.add_argument("--b", default="kd", help="paired: method b")
    p.add_argument("--datasets", default="sod,crackforest,isbi2012_membrane,camvid")
    p.add_argument("--methods", default=None, help="default: round 1's methods; round 2: ce + the KD family")
    p.add_argument("--seeds", default="0-4")
    p.add_argument("--jobs", type=int, default=max(1, (os.cpu_count() or 2)))
    a = p.parse_args()
    EXTRA.extend(x for x in a.extra.split(",") if x)
    global PLAN, PINS
    PLAN = a.plan
    PINS = ROUND2_PINS if a.stage in ROUND2_STAGES else ROUND1_PINS
    datasets, methods = a.datasets.split(","), (a.methods or ",".join(CANDIDATES)).split(",")
    if a.stage in ROUND2_STAGES:
        import results_round2

        return results_round2.main(a, datasets, a.methods.split(",") if a.methods else None)
    import results_round1_tables as tables

    seeds = seeds_of(a.seeds)
    if a.stage == "paired":
        return tables.paired(datasets, a.a, a.b)
    if a.stage == "classes":
        return sum(tables.class_table(d, methods, RESULTS / "grid" / f"{d}_classes.md") for d in datasets)
    if a.stage == "tune":
        return tune_stage(datasets, methods, a.jobs)
    if a.stage == "select":
        return select_stage(datasets, methods)
    if a.stage == "grid":
        return grid_stage(datasets, methods, seeds, a.jobs)
    if a.stage in ("budget-table", "teacher-table", "gap-table"):
        return {"budget-table": tables.budget_table, "teacher-table": tables.teacher_table,
                "gap-table": tables.gap_table}[a.stage](datasets)
    tuned = json.loads((RESULTS / "tuned.json").read_text())
    if a.stage == "ablate-table":
        return tables.ablation_table(datasets, tuned)
    if a.stage == "ablate":
        return run_all(ablation_jobs(datasets, seeds, tuned), a.jobs)
    if a.stage == "teacher":
        first, second = teacher_jobs(datasets, seeds, tuned)
        return run_all(first, a.jobs) or run_all(second, a.jobs)
    if a.stage == "gap":
        return run_all(gap_jobs(datasets, seeds, tuned), a.jobs)
    return run_all(budget_jobs(datasets, seeds, tuned, methods), a.jobs)

if __name__ == "__main__":
    sys.exit(main())

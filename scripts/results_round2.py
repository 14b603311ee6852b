"""Round 2 of the results protocol (issue 15): the KD family judged on one search space, the dropout's own
effect, selection controls and teacher strength. Stages of ``scripts/results.py`` (same flags: ``--plan``
prints the commands of the unfinished runs, ``--jobs N``, ``--extra``, ``--datasets``, ``--seeds``):

    python scripts/results.py fair-tune   --datasets sod,isbi2012_membrane   # seed 0, val; two phases
    python scripts/results.py fair-select --datasets ...   # docs/results/round2/tuned.json, from val only
    python scripts/results.py fair-grid   --datasets ... --seeds 0-4          # ce + the tuned KD family
    python scripts/results.py own         --datasets ... --seeds 0-4   # ddsd at kd's / tfkd's tuned (a, T, w)
    python scripts/results.py controls    --datasets ... --seeds 0-4   # random / easiest / bernoulli selection
    python scripts/results.py defaults    --datasets ... --seeds 0-4 [--methods kd,ddsd]  # the library defaults
    python scripts/results.py strength    --datasets ... --seeds 0-4   # teachers of increasing quality, defaults
    python scripts/results.py student     --datasets ... --seeds 0-4   # SegFormer-B0 student: ce, kd, ddsd
    python scripts/results.py student-full --datasets ... --seeds 0-4  # the same at the full epochs
    python scripts/results.py fair-table|own-table|controls-table|strength-table|strength-plot --datasets ...
    python scripts/results.py student-table --datasets ...

Runs live in ``docs/results/round2/<stage>/runs/<dataset>/<method or arm>/seed<k>`` (tuning runs one level
deeper, ``.../<method>/<candidate>/seed0``); a run whose summary.json exists is skipped, one with a checkpoint
resumed (``results.run_all``). Tables: ``docs/results/round2/<stage>/table.md`` + ``runs.csv`` (with a
``round`` column), see ``results_round2_tables``.

**The search space, fixed before any round-2 number.** Every method of the KD family (``kd``, ``static``,
``tfkd``, ``tfkd_reg``, ``ddsd``) gets the same three (a, T, weight) candidates through the shared keys
``method.confidence / temperature / kd_weight`` (:data:`SHARED_CANDIDATES`):

* (0.99, 1, 1): the near-one-hot teacher at T = 1, round 1's val choice of ``kd`` and ``ddsd`` on 3 / 4 and
  4 / 4 sets (a < 1 at T = 1 acts as label smoothing);
* (0.99, 4, 0.5): round 1's val choice of ``tfkd`` on 3 / 4 sets (effective KD weight w T^2 = 8);
* (0.9, 4, 0.5): the softer teacher at the same temperature and weight (round 1's CamVid ``tfkd`` choice was
  a = 0.9 at T = 4), so that a and T are not confounded.

Three candidates keep the CPU budget (ISBI / SOD runs take 1-6 min) at 15 tuning runs per dataset for the
family. Phase 1 runs them with each method's first own setting; phase 2 then searches **only** the dropout
methods' own settings at their best shared setting: ``ddsd`` r_max in {0.5, 0.3} x ``method.kd_norm`` in
{kept, valid} (3 new runs), ``static`` rate in {0.2, 0.1, 0.4} (2 new runs). Everything with a dropout runs
with the monotone difficulty, the unbiased tie rule and ``hardest`` selection written out
(:data:`DROPOUT_FIXED`), so that later changes of the library's defaults do not change what these runs are.
Selection: best val main metric of seed 0, ties to the first listed candidate, as in round 1.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import results as r1  # scripts/results.py (registers itself under this name)

KD_FAMILY = ("kd", "static", "tfkd", "tfkd_reg", "ddsd")
GRID_METHODS = ("ce", *KD_FAMILY)
SHARED_KEYS = ("method.confidence", "method.temperature", "method.kd_weight")
SHARED_CANDIDATES: list[dict[str, object]] = [
    dict(zip(SHARED_KEYS, c, strict=True)) for c in ((0.99, 1.0, 1.0), (0.99, 4.0, 0.5), (0.9, 4.0, 0.5))
]
# the dropout methods' own settings; the first is phase 1's (so phase 1's run is also phase 2's first candidate)
OWN_CANDIDATES: dict[str, list[dict[str, object]]] = {
    "ddsd": [{"method.r_max": r, "method.kd_norm": n} for n in ("kept", "valid") for r in (0.5, 0.3)],
    "static": [{"method.rate": r} for r in (0.2, 0.1, 0.4)],
}
DROPOUT_FIXED: dict[str, object] = {"method.difficulty": "one_sided_kl", "method.tie_break": "random",
                                     "method.selection": "hardest"}
CONTROLS = ("random", "easiest", "bernoulli")
OWN_BASES = ("kd", "tfkd")  # ddsd at exactly their tuned (a, T, w)
# teachers of increasing quality for the fixed simple student: (name, model, share of the dataset's epochs);
# the virtual teacher (perfect by construction) is the top end, its runs are the defaults stage's. unet_teacher is
# left out on CPU: 22 min of training and ~10 min of teacher forwards per seed on ISBI (round 1's teacher stage).
STRENGTH_TEACHERS = (("unet_small_short", "unet_small", 0.1), ("unet_small_mid", "unet_small", 0.3),
                     ("unet_small", "unet_small", 1.0))
STRENGTH_METHODS = ("kd", "ddsd")  # at the library's defaults (DEFAULT_ARMS), as the virtual teacher's end
# ``transfer``: where a dataset's own fair tuning did not fit the CPU budget, its dropout's own effect and the
# selection controls (:func:`transfer_arms`) run at the setting tuned on TRANSFER_FROM (labelled so; not val-tuned)
TRANSFER_FROM = "isbi2012_membrane"
# ``defaults``: the library's defaults chosen from this round (docs/method.md), written out so that the runs stay
# what they are when the defaults change again; kd at the same (a, T, w) is the paired baseline
KD_DEFAULTS: dict[str, object] = {"method.confidence": 0.99, "method.temperature": 4.0, "method.kd_weight": 0.5}
DEFAULT_ARMS: dict[str, tuple[str, dict[str, object]]] = {
    "kd": ("kd", KD_DEFAULTS),
    "ddsd": ("ddsd", {**KD_DEFAULTS, "method.r_max": 0.3, "method.capability_relative": True,
                      "method.selection": "bernoulli", "method.difficulty": "one_sided_kl",
                      "method.tie_break": "random", "method.kd_norm": "kept"}),
}
# the same with the absolute capability rule (round 2's transfer runs used it): relative vs absolute, paired by seed
DEFAULT_ARMS["ddsd-absolute"] = ("ddsd", {**DEFAULT_ARMS["ddsd"][1], "method.capability_relative": False})
# ``student``: a realistic student, Hugging Face SegFormer-B0 from random initialisation (nothing downloaded), with
# ce and the defaults stage's kd / ddsd arms. CPU budget: bf16 autocast + channels_last (r1.FAST_UNET) and half the
# dataset's epochs (SOD: ~20 s per epoch on one thread, 15 epochs ~5 min per run); every arm gets the same budget.
# ``student-full``: the same at the simple student's full epochs (ISBI: ~5 min per run)
STUDENT_MODEL: dict[str, object] = {"model.name": "segformer_b0", **r1.FAST_UNET}
STUDENT_BUDGETS = {"student": 0.5, "student-full": 1.0}  # stage -> share of the dataset's epochs
STUDENT_ARMS = ("ce", "kd", "ddsd")


def student_model(d: str, stage: str = "student") -> dict[str, object]:
    """The overrides every arm of a student ``stage`` shares on dataset ``d`` (model, precision, epochs)."""
    return {**STUDENT_MODEL, "train.epochs": max(1, round(STUDENT_BUDGETS[stage] * r1.config_epochs(d)))}


def student_arms(d: str, stage: str = "student") -> dict[str, tuple[str, dict]]:
    """arm -> (method, overrides) of a student ``stage`` on dataset ``d``."""
    model = student_model(d, stage)
    return {arm: ("ce", model) if arm == "ce" else (DEFAULT_ARMS[arm][0], {**DEFAULT_ARMS[arm][1], **model})
            for arm in STUDENT_ARMS}


def root() -> Path:
    return r1.RESULTS / "round2"


def rel(p: Path) -> str:
    """``p`` relative to the repository when it lies inside it (as stored in tuned.json), else absolute."""
    return str(p.relative_to(r1.ROOT)) if p.is_relative_to(r1.ROOT) else str(p)


def name_of(c: dict[str, object]) -> str:
    """Directory name of a candidate: ``confidence=0.99_temperature=1_kd_weight=1_r_max=0.5_kd_norm=kept``."""
    return "_".join(f"{k.split('.')[-1]}={v:g}" if isinstance(v, float | int) and not isinstance(v, bool)
                    else f"{k.split('.')[-1]}={v}" for k, v in c.items()) or "default"


def base_setting(m: str) -> dict[str, object]:
    """What a method of the family runs with besides the shared candidate in phase 1."""
    return {**DROPOUT_FIXED, **OWN_CANDIDATES[m][0]} if m in OWN_CANDIDATES else {}


def tune_run(d: str, m: str, shared: dict, own: dict | None = None) -> Path:
    own = OWN_CANDIDATES[m][0] if own is None and m in OWN_CANDIDATES else (own or {})
    return root() / "fair-tune/runs" / d / m / name_of({**shared, **own}) / "seed0"


def _val(run: Path) -> float | None:
    f = run / "summary.json"
    if not f.exists():
        return None
    summ = json.loads(f.read_text())
    return float(summ["best_val"][summ["main_metric"]])


def _best(scored: list[tuple[float | None, dict]]) -> tuple[float, dict] | None:
    """The candidate with the best val score, ties to the first listed; None until all have finished."""
    if not scored or any(v is None for v, _ in scored):
        return None
    i = max(range(len(scored)), key=lambda j: (scored[j][0], -j))
    return scored[i][0], scored[i][1]


def reuse_defaults(d: str, m: str, over: dict[str, object], seed: int, out: Path) -> None:
    """Copy the ``defaults`` stage's run of the same (dataset, method, overrides, seed) into ``out`` instead of
    training it again (a ``reused_from.txt`` names the source). The two differ only in ``train.snapshots``, which
    writes val predictions and leaves training alone: the defaults' kd runs and the fair tuning's kd at the same
    (a, T, w) gave bit-identical val and test scores on SOD and CrackForest."""
    arm = next((a for a, (am, aover) in DEFAULT_ARMS.items() if am == m and aover == over), None)
    src = root() / "defaults/runs" / d / arm / f"seed{seed}" if arm else None
    if src is None or r1.PLAN or out.exists() or not (src / "summary.json").exists():
        return
    shutil.copytree(src, out, ignore=shutil.ignore_patterns("*.pt", "RUNNING"))
    (out / "reused_from.txt").write_text(rel(src) + "\n")


def tune_jobs(datasets: list[str], methods: list[str]) -> tuple[list, list]:
    """Phase 1 (every shared candidate) and the phase-2 jobs whose phase 1 has finished."""
    first, second = [], []
    for d in datasets:
        for m in (m for m in methods if m in KD_FAMILY):
            for c in SHARED_CANDIDATES:
                out = tune_run(d, m, c)
                reuse_defaults(d, m, {**base_setting(m), **c}, 0, out)
                first.append((r1.train_cmd(d, m, 0, {**base_setting(m), **c}, out), out))
            best = _best([(_val(tune_run(d, m, c)), c) for c in SHARED_CANDIDATES])
            if m not in OWN_CANDIDATES:
                continue
            if best is None:
                print(f"{d}/{m}: phase 2 (own settings) waits for phase 1")
                continue
            for own in OWN_CANDIDATES[m][1:]:
                out = tune_run(d, m, best[1], own)
                second.append((r1.train_cmd(d, m, 0, {**DROPOUT_FIXED, **best[1], **own}, out), out))
    return first, second


def select(datasets: list[str], methods: list[str]) -> dict:
    """Write ``round2/tuned.json``: per dataset and method the chosen overrides, from val (seed 0) only."""
    path = root() / "tuned.json"
    tuned = json.loads(path.read_text()) if path.exists() else {}
    for d in datasets:
        for m in (m for m in methods if m in KD_FAMILY):
            shared = [(_val(tune_run(d, m, c)), c) for c in SHARED_CANDIDATES]
            best = _best(shared)
            if best is None:
                print(f"{d}/{m}: phase 1 unfinished, not selected")
                continue
            entry = {"shared": {name_of(c): v for v, c in shared}}
            over = {**base_setting(m), **best[1]}
            val, run = best[0], tune_run(d, m, best[1])
            if m in OWN_CANDIDATES:
                own = [(_val(tune_run(d, m, best[1], o)), o) for o in OWN_CANDIDATES[m]]
                best_own = _best(own)
                if best_own is None:
                    print(f"{d}/{m}: phase 2 unfinished, not selected")
                    continue
                entry["own"] = {name_of(o): v for v, o in own}
                val, over = best_own[0], {**DROPOUT_FIXED, **best[1], **best_own[1]}
                run = tune_run(d, m, best[1], best_own[1])
            tuned.setdefault(d, {})[m] = {"overrides": over, "val": val, "run": rel(run),
                                          **entry}
        tuned.setdefault(d, {})["ce"] = {"overrides": {}, "val": None, "run": None}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(tuned, indent=2) + "\n")
    print(json.dumps(tuned, indent=2))
    return tuned


def grid_jobs(datasets: list[str], methods: list[str], seeds: list[int], tuned: dict) -> list:
    """Seed-major (every method of a seed before the next seed), so that a partial grid still pairs by seed."""
    jobs = []
    for d in datasets:
        for m in (m for m in methods if m in GRID_METHODS and m not in tuned.get(d, {})):
            print(f"skip {d}/{m}: not selected yet (fair-select)")
        for s in seeds:
            for m in (m for m in methods if m in GRID_METHODS and m in tuned.get(d, {})):
                t = tuned[d][m]
                out = root() / "fair-grid/runs" / d / m / f"seed{s}"
                src = r1.ROOT / t["run"] if t.get("run") else None
                if s == 0 and src and (src / "summary.json").exists() and not out.exists() and not r1.PLAN:
                    shutil.copytree(src, out, ignore=shutil.ignore_patterns("*.pt"))  # the same run: reuse it
                reuse_defaults(d, m, t["overrides"], s, out)
                jobs.append((r1.train_cmd(d, m, s, t["overrides"], out), out))
    return jobs


def need(tuned: dict, d: str, *methods: str) -> None:
    """Stop with an actionable message unless round2/tuned.json holds ``methods`` for dataset ``d``."""
    missing = [m for m in methods if m not in tuned.get(d, {})]
    if missing:
        raise SystemExit(f"{root() / 'tuned.json'} has no {', '.join(missing)} for {d}: run fair-tune and "
                         f"fair-select --datasets {d} first")


def shared_of(over: dict) -> dict:
    return {k: over[k] for k in SHARED_KEYS if k in over}


def own_arms(d: str, tuned: dict) -> dict[str, tuple[dict, Path]]:
    """``ddsd@<base>`` -> (overrides, runs root): ddsd's tuned dropout at ``base``'s tuned (a, T, w); an arm
    equal to ddsd's own tuned setting is the fair grid's ddsd (no new runs)."""
    need(tuned, d, "ddsd", *OWN_BASES)
    ddsd = tuned[d]["ddsd"]["overrides"]
    arms = {}
    for base in OWN_BASES:
        over = {**ddsd, **shared_of(tuned[d][base]["overrides"])}
        same = over == ddsd
        arms[f"ddsd@{base}"] = (over, root() / ("fair-grid/runs" if same else "own/runs") / d /
                                ("ddsd" if same else f"ddsd@{base}"))
    return arms


def own_jobs(datasets: list[str], seeds: list[int], tuned: dict) -> list:
    jobs = []
    for d in datasets:
        for over, runs in own_arms(d, tuned).values():
            if "own/runs" in runs.as_posix():
                jobs += [(r1.train_cmd(d, "ddsd", s, over, runs / f"seed{s}", snapshots=False), runs / f"seed{s}")
                         for s in seeds]
    return jobs


def control_jobs(datasets: list[str], seeds: list[int], tuned: dict) -> list:
    jobs = []
    for d in datasets:
        need(tuned, d, "ddsd")
        for sel in CONTROLS:
            over = {**tuned[d]["ddsd"]["overrides"], "method.selection": sel}
            for s in seeds:
                out = root() / "controls/runs" / d / f"selection={sel}" / f"seed{s}"
                jobs.append((r1.train_cmd(d, "ddsd", s, over, out, snapshots=False), out))
    return jobs


def teacher_run(d: str, tname: str) -> Path:
    return root() / "strength/runs" / d / "teachers" / tname / "seed0"


def strength_jobs(datasets: list[str], seeds: list[int]) -> tuple[list, list]:
    """Teachers (ce, seed 0) first; then kd / ddsd students of each at the library's defaults (the network teacher
    replaces the virtual one, so ``confidence`` is dropped), method-major so that a seed's first run fills the
    teacher-logit cache before the next method reads it."""
    first, second = [], []
    for d in datasets:
        epochs = r1.config_epochs(d)
        for tname, model, share in STRENGTH_TEACHERS:
            t = teacher_run(d, tname)
            first.append((r1.train_cmd(d, "ce", 0, {"model.name": model, "train.epochs": max(1, round(share * epochs)),
                                                    **r1.FAST_UNET}, t, snapshots=False), t))
            for m in STRENGTH_METHODS:
                over = {**{k: v for k, v in DEFAULT_ARMS[m][1].items() if k != "method.confidence"},
                        **r1.FAST_TEACHER}
                for s in seeds:
                    out = root() / "strength/runs" / d / tname / m / f"seed{s}"
                    cmd = r1.train_cmd(d, m, s, over, out, snapshots=False)
                    second.append(([*cmd, "--teacher", str(t / "checkpoints" / "best.pt"),
                                    "--teacher-cache", str(r1.TEACHER_CACHE / "round2" / d / tname)], out))
    return first, second


def transfer_arms(tuned: dict) -> dict[str, tuple[str, dict]]:
    """arm -> (method, overrides) at ``TRANSFER_FROM``'s tuned kd / ddsd settings."""
    src = tuned[TRANSFER_FROM]
    ddsd = src["ddsd"]["overrides"]
    return {"kd": ("kd", src["kd"]["overrides"]), "ddsd": ("ddsd", ddsd),
            "selection=random": ("ddsd", {**ddsd, "method.selection": "random"}),
            "selection=bernoulli": ("ddsd", {**ddsd, "method.selection": "bernoulli"})}


def arm_jobs(stage: str, datasets: list[str], seeds: list[int], arms: dict[str, tuple[str, dict]]) -> list:
    """``round2/<stage>/runs/<dataset>/<arm>/seed<k>`` for every arm -> (method, overrides); seed-major (every
    arm of a seed before the next seed), so that a partial stage still pairs by seed."""
    jobs = []
    for d in datasets:
        for s in seeds:
            for arm, (m, over) in arms.items():
                out = root() / stage / "runs" / d / arm / f"seed{s}"
                jobs.append((r1.train_cmd(d, m, s, over, out, snapshots=False), out))
    return jobs


def main(a, datasets: list[str], methods: list[str] | None) -> int:
    """Run one round-2 stage (``a``: the parsed arguments of scripts/results.py)."""
    import results_round2_tables as tables

    arms = {a_: v for a_, v in DEFAULT_ARMS.items() if not methods or a_ in methods}  # --methods picks arms here
    methods = methods or list(GRID_METHODS)
    if a.stage == "fair-select":
        select(datasets, methods)
        return 0
    if a.stage == "fair-tune":
        first, second = tune_jobs(datasets, methods)
        rc = r1.run_all(first, a.jobs)
        if not r1.PLAN:
            second = tune_jobs(datasets, methods)[1]  # phase 1 may have finished meanwhile
        return rc or r1.run_all(second, a.jobs)
    if a.stage in ("defaults", "defaults-table", "strength", "strength-table", "strength-plot", "student-table",
                   *STUDENT_BUDGETS):  # no tuning involved: the library's defaults
        if a.stage == "defaults":
            return r1.run_all(arm_jobs("defaults", datasets, r1.seeds_of(a.seeds), arms), a.jobs)
        if a.stage in STUDENT_BUDGETS:
            return r1.run_all([j for d in datasets for j in arm_jobs(a.stage, [d], r1.seeds_of(a.seeds),
                                                                      student_arms(d, a.stage))], a.jobs)
        if a.stage == "strength":
            first, second = strength_jobs(datasets, r1.seeds_of(a.seeds))
            return r1.run_all(first, a.jobs) or r1.run_all(second, a.jobs)
        return tables.main(a.stage, datasets, {})
    path = root() / "tuned.json"
    if not path.exists():
        raise SystemExit(f"{a.stage}: {path} does not exist; run fair-tune and fair-select first")
    tuned = json.loads(path.read_text())
    seeds = r1.seeds_of(a.seeds)
    if a.stage.endswith("-table"):
        return tables.main(a.stage, datasets, tuned)
    if a.stage == "fair-grid":
        return r1.run_all(grid_jobs(datasets, methods, seeds, tuned), a.jobs)
    if a.stage == "own":
        return r1.run_all(own_jobs(datasets, seeds, tuned), a.jobs)
    if a.stage == "controls":
        return r1.run_all(control_jobs(datasets, seeds, tuned), a.jobs)
    return r1.run_all(arm_jobs("transfer", datasets, seeds, transfer_arms(tuned)), a.jobs)

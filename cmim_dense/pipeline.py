"""The main job, the paper's sweeps and the two studies (CMIM's evidence, binary heads) as resumable
stages: pretrain -> fine-tune -> chart.

Every stage writes into its own folder under the root and is skipped when its result already
exists, so re-running a command continues where it stopped.  A stage that fails is named, the
stages that need it are skipped, and the others still run.

Seeds: with ``seeds=N`` every pretraining and fine-tuning runs N times, seed k = 0..N-1 (the
fine-tunes of seed k on the backbone pretrained with seed k), in ``pretrain/RUN/seed<k>`` and
``finetune/RUN/seed<k>/TASK``; one seed keeps ``pretrain/RUN`` and ``finetune/RUN/TASK``.  The
tables then give each metric's mean over the seeds with its 95 % confidence interval, and the
paired differences (+cmim, binary, distilled and multi-task heads against their base,
:mod:`cmim_dense.plots.result_tables`); the seg-vs-depth chart
(:mod:`cmim_dense.plots.seg_depth`) draws the backbones with seg and depth runs, and a job of other
tasks (``--tasks depth``) says why it has none.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

from .checkpoint_io import load_checkpoint
from .dense import TASKS
from .engine import resolve_config, run_pretraining
from .engine.finetune import metrics_paths, run_finetuning
from .engine.finetune_config import resolve_finetune_config
from .methods import CMIM_FLAGS, CMIM_SWEEPS, base_method
from .plots.analysis import sweep_chart
from .plots.cmim_study import cmim_study_report
from .plots.predictions import qualitative_chart
from .plots.result_tables import headline_differences
from .plots.seg_depth import seg_depth_chart
from .stages import Stage
from .stats import seed_names

MAIN_METHODS = ("fp", "bnn", "irnet", "irnet+cmim", "rbnn", "rbnn+cmim")
MAIN_TASKS = ("seg", "depth", "normals")  # the dense tasks every backbone is fine-tuned on (names of dense.TASKS)
# One protocol for every method on the built-in world, sized so that the main job takes minutes on
# 2 CPU cores: Adam 1e-3 with a cosine decay (the recipes' ImageNet SGD schedules need far more
# steps), 2,000 object images of 32 px (docs/pretraining_world.md has every method's curve).
MAIN_PRETRAIN: dict[str, Any] = {"epochs": 6, "synthetic_samples": 2000, "image_size": 32, "batch_size": 64,
                                 "optimizer": "adam", "lr": 1e-3, "schedule": "cos"}
QUICK_PRETRAIN: dict[str, Any] = {"epochs": 1, "synthetic_samples": 64, "image_size": 32, "batch_size": 32,
                                  "optimizer": "adam", "lr": 1e-3}
QUICK_FINETUNE: dict[str, Any] = {"iters": 4, "batch_size": 4, "decoder_channels": 16}
SWEEP_VALUES = {"lambda": (0.1, 0.2, 0.4, 0.8, 1.6, 3.2), "n_nce": (16, 64, 256, 1024)}  # of CMIM_SWEEPS
# The CMIM evidence study (docs/methods.md, "What CMIM does on the built-in data"): pretraining in a
# regime where the binary networks over-fit (the paper's claim is about scarce data), seeds enough
# for a paired 95 % interval of validation top-1 about 2 points wide, transfer for the first seeds.
STUDY_METHODS = ("irnet", "rbnn")
STUDY_TASKS = ("seg", "depth")  # the transfer the study reports (plots/cmim_study.py)
STUDY_LAMBDAS = (0.8, 3.2)  # with lambda 0 (the method itself): three points of Table 3's grid
STUDY_SEEDS = 12
STUDY_TRANSFER_SEEDS = 3
STUDY_PRETRAIN: dict[str, Any] = {"epochs": 60, "synthetic_samples": 130, "synthetic_val_samples": 3900,
                                  "eval_every": 10, "save_every": 10, "image_size": 32, "batch_size": 32,
                                  "optimizer": "adam", "lr": 1e-3, "schedule": "cos"}
QUICK_STUDY_PRETRAIN: dict[str, Any] = {**QUICK_PRETRAIN, "epochs": 2, "synthetic_val_samples": 32}
QUICK_STUDY_SEEDS = 3
# The binary-head study (docs/binary_heads.md): the main job's backbones of three kinds (full
# precision, RBNN, IR-Net) under the main job's full-precision head and under the same head with its
# 3x3 convolutions binarized by IR-Net's recipe, every task, 6 seeds for paired 95 % intervals (3 left
# the binary heads' cost inside the noise); for the first 3 seeds also the binary heads distilled
# from the full-precision ones and one multi-task model of each head kind.
HEAD_STUDY_METHODS = ("fp", "rbnn", "irnet")
HEAD_STUDY_BINARY_HEAD = "irnet"
HEAD_STUDY_SEEDS = 6
HEAD_STUDY_EXTRA_SEEDS = 3


def pretraining_finished(out: Path, epochs: int) -> bool:
    last = out / "last.pt"
    return (last.is_file() and (out / "best.pt").is_file()
            and load_checkpoint(last, mmap=True)["meta"]["epoch"] >= epochs)  # mapped: the meta is all it reads


def pretrain_stage(name: str, method: str, out: Path, settings: dict[str, Any], progress: bool) -> Stage:
    config = resolve_config(method, {**settings, "out": str(out), "resume": True, "progress_bar": progress})
    return Stage(name, lambda: pretraining_finished(out, config.epochs), partial(run_pretraining, config),
                 in_worker=True)


def finetune_stage(name: str, task: str, backbone: Path, out: Path, settings: dict[str, Any], progress: bool,
                   needs: list[str]) -> Stage:
    """A fine-tune of ``task`` (several, comma-separated: one multi-task model, its metrics in ``out/TASK``)."""
    settings = {**settings, "task": task, "backbone": str(backbone), "out": str(out), "resume": True,
                "progress_bar": progress}
    metrics = metrics_paths(out, task).values()
    return Stage(name, lambda: all(path.is_file() for path in metrics), partial(finetune, settings), needs,
                 in_worker=True)


def finetune(settings: dict[str, Any]) -> dict[str, Any]:
    """A fine-tune stage's work, resolved when it runs (its backbone exists only then)."""
    return run_finetuning(resolve_finetune_config(settings))


def chart_stage(root: Path, needs: list[str]) -> Stage:
    """The tables of every run under ``root/finetune`` (seeds gathered into one row each) and the
    seg-vs-depth chart of the backbones with seg and depth runs; prints what it skipped, its notes,
    the paired +cmim differences of each task's headline and, without a chart, one line saying why."""

    def run() -> Any:
        result = seg_depth_chart([root / "finetune"], root / "seg_vs_depth")
        for skipped in result.skipped:
            print(f"  skipped {skipped}")
        for note in result.notes + result.left_out:
            print(f"  note: {note}")
        for difference in result.differences:
            print(f"  {difference.twin} − {difference.base} (seeds {seed_names(difference.seeds)}): "
                  f"{headline_differences(difference)}")
        if result.no_chart:
            print(f"  {result.no_chart_line()}")
        return result

    return Stage("chart", lambda: False, run, needs)


def qualitative_stage(root: Path, folders: list[str], needs: list[str], images: tuple[int, ...] = (0, 1)) -> Stage:
    """The qualitative grid (Fig. 5a) of every fine-tuned backbone on the first test images: a ground
    truth and a prediction panel per task the folders hold (depth alone, too)."""
    def run() -> Any:
        return qualitative_chart([root / "finetune" / folder for folder in folders], images, root / "qualitative")

    return Stage("qualitative grid", lambda: False, run, needs)


def check_seeds(seeds: int) -> int:
    """``seeds`` if it is a usable number of seeds (a positive integer); else a one-line ValueError."""
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise ValueError(f"--seeds must be a positive integer, got {seeds!r}")
    return seeds


def run_folder(folder: str, seed: int, seeds: int) -> str:
    """Where seed ``seed`` of run ``folder`` lives under ``pretrain/`` and ``finetune/``: the folder itself
    when the job has one seed, ``FOLDER/seed<k>`` when it has several."""
    return folder if seeds == 1 else f"{folder}/seed{seed}"


HeadPlan = tuple[str | None, bool]  # (the method binarizing the head, None: full precision; distilled)
FULL_PRECISION_HEAD: HeadPlan = (None, False)


def seed_run(folder: str, seed: int, seeds: int) -> tuple[str, str]:
    """Seed ``seed`` of run ``folder``: its folder under ``pretrain/`` and ``finetune/`` (:func:`run_folder`)
    and its name in stage names (``irnet seed2``; the folder's name when the job has one seed)."""
    return run_folder(folder, seed, seeds), folder if seeds == 1 else f"{folder} seed{seed}"


def method_stages(runs: dict[str, tuple[str, dict[str, Any]]], root: Path, pretrain: dict[str, Any],
                  finetune: dict[str, Any], progress: bool, seeds: int = 1,
                  tasks: tuple[str, ...] = MAIN_TASKS, finetune_seeds: int | None = None,
                  heads: tuple[HeadPlan, ...] = (FULL_PRECISION_HEAD,)) -> list[Stage]:
    """For each seed k < ``seeds`` and each run folder name -> (method, extra pretraining settings):
    pretrain with seed k, then, for k < ``finetune_seeds`` (default every seed), the fine-tunes (seed
    k) of that backbone for each task of ``tasks`` and head of ``heads`` (:func:`head_stages`)."""
    stages = []
    for seed in range(check_seeds(seeds)):  # seed-major: an interrupted job leaves whole seeds of every run
        for folder, (method, extra) in runs.items():
            run, name = seed_run(folder, seed, seeds)
            out = root / "pretrain" / run
            stages.append(pretrain_stage(f"pretrain {name}", method, out, {**pretrain, **extra, "seed": seed},
                                         progress))
            if finetune_seeds is not None and seed >= finetune_seeds:
                continue
            for task in tasks:
                stages += head_stages(task, name, out / "best.pt", root / "finetune" / run,
                                      {**finetune, "seed": seed}, progress, heads)
    return stages


def head_stages(task: str, name: str, backbone: Path, folder: Path, settings: dict[str, Any], progress: bool,
                heads: tuple[HeadPlan, ...] = (FULL_PRECISION_HEAD,)) -> list[Stage]:
    """The fine-tunes of the backbone of run ``name`` for ``task`` (``"seg,depth,normals"``: one
    multi-task model, in ``seg+depth+normals``), one per head of ``heads``: the full-precision head in
    ``folder/TASK``; a head binarized by METHOD's recipe in ``TASK-binary_head_METHOD``, distilled from
    the full-precision head's run (``--head-teacher``, a stage it needs) in ``...-distilled``."""
    base, full_precision = task.replace(",", "+"), f"{task} {name}"
    stages = []
    for head, distilled in heads:
        suffix, label, extra = "", full_precision, {}
        if head is not None:
            suffix, label, extra = f"-binary_head_{head}", f"{full_precision} {head} head", {"binary_head": head}
        if distilled:
            suffix, label = f"{suffix}-distilled", f"{label} distilled"
            extra["head_teacher"] = str(folder / base / "last.pt")
        stages.append(finetune_stage(label, task, backbone, folder / f"{base}{suffix}", {**settings, **extra},
                                     progress, [f"pretrain {name}"] + ([full_precision] if distilled else [])))
    return stages


def pretrain_settings(quick: bool, teacher: str | None) -> dict[str, Any]:
    return {**(QUICK_PRETRAIN if quick else MAIN_PRETRAIN), **({"teacher": teacher} if teacher else {})}


def finetune_settings(quick: bool, packed_backbone: bool) -> dict[str, Any]:
    """What every fine-tune of a job is given beyond its task's schedule (``packed_backbone=False``:
    ``--no-packed-backbone``, the frozen backbone in float on a CPU)."""
    return {**(QUICK_FINETUNE if quick else {}), **({} if packed_backbone else {"packed_backbone": False})}


def check_tasks(tasks: tuple[str, ...]) -> tuple[str, ...]:
    """``tasks`` if it names one or more registered dense tasks, each once; else a one-line
    ValueError that lists the valid names.  (Any tasks make the tables; the seg-vs-depth chart is
    drawn when seg and depth are among them.)"""
    valid = f"valid: {', '.join(TASKS.names())}"
    if not tasks:
        raise ValueError(f"--tasks names no task; {valid}")
    for name in tasks:
        if name not in TASKS:
            raise ValueError(f"--tasks: unknown task {name!r}; {valid}")
    repeated = sorted({name for name in tasks if tasks.count(name) > 1})
    if repeated:
        raise ValueError(f"--tasks names {', '.join(repeated)} more than once; {valid}")
    return tasks


def main_job_stages(root: Path, methods: tuple[str, ...] = MAIN_METHODS, *, quick: bool = False,
                    progress: bool = True, teacher: str | None = None, seeds: int = 1,
                    tasks: tuple[str, ...] = MAIN_TASKS, packed_backbone: bool = True) -> list[Stage]:
    """The main job: every method pretrained, fine-tuned for every task of ``tasks`` (``seeds`` times,
    seeds 0..N-1), then the tables (mean ± 95 % CI over the seeds), the seg-vs-depth chart (when
    ``tasks`` has both) and the qualitative grid of the tasks fine-tuned (seed 0)."""
    pretrain = pretrain_settings(quick, teacher)
    finetune = finetune_settings(quick, packed_backbone)
    stages = method_stages({m: (m, {}) for m in methods}, root, pretrain, finetune, progress, seeds,
                           check_tasks(tasks))
    finetunes = [s.name for s in stages if not s.name.startswith("pretrain")]
    return stages + [chart_stage(root, finetunes),
                     qualitative_stage(root, [run_folder(m, 0, seeds) for m in methods], finetunes)]


def sweep_runs(kind: str, methods: tuple[str, ...], values: tuple[float, ...] | None = None
               ) -> dict[str, tuple[str, dict[str, Any]]]:
    """Run folder -> (method, extra pretraining settings) of a grid: each method without CMIM, and
    with CMIM (``methods``) or at each swept value of lambda / n_nce (``values`` or the defaults)."""
    runs: dict[str, tuple[str, dict[str, Any]]] = {}
    for method in methods:
        base = base_method(method)
        runs[base] = (base, {})
        if kind == "methods":
            runs[f"{base}+cmim"] = (f"{base}+cmim", {})
            continue
        if kind not in CMIM_SWEEPS:
            raise ValueError(f"unknown sweep {kind!r}; valid: methods, {', '.join(CMIM_SWEEPS)}")
        flag = CMIM_SWEEPS[kind]
        for value in values or SWEEP_VALUES[kind]:  # folders named by the recorded field: irnet+cmim_lam0.8
            runs[f"{base}+cmim_{CMIM_FLAGS[flag]}{value:g}"] = (f"{base}+cmim", {flag: value})
    return runs


def sweep_stages(root: Path, methods: tuple[str, ...], *, kind: str, values: tuple[float, ...] | None = None,
                 quick: bool = False, progress: bool = True, teacher: str | None = None,
                 seeds: int = 1, packed_backbone: bool = True) -> list[Stage]:
    """The paper's grids: ``methods`` (with and without CMIM), or a CMIM ``lambda`` / ``n_nce`` sweep
    of each ``methods`` entry (plus the method without CMIM), each run ``seeds`` times; then the
    seg-vs-depth chart (mean ± 95 % CI over the seeds) and the top-1 sweep chart (of seed 0)."""
    check_seeds(seeds)
    pretrain = pretrain_settings(quick, teacher)
    runs = sweep_runs(kind, methods, values)
    stages = method_stages(runs, root, pretrain, finetune_settings(quick, packed_backbone), progress, seeds)
    finetunes = [s.name for s in stages if not s.name.startswith("pretrain")]
    stages.append(chart_stage(root, finetunes))
    if kind in CMIM_SWEEPS:
        pretrains = [s.name for s in stages if s.name.startswith("pretrain")]
        seed_zero = [root / "pretrain" / run_folder(folder, 0, seeds) for folder in runs] if seeds > 1 else None
        stages.append(sweep_chart_stage(kind, root, seed_zero, pretrains))
    return stages


def cmim_study_stages(root: Path, methods: tuple[str, ...] = STUDY_METHODS, *,
                      values: tuple[float, ...] | None = None, quick: bool = False, progress: bool = True,
                      seeds: int = STUDY_SEEDS, transfer_seeds: int = STUDY_TRANSFER_SEEDS,
                      packed_backbone: bool = True) -> list[Stage]:
    """The CMIM evidence study: each method without CMIM and with CMIM at each lambda (``values``,
    default Table 3's 0.8 and 3.2) pretrained ``seeds`` times in the over-fitting regime
    :data:`STUDY_PRETRAIN`, the backbones of the first ``transfer_seeds`` seeds fine-tuned on the
    built-in rooms (seg and depth); then the report (curves, final top-1 and transfer as mean ±
    95 % CI, paired CMIM gains) and the seg-vs-depth chart."""
    check_seeds(seeds)
    pretrain = QUICK_STUDY_PRETRAIN if quick else STUDY_PRETRAIN
    runs = sweep_runs("lambda", methods, values or STUDY_LAMBDAS)
    finetune = finetune_settings(quick, packed_backbone)
    stages = method_stages(runs, root, pretrain, finetune, progress, seeds, STUDY_TASKS,
                           min(seeds, check_seeds(transfer_seeds)))
    everything = [stage.name for stage in stages]
    report = Stage("CMIM study report", lambda: False, lambda: cmim_study_report(root, root / "cmim_study"), everything)
    return stages + [report, chart_stage(root, [s for s in everything if not s.startswith("pretrain")])]


def binary_head_study_stages(root: Path, methods: tuple[str, ...] = HEAD_STUDY_METHODS, *, quick: bool = False,
                             progress: bool = True, seeds: int = HEAD_STUDY_SEEDS,
                             extra_seeds: int = HEAD_STUDY_EXTRA_SEEDS, binary_head: str = HEAD_STUDY_BINARY_HEAD,
                             packed_backbone: bool = True) -> list[Stage]:
    """The binary-head study: each method pretrained as in the main job ``seeds`` times, each backbone
    fine-tuned for every task under the main job's full-precision head and under the same head binarized
    by ``binary_head``'s recipe (same seed, so they are paired); then, for the first ``extra_seeds``
    seeds, the binary heads distilled from the full-precision ones and one multi-task model of each
    head kind; then the tables (with the paired binary-head, distillation and multi-task differences)
    and the seg-vs-depth chart (binary heads as squares)."""
    finetune = finetune_settings(quick, packed_backbone)
    binary, distilled = (binary_head, False), (binary_head, True)
    stages = method_stages({m: (m, {}) for m in methods}, root, pretrain_settings(quick, None), finetune,
                           progress, seeds, MAIN_TASKS, heads=(FULL_PRECISION_HEAD, binary))
    for seed in range(min(seeds, check_seeds(extra_seeds))):
        for method in methods:
            run, name = seed_run(method, seed, seeds)
            backbone, folder = root / "pretrain" / run / "best.pt", root / "finetune" / run
            settings = {**finetune, "seed": seed}
            for task in MAIN_TASKS:
                stages += head_stages(task, name, backbone, folder, settings, progress, (distilled,))
            stages += head_stages(",".join(MAIN_TASKS), name, backbone, folder, settings, progress,
                                  (FULL_PRECISION_HEAD, binary, distilled))
    return stages + [chart_stage(root, [s.name for s in stages if not s.name.startswith("pretrain")])]


def sweep_chart_stage(kind: str, root: Path, seed_zero: list[Path] | None, needs: list[str]) -> Stage:
    """The top-1 sweep chart of every run under ``root/pretrain``; with several seeds, of the
    ``seed_zero`` runs only (said so: the sweep chart plots one run per swept value)."""
    def run() -> Any:
        if seed_zero is not None:
            print("  note: the sweep chart shows seed 0 of each run (the seeds' statistics are in the "
                  "seg-vs-depth table)")
        return sweep_chart(seed_zero or [root / "pretrain"], root / f"sweep_{kind}", param=kind)

    return Stage(f"{kind} chart", lambda: False, run, needs)

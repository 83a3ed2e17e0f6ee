"""The main job in its reduced mode: every stage runs, the chart and table appear, a re-run skips them;
with --seeds, once per seed."""

import csv
import json
from pathlib import Path

import pytest
import torch


@pytest.fixture(scope="module")
def data_cache(tmp_path_factory) -> str:
    """One rendered synthetic NYUD-v2 for the jobs of this module (rendering it is a good part of a quick job)."""
    return str(tmp_path_factory.mktemp("cache"))


def metrics(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())


def table_rows(path: Path) -> dict[str, dict[str, str]]:
    with path.open() as handle:
        return {row["method"]: row for row in csv.DictReader(handle)}


def test_quick_main_job_produces_the_chart_and_resumes(entry_script, tmp_path, data_cache, monkeypatch,
                                                       capsys) -> None:
    """The quick job (1 epoch of 64 images, 4 fine-tuning iterations) guarantees no learning: its seg
    heads score below the majority-class baseline (measured mIoU 1.0-1.3 % vs 3.1 %).  What it does
    guarantee, and what is checked: every fine-tune read its own method's backbone and the data set
    of the others (the trivial baselines, which depend on the data alone, are identical across
    methods), the depth heads start at the mean training depth, so after 4 small steps their RMSE is
    within 10 % of the baseline's (measured 0.998 and 1.0007 x; a head starting from 0 would be at
    ~3 x), and the table holds exactly the metrics the stages wrote (top-1 from best.pt, mIoU,
    pixel accuracy, RMSE, delta1, the normals' mean angle from metrics.json, -ln RMSE recomputed).
    That the heads beat the baselines at a real budget is test_finetune.py's test.

    Catches: a stage reading another method's backbone, a chart fed stale or swapped metrics, a
    depth head not initialised at the mean, a re-run that redoes finished stages.  (pipeline/run.py's
    main() in this process, twice: the job's stages run in it with one job, as in a process of its own.)"""
    command = ["--quick", "--methods", "fp,bnn+cmim", "--root", str(tmp_path / "main"), "--no-progress"]
    monkeypatch.setenv("CMIM_DENSE_CACHE", data_cache)
    job = entry_script("pipeline/run")
    status, first = job.main(command), capsys.readouterr()
    assert status == 0, first.out + first.err
    main = tmp_path / "main"
    for suffix in (".png", ".svg", ".csv", ".md"):
        assert (main / f"seg_vs_depth{suffix}").is_file()
    assert (main / "qualitative.png").is_file()
    table = (main / "seg_vs_depth.md").read_text()
    assert "| fp |" in table and "| bnn+cmim |" in table
    assert "chart: " in first.out

    rows = table_rows(main / "seg_vs_depth.csv")
    assert sorted(rows) == ["bnn+cmim", "fp"]
    baselines = {"seg": [], "depth": []}
    for method, row in rows.items():
        backbone = main / "pretrain" / method / "best.pt"
        seg, depth = metrics(main / "finetune" / method / "seg"), metrics(main / "finetune" / method / "depth")
        assert seg["backbone"] == depth["backbone"] == row["backbone"] == str(backbone.resolve())
        assert seg["method"] == depth["method"] == method
        top1 = torch.load(backbone, weights_only=True)["meta"]["top1"]
        assert float(row["top1"]) == pytest.approx(top1) and seg["top1"] == depth["top1"] == top1
        normals = metrics(main / "finetune" / method / "normals")
        assert normals["backbone"] == row["backbone"] and normals["method"] == method
        for key, record in (("miou", seg), ("pixel_acc", seg), ("rmse", depth), ("delta1", depth),
                            ("mean_angle", normals), ("within_11_25", normals)):
            assert float(row[key]) == pytest.approx(record[key], rel=1e-12), (method, key)
        assert float(row["neg_log_rmse"]) == pytest.approx(-torch.tensor(depth["rmse"]).log().item(), rel=1e-6)
        assert abs(depth["rmse"] / depth["baseline"]["rmse"] - 1) < 0.1
        baselines["seg"].append(seg["baseline"])
        baselines["depth"].append(depth["baseline"])
    assert all(records[0] == records[1] for records in baselines.values())

    status, again = job.main(command), capsys.readouterr()
    assert status == 0, again.out + again.err
    assert again.out.count("already done") == 8  # 2 pretrainings + 6 fine-tunes; only the chart is redrawn


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_a_failed_stage_names_itself_and_blocks_its_dependents(entry_script, tmp_path, jobs, monkeypatch,
                                                               capsys) -> None:
    """A corrupt last.pt fails its pretraining with the cause on one line (in a worker too, whose
    traceback goes to its log), the fine-tunes that need it are skipped, the exit code says so.
    Catches: a worker's failure lost or reported without its cause, dependents run on nothing.
    (pipeline/run.py's main() in this process; with --jobs 2 the stages still run in spawned workers.)"""
    out = tmp_path / "main" / "pretrain" / "fp"
    out.mkdir(parents=True)
    (out / "last.pt").write_bytes(b"not a checkpoint")
    monkeypatch.setenv("CMIM_DENSE_CACHE", str(tmp_path / "cache"))
    status = entry_script("pipeline/run").main(["--quick", "--methods", "fp", "--root", str(tmp_path / "main"),
                                                "--no-progress", "--jobs", jobs])
    result = capsys.readouterr()
    assert status == 1, result.out + result.err
    failure = next(line for line in result.out.splitlines() if "pretrain fp: FAILED" in line)
    assert "last.pt" in failure and "checkpoint" in failure
    assert "seg fp: skipped, needs pretrain fp" in result.out
    assert "rerun the same command" in result.err
    assert (out / "last.pt").read_bytes() == b"not a checkpoint"  # nothing written over it
    if jobs == "2":
        assert "Traceback" in (tmp_path / "main" / "logs" / "pretrain_fp.log").read_text()


def test_unknown_method_is_a_one_line_error(entry_script, tmp_path, capsys) -> None:
    assert entry_script("pipeline/run").main(["--methods", "fp,nosuch", "--root", str(tmp_path)]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "nosuch" in error
    assert not any(tmp_path.iterdir())


def test_main_job_takes_any_registered_tasks(entry_script, tmp_path, capsys) -> None:
    """--tasks depth: a pretraining, a depth fine-tune per method, then the chart stage, which writes
    the tables of the depth runs and says in one line why there is no chart, and the qualitative
    grid; unknown, repeated or no task names are refused in one line that lists the valid ones.

    Catches: a job of one task refused (or one without seg and depth failing at its chart stage),
    a typo'd or doubled task reaching the stages, a stale chart left beside the new tables."""
    from cmim_dense.pipeline import check_tasks, main_job_stages

    from .test_plots import write_run

    for tasks in (("seg", "depth", "normals"), ("depth",), ("normals", "seg")):
        assert check_tasks(tasks) == tasks
    for tasks, message in ((("seg", "depth", "normal"), "--tasks: unknown task 'normal'"),
                           (("depth", "seg", "depth"), "--tasks names depth more than once"),
                           ((), "--tasks names no task")):
        with pytest.raises(ValueError) as error:
            check_tasks(tasks)
        assert str(error.value) == f"{message}; valid: depth, normals, seg"
    script = entry_script("pipeline/run")
    for value in ("depth,depth", "", "seg,,depth"):
        assert script.main(["--tasks", value, "--root", str(tmp_path / "refused")]) == 2
        error = capsys.readouterr().err
        assert error.count("\n") == 1 and error.startswith("error: --tasks") and "valid: depth, normals, seg" in error
    assert not (tmp_path / "refused").exists()

    root = tmp_path / "main"
    stages = main_job_stages(root, ("irnet", "irnet+cmim"), quick=True, progress=False, tasks=("depth",))
    assert [(stage.name, stage.needs) for stage in stages[-2:]] == [
        ("chart", ["depth irnet", "depth irnet+cmim"]), ("qualitative grid", ["depth irnet", "depth irnet+cmim"])]
    assert [stage.name for stage in stages[:-2]] == ["pretrain irnet", "depth irnet", "pretrain irnet+cmim",
                                                     "depth irnet+cmim"]
    for method, rmse in (("irnet", 0.8), ("irnet+cmim", 0.7)):  # what the fine-tunes write, where they write it
        write_run(root / "finetune" / method / "depth", "depth", method, 0.5, 0.0, rmse,
                  backbone=str(root / "pretrain" / method / "best.pt"))
    (root / "seg_vs_depth.png").write_text("a chart of earlier runs")
    stages[-2].run()
    assert capsys.readouterr().out.splitlines()[-1] == (
        f"  no seg-vs-depth chart: it needs seg and depth runs, these runs have depth only; tables in "
        f"{root / 'seg_vs_depth.md'} (and .csv)")
    assert sorted(path.name for path in root.iterdir()) == ["finetune", "seg_vs_depth.csv", "seg_vs_depth.md",
                                                            "seg_vs_depth_cmim_differences.csv"]
    assert "| irnet+cmim | 50.00 | 0.3567 | 0.7000 | 55.00 |" in (root / "seg_vs_depth.md").read_text()


def test_seeded_quick_job_runs_each_seed_in_its_folder_and_tabulates_intervals(entry_script, tmp_path, data_cache,
                                                                             monkeypatch, capsys) -> None:
    """--seeds 2 --jobs 2: every pretraining and fine-tuning runs for seeds 0 and 1 in RUN/seed<k>, two at a time
    in worker processes (each fine-tune after its backbone's pretraining, the table after all), the
    fine-tunes of seed k on the backbone of seed k, each run configured with its seed; the table
    gives mean ± interval over 2 seeds and the paired irnet+cmim − irnet differences; a re-run skips
    all 8 finished runs (``--tasks seg``: the quick job above covers depth and normals, whose
    fine-tunes are the same stages with another task).  pipeline/run.py's main() in this process
    (the job's parent; its stages run in spawned workers).

    Catches: seeds written over one folder, a seed not passed to the pretraining or the fine-tuning
    (both would run seed 0), a fine-tune of seed 1 on seed 0's backbone, a table that does not
    gather the seeds or averages other numbers than the runs', paired differences not taken seed by
    seed, seeded stages that are not skipped when finished."""
    main = tmp_path / "main"
    command = ["--quick", "--seeds", "2", "--methods", "irnet,irnet+cmim", "--tasks", "seg", "--root", str(main),
               "--no-progress", "--jobs", "2"]
    monkeypatch.setenv("CMIM_DENSE_CACHE", data_cache)
    job = entry_script("pipeline/run")
    status, first = job.main(command), capsys.readouterr()
    assert status == 0, first.out + first.err
    assert first.out.count(": done in ") == 8 and len(list((main / "logs").glob("*.log"))) == 8
    assert "epoch 1/1" in (main / "logs" / "pretrain_irnet_seed1.log").read_text()
    for method in ("irnet", "irnet+cmim"):
        for seed in (0, 1):
            backbone = main / "pretrain" / method / f"seed{seed}" / "best.pt"
            assert torch.load(backbone, weights_only=True)["meta"]["config"]["seed"] == seed
            assert sorted(path.name for path in (main / "finetune" / method / f"seed{seed}").iterdir()) == ["seg"]
            run = main / "finetune" / method / f"seed{seed}" / "seg"
            assert json.loads((run / "config.json").read_text())["seed"] == seed
            assert json.loads((run / "metrics.json").read_text())["backbone"] == str(backbone.resolve())
    assert not (main / "pretrain" / "irnet" / "best.pt").exists()
    table = (main / "seg_vs_depth.md").read_text()
    assert "| irnet | 2 | " in table and "| irnet+cmim | 2 | " in table and "±" in table
    assert "| irnet+cmim − irnet | 0, 1 | " in table
    assert "irnet+cmim − irnet (seeds 0, 1): mIoU " in first.out
    # the table's means and the paired differences are those of the runs' own metrics.json
    miou = {(method, seed): metrics(main / "finetune" / method / f"seed{seed}" / "seg")["miou"]
            for method in ("irnet", "irnet+cmim") for seed in (0, 1)}
    rows = table_rows(main / "seg_vs_depth.csv")
    for method in ("irnet", "irnet+cmim"):
        assert rows[method]["seeds"] == "0;1" and rows[method]["n_seeds"] == "2"
        assert float(rows[method]["miou"]) == pytest.approx((miou[method, 0] + miou[method, 1]) / 2, rel=1e-9)
    with (main / "seg_vs_depth_cmim_differences.csv").open() as handle:
        paired = next(row for row in csv.DictReader(handle) if row["metric"] == "miou")
    per_seed = [miou["irnet+cmim", seed] - miou["irnet", seed] for seed in (0, 1)]
    assert [float(v) for v in paired["differences"].split(";")] == pytest.approx(per_seed, rel=1e-9, abs=1e-12)
    assert float(paired["mean"]) == pytest.approx(sum(per_seed) / 2, rel=1e-9, abs=1e-12)

    status, again = job.main(command), capsys.readouterr()
    assert status == 0, again.out + again.err
    assert again.out.count("already done") == 8  # 4 pretrainings + 4 fine-tunes


def test_seeds_must_be_a_positive_integer(entry_script, tmp_path, capsys) -> None:
    """Catches: --seeds 0 accepted (a job of no runs that 'succeeds'), a negative or non-numeric
    count reaching the stages, or an argparse usage dump instead of one line."""
    script = entry_script("pipeline/run")
    for value in ("0", "-2", "two"):
        assert script.main(["--seeds", value, "--root", str(tmp_path)]) == 2
        error = capsys.readouterr().err
        assert error.count("\n") == 1 and error.startswith("error: --seeds must be a positive integer, got "), error
    assert not any(tmp_path.iterdir())
    assert script.main(["--jobs", "0", "--root", str(tmp_path / "jobs")]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith("error: --jobs must be a positive integer, got 0"), error
    assert not (tmp_path / "jobs").exists()


def test_worker_stages_wait_for_their_needs_in_any_order_and_a_cycle_fails(tmp_path, capsys) -> None:
    """With workers, a stage waits for what it needs even when that is listed after it; stages
    whose needs form a cycle are reported failed and the job ends. Catches a scheduler that runs a
    stage before its need, or spins forever on a cycle."""
    from cmim_dense.stages import Stage, run_stages

    ran: list[str] = []
    stages = [Stage("b", lambda: False, lambda: ran.append("b"), needs=["a"]),
              Stage("a", lambda: False, lambda: ran.append("a")),
              Stage("c", lambda: False, lambda: ran.append("c"), needs=["d"]),
              Stage("d", lambda: False, lambda: ran.append("d"), needs=["c"])]
    assert run_stages(stages, tmp_path / "job", jobs=2) == ["c", "d"] and ran == ["a", "b"]
    assert "c: FAILED: its needs form a cycle" in capsys.readouterr().out


def test_the_binary_head_study_pairs_every_head_with_its_full_precision_twin(tmp_path) -> None:
    """Every seed: each backbone's three tasks under the full-precision head and the IR-Net binary head,
    in TASK and TASK-binary_head_irnet, with the same seed; the first extra seeds also a distilled binary
    head (its teacher the FP run of the same task and seed, a stage it waits for) and the multi-task models,
    whose stage is done only when every task's OUT/TASK/metrics.json exists.  Catches a head left out, a
    teacher of another seed or task, a multi-task stage skipped after one task's file."""
    from cmim_dense.pipeline import binary_head_study_stages

    stages = {stage.name: stage for stage in binary_head_study_stages(tmp_path, ("fp", "rbnn"), seeds=3,
                                                                      extra_seeds=1)}
    tasks = ("seg", "depth", "normals")
    for method in ("fp", "rbnn"):
        for seed in range(3):
            for task in tasks:
                assert {f"{task} {method} seed{seed}", f"{task} {method} seed{seed} irnet head"} <= set(stages)
            assert (f"seg {method} seed{seed} irnet head distilled" in stages) == (seed == 0)
    distilled = stages["depth rbnn seed0 irnet head distilled"]
    assert distilled.needs == ["pretrain rbnn seed0", "depth rbnn seed0"]
    settings = distilled.run.args[0]
    assert (settings["seed"], settings["binary_head"], settings["head_teacher"]) == (
        0, "irnet", str(tmp_path / "finetune/rbnn/seed0/depth/last.pt"))
    assert settings["out"] == str(tmp_path / "finetune/rbnn/seed0/depth-binary_head_irnet-distilled")
    multi = stages["seg,depth,normals fp seed0 irnet head"]
    assert multi.run.args[0]["out"] == str(tmp_path / "finetune/fp/seed0/seg+depth+normals-binary_head_irnet")
    out = tmp_path / "finetune/fp/seed0/seg+depth+normals-binary_head_irnet"
    for task in tasks:
        assert not multi.done()
        (out / task).mkdir(parents=True)
        (out / task / "metrics.json").write_text("{}")
    assert multi.done()
    assert len(stages) == 2 * 3 * (1 + 6) + 2 * (3 + 3) + 1 and list(stages)[-1] == "chart"

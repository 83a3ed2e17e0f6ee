"""The main job in its reduced mode: every stage runs, the chart and table appear, a re-run skips them;
with --seeds, once per seed."""

import json
import subprocess

import pytest
import torch


@pytest.fixture(scope="module")
def data_cache(tmp_path_factory) -> str:
    """One rendered synthetic NYUD-v2 for the jobs of this module (rendering it is a good part of a quick job)."""
    return str(tmp_path_factory.mktemp("cache"))


def test_quick_main_job_produces_the_chart_and_resumes(python, root, tmp_path, data_cache) -> None:
    command = [python, str(root / "pipeline" / "run.py"), "--quick", "--methods", "fp,bnn+cmim", "--root",
               str(tmp_path / "main"), "--no-progress"]
    env = {"CMIM_DENSE_CACHE": data_cache, "HF_HUB_OFFLINE": "1", "NO_ALBUMENTATIONS_UPDATE": "1"}
    first = subprocess.run(command, capture_output=True, text=True, timeout=900, env=env)
    assert first.returncode == 0, first.stdout + first.stderr
    for suffix in (".png", ".svg", ".csv", ".md"):
        assert (tmp_path / "main" / f"seg_vs_depth{suffix}").is_file()
    assert (tmp_path / "main" / "qualitative.png").is_file()
    table = (tmp_path / "main" / "seg_vs_depth.md").read_text()
    assert "| fp |" in table and "| bnn+cmim |" in table
    assert "chart: " in first.stdout

    again = subprocess.run(command, capture_output=True, text=True, timeout=900, env=env)
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout.count("already done") == 6  # 2 pretrainings + 4 fine-tunes; only the chart is redrawn


def test_a_failed_stage_names_itself_and_blocks_its_dependents(python, root, tmp_path) -> None:
    out = tmp_path / "main" / "pretrain" / "fp"
    out.mkdir(parents=True)
    (out / "last.pt").write_bytes(b"not a checkpoint")
    command = [python, str(root / "pipeline" / "run.py"), "--quick", "--methods", "fp", "--root",
               str(tmp_path / "main"), "--no-progress"]
    env = {"CMIM_DENSE_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1", "NO_ALBUMENTATIONS_UPDATE": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=900, env=env)
    assert result.returncode == 1
    assert "pretrain fp: FAILED" in result.stdout and "seg fp: skipped, needs pretrain fp" in result.stdout
    assert "rerun the same command" in result.stderr
    assert (out / "last.pt").read_bytes() == b"not a checkpoint"  # nothing written over it


def test_unknown_method_is_a_one_line_error(python, root, tmp_path) -> None:
    result = subprocess.run([python, str(root / "pipeline" / "run.py"), "--methods", "fp,nosuch", "--root",
                             str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "nosuch" in result.stderr


def test_seeded_quick_job_runs_each_seed_in_its_folder_and_tabulates_intervals(python, root, tmp_path,
                                                                             data_cache) -> None:
    """--seeds 2: every pretraining and fine-tuning runs for seeds 0 and 1 in RUN/seed<k>, the
    fine-tunes of seed k on the backbone of seed k, each run configured with its seed; the table
    gives mean ± interval over 2 seeds and the paired irnet+cmim − irnet differences; a re-run skips
    all 12 finished runs.

    Catches: seeds written over one folder, a seed not passed to the pretraining or the fine-tuning
    (both would run seed 0), a fine-tune of seed 1 on seed 0's backbone, a table that does not
    gather the seeds, seeded stages that are not skipped when finished."""
    main = tmp_path / "main"
    command = [python, str(root / "pipeline" / "run.py"), "--quick", "--seeds", "2", "--methods", "irnet,irnet+cmim",
               "--root", str(main), "--no-progress"]
    env = {"CMIM_DENSE_CACHE": data_cache, "HF_HUB_OFFLINE": "1", "NO_ALBUMENTATIONS_UPDATE": "1"}
    first = subprocess.run(command, capture_output=True, text=True, timeout=1200, env=env)
    assert first.returncode == 0, first.stdout + first.stderr
    for method in ("irnet", "irnet+cmim"):
        for seed in (0, 1):
            backbone = main / "pretrain" / method / f"seed{seed}" / "best.pt"
            assert torch.load(backbone, weights_only=False)["meta"]["config"]["seed"] == seed
            for task in ("seg", "depth"):
                run = main / "finetune" / method / f"seed{seed}" / task
                assert json.loads((run / "config.json").read_text())["seed"] == seed
                assert json.loads((run / "metrics.json").read_text())["backbone"] == str(backbone.resolve())
    assert not (main / "pretrain" / "irnet" / "best.pt").exists()
    table = (main / "seg_vs_depth.md").read_text()
    assert "| irnet | 2 | " in table and "| irnet+cmim | 2 | " in table and "±" in table
    assert "| irnet+cmim − irnet | 0, 1 | " in table
    assert "irnet+cmim − irnet (seeds 0, 1): mIoU " in first.stdout

    again = subprocess.run(command, capture_output=True, text=True, timeout=900, env=env)
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout.count("already done") == 12  # 4 pretrainings + 8 fine-tunes


def test_seeds_must_be_a_positive_integer(python, root, tmp_path) -> None:
    """Catches: --seeds 0 accepted (a job of no runs that 'succeeds'), a negative or non-numeric
    count reaching the stages, or an argparse usage dump instead of one line."""
    for value in ("0", "-2", "two"):
        result = subprocess.run([python, str(root / "pipeline" / "run.py"), "--seeds", value, "--root", str(tmp_path)],
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
        assert result.stderr.startswith("error: --seeds must be a positive integer, got ")
    assert not any(tmp_path.iterdir())

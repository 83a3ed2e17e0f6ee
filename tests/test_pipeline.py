"""The main job in its reduced mode: every stage runs, the chart and table appear, a re-run skips them."""

import subprocess


def test_quick_main_job_produces_the_chart_and_resumes(python, root, tmp_path) -> None:
    command = [python, str(root / "pipeline" / "run.py"), "--quick", "--methods", "fp,bnn+cmim", "--root",
               str(tmp_path / "main"), "--no-progress"]
    env = {"CMIM_DENSE_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1", "NO_ALBUMENTATIONS_UPDATE": "1"}
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

"""The user-facing benchmark scripts run end to end on tiny settings and record what they print."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_bench(script: str, *args: str, out: Path) -> dict:
    result = subprocess.run([sys.executable, str(ROOT / "bench" / script), *args, "--json", str(out)],
                            capture_output=True, text=True, timeout=150)
    assert result.returncode == 0, result.stderr[-2000:]
    record = json.loads(out.read_text())
    assert record["machine"]["threads"] >= 1 and record["machine"]["torch"]
    return record


def test_train_step_bench_times_each_recipe_and_cmim(tmp_path: Path) -> None:
    record = run_bench("train_step.py", "--methods", "fp,irnet", "--batch", "2", "--image-size", "32",
                       "--steps", "1", "--no-memory", out=tmp_path / "train.json")
    assert set(record["step_seconds"]) == {"fp", "irnet", "irnet+cmim"}
    assert all(seconds > 0 for seconds in record["step_seconds"].values())
    assert record["images_per_second"]["fp"] == 2 / record["step_seconds"]["fp"]
    # the paper variant's bank: 1,281,167 x 128 x 4 sites x 4 bytes
    assert abs(record["imagenet_bank_mb"]["float32"] - 1_281_167 * 128 * 4 * 4 / 2**20) < 1e-6


def test_binarizer_ops_bench_library_matches_the_formulas(tmp_path: Path) -> None:
    record = run_bench("binarizer_ops.py", "--shape", "16", "72", "--repeats", "2", out=tmp_path / "ops.json")
    assert len(record["rows"]) == 6
    for row in record["rows"]:
        assert row["max_abs_difference"] < 1e-4, row
        assert row["library_ms"] > 0 and row["plain_ms"] > 0

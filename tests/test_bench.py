"""The user-facing benchmark scripts run end to end on tiny settings and record what they print."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cmim_dense.packed.native import native_library

ROOT = Path(__file__).resolve().parents[1]


def run_bench(script: str, *args: str, out: Path) -> dict:
    result = subprocess.run([sys.executable, str(ROOT / "bench" / script), *args, "--json", str(out)],
                            capture_output=True, text=True, check=False)
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
    # the paper variant's banks: 1,281,167 x 128 x 4 sites x 2 sides x 4 bytes
    assert abs(record["imagenet_bank_mb"]["float32"] - 1_281_167 * 128 * 4 * 2 * 4 / 2**20) < 1e-6


def test_binarizer_ops_bench_library_matches_the_formulas(tmp_path: Path) -> None:
    record = run_bench("binarizer_ops.py", "--shape", "16", "72", "--repeats", "2", out=tmp_path / "ops.json")
    assert len(record["rows"]) == 6
    for row in record["rows"]:
        assert row["max_abs_difference"] < 1e-4, row
        assert row["library_ms"] > 0 and row["plain_ms"] > 0


def assert_packed_agrees(record: dict) -> None:
    """A packed model that computes another function differs from its float self on every image; a sign
    tie (an activation within float rounding of zero, cmim_dense.export.agreement) on a rare one: at most 2 of 8."""
    assert record["check_input"] == [8, 3, 64, 64] and len(record["max_abs_differences"]) == 8, record
    assert record["agreeing_draws"] == sum(d < 1e-4 for d in record["max_abs_differences"]) >= 6, record


def test_packed_conv_bench_times_every_resnet18_shape_on_the_kernel(tmp_path: Path) -> None:
    if native_library() is None:
        pytest.skip("no C++ compiler: the native kernel cannot be built")
    record = run_bench("packed_conv.py", "--batch", "1", "--repeats", "1", "--no-fallback", "--image-size", "64",
                       out=tmp_path / "packed.json")
    layers = record["layers"]
    assert [(r["in_channels"], r["out_channels"], r["size"], r["stride"]) for r in layers] == [
        (64, 64, 56, 1), (128, 128, 28, 1), (256, 256, 14, 1), (512, 512, 7, 1),
        (64, 128, 56, 2), (128, 256, 28, 2), (256, 512, 14, 2)]
    for row in layers:
        assert row["batch"] == 1 and row["fp32_ms"] > 0 and row["packed_ms"] > 0, row
        assert row["max_abs_difference"] < 1e-4, row  # the packed output is checked against the float one
        outputs = row["out_channels"] * (row["size"] // row["stride"]) ** 2
        assert row["gops"] == 2 * 9 * row["in_channels"] * outputs / (row["packed_ms"] * 1e6)
        assert row["speedup"] == row["fp32_ms"] / row["packed_ms"]
    network = record["network"]
    assert network["input"] == [1, 3, 64, 64]
    assert_packed_agrees(network)
    assert network["fp32_ms"] > 0 and network["packed_ms"] > 0 and "fallback_ms" not in network
    assert set(network["packed_breakdown_ms"]) >= {"binary convs", "other (adds, activations, Python)"}
    assert record["build_seconds"] > 0 and record["popcount_peak_gops"][record["isa"]] > 0


def test_dense_latency_bench_times_each_head_packed_and_fp32(tmp_path: Path) -> None:
    """Catches: a packed dense model that computes another function than the float one, a head
    configuration left out (with a full-precision and with a binary head), times or ratios that do not
    add up, a binary head that is not counted in binary operations."""
    record = run_bench("dense_latency.py", "--size", "64x64", "--repeats", "2", out=tmp_path / "dense.json")
    configs = [("deeplabv3", 8, 256), ("deeplabv3plus", 16, 256), ("deeplabv3plus", 16, 64), ("fpn", 32, 64)]
    assert [(r["head"], r["output_stride"], r["width"], r["binary_head"]) for r in record["rows"]] == [
        (*config, binary) for binary in (False, True) for config in configs]
    for fp_head, binary_head in zip(record["rows"][:4], record["rows"][4:]):
        assert binary_head["head_gops"] < fp_head["head_gops"] / 2  # 3x3 convs at 1/64 of an OP per BOP
    for row in record["rows"]:
        assert_packed_agrees(row)
        rounds = row["round_ms"]
        assert [len(rounds[name]) for name in ("fp32", "packed", "fp32_backbone", "packed_backbone")] == [2] * 4
        assert row["packed_backbone_ms"] == pytest.approx(sum(rounds["packed_backbone"]) / 2)  # median of 2
        ratios = sorted(fp32 / packed for fp32, packed in zip(rounds["fp32"], rounds["packed"]))
        assert row["speedup"] == pytest.approx(sum(ratios) / 2) and row["speedup_range"] == pytest.approx(ratios)
        assert row["packed_head_ms"] == row["packed_ms"] - row["packed_backbone_ms"]
    heads = {r["output_stride"]: r["head_gops"] for r in record["rows"] if r["head"] == "deeplabv3" and not r["binary_head"]}
    assert heads[8] > 10 * record["rows"][2]["head_gops"]  # the slim head is far cheaper than the paper's


def test_finetune_step_bench_times_frozen_float_packed_and_unfrozen(tmp_path: Path) -> None:
    record = run_bench("finetune_step.py", "--settings", "smoke", "--steps", "1", "--frames", "2",
                       out=tmp_path / "finetune.json")
    smoke = record["settings"]["smoke"]
    assert set(smoke["step_seconds"]) == {"frozen_float", "frozen_packed", "unfreeze"}
    assert set(smoke["eval_images_per_s"]) == {"float", "packed"}
    assert all(value > 0 for value in [*smoke["step_seconds"].values(), *smoke["eval_images_per_s"].values()])
    assert smoke["speedup"]["eval"] == smoke["eval_images_per_s"]["packed"] / smoke["eval_images_per_s"]["float"]
    assert smoke["crop"] == [32, 32] and smoke["head"] == "deeplabv3plus"
    assert set(record["loading_samples_per_s"]) == {"prepared layout (np.load mmap)", "same bytes raw (os.pread)",
                                                    "v7.3 .mat via h5py"}

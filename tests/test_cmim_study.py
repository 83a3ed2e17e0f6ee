"""The CMIM evidence study's report, from fixture run folders written here (hand-computed values)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cmim_dense.plots.cmim_study import cmim_study_report, read_study

SITES = ("layer1.1.conv2", "layer4.1.conv2")


def write_run(root: Path, folder: str, method: str, seed: int, lam: float | None, val: list[float],
              train: list[float], miou: float, neg_log_rmse: float) -> None:
    out = root / "pretrain" / folder / f"seed{seed}"
    out.mkdir(parents=True)
    (out / "config.json").write_text(json.dumps({"method": method, "seed": seed,
                                                 "cmim": None if lam is None else {"lam": lam}}))
    lines = []
    for epoch, (v, t) in enumerate(zip(val, train), start=1):
        record = {"epoch": epoch, "val_top1": v, "train_top1": t, "train_cmim": 0.0 if lam is None else 2.0 * lam}
        if lam is not None:
            for site in SITES:
                record.update({f"cmim/{site}/positive": 0.5, f"cmim/{site}/negative": 0.01,
                               f"cmim/{site}/loss": 1.0, f"cmim/{site}/log_z": 3.0})
        lines.append(json.dumps(record))
    (out / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    for task, metrics in (("seg", {"miou": miou}), ("depth", {"neg_log_rmse": neg_log_rmse})):
        target = root / "finetune" / folder / f"seed{seed}" / task
        target.mkdir(parents=True)
        (target / "metrics.json").write_text(json.dumps(metrics))


@pytest.fixture
def study(tmp_path: Path) -> Path:
    base_val, twin_val = [0.50, 0.60, 0.70], [0.55, 0.70, 0.70]
    for seed in range(3):
        write_run(tmp_path, "irnet", "irnet", seed, None, [0.3, base_val[seed]], [0.5, 1.0],
                  0.20 + 0.01 * seed, -0.10)
        write_run(tmp_path, "irnet+cmim_lam0.8", "irnet+cmim", seed, 0.8, [0.3, twin_val[seed]], [0.5, 0.9],
                  0.22 + 0.01 * seed, -0.05 - 0.01 * seed)
    return tmp_path


def test_runs_are_grouped_by_method_lambda_and_seed_with_their_transfer(study: Path) -> None:
    """Catches a study that reads lambda from the wrong place or pairs a backbone with another's fine-tune."""
    runs = read_study(study)
    assert [(r.method, r.lam, r.seed) for r in runs] == [("irnet", 0.0, s) for s in range(3)] + [
        ("irnet", 0.8, s) for s in range(3)]
    assert runs[4].transfer == {"miou": pytest.approx(0.23), "neg_log_rmse": pytest.approx(-0.06)}


def test_table_gives_final_top1_as_mean_and_t_interval_and_the_paired_gain(study: Path) -> None:
    """Hand-computed: final val top-1 of lambda 0 = 50, 60, 70 % -> 60.0 ± 4.3027 x 10 / sqrt(3) = 24.8;
    paired gains 5, 10, 0 pp -> +5.0 ± 4.3027 x 5 / sqrt(3) = 12.4; mIoU gains are 2 pp each seed
    (an interval of 0); -ln RMSE gains 0.05, 0.04, 0.03 -> +0.040 ± 0.025. Catches unpaired differences (which would not be exactly 2 pp ± 0) and a
    report of the best epoch instead of the final one."""
    rows, written = cmim_study_report(study)
    table = (study / "cmim_study.md").read_text()
    assert "| irnet | 0 | 3 | 100.0 ± 0.0 | 60.0 ± 24.8 | 3 | 21.0 ± 2.5 | -0.100 ± 0.000 |" in table
    assert "| irnet | 0.8 | +5.0 ± 12.4 | +2.0 ± 0.0 | +0.040 ± 0.025 |" in table
    gain = next(row for row in rows if row.lam == 0.8).gain
    assert gain["val_top1"].mean == pytest.approx(0.05) and gain["val_top1"].half_width == pytest.approx(0.124207, 1e-4)
    assert {path.suffix for path in written} == {".png", ".svg", ".md"}


def test_transfer_of_fewer_seeds_is_counted_and_paired_on_those_seeds(study: Path) -> None:
    """The study transfers the first seeds only: without seed 2's fine-tunes the table says 2
    transfer seeds and the transfer gains pair seeds 0 and 1 (mIoU +2 pp each), while top-1 keeps
    all three. Catches transfer intervals over seeds that have none, or a transfer count of the
    pretraining seeds."""
    import shutil

    for folder in ("irnet", "irnet+cmim_lam0.8"):
        shutil.rmtree(study / "finetune" / folder / "seed2")
    rows, _ = cmim_study_report(study)
    table = (study / "cmim_study.md").read_text()
    assert "| irnet | 0 | 3 | 100.0 ± 0.0 | 60.0 ± 24.8 | 2 | 20.5 ± 6.4 | -0.100 ± 0.000 |" in table
    gain = next(row for row in rows if row.lam == 0.8).gain
    assert gain["miou"].n == 2 and gain["miou"].mean == pytest.approx(0.02) and gain["val_top1"].n == 3


def test_figure_draws_train_and_val_curves_per_lambda(study: Path) -> None:
    """The curves figure has one top-1 panel per method with a train and a val curve per lambda,
    and the CMIM panels only for lambda > 0 (the baseline has no CMIM term)."""
    from cmim_dense.plots.cmim_study import study_figure

    figure = study_figure(read_study(study))
    top1, term, critic = figure.axes[:3]
    assert len(top1.get_lines()) == 4  # (train, val) x (lambda 0, lambda 0.8)
    val_curve = top1.get_lines()[1].get_ydata()
    assert list(val_curve) == pytest.approx([30.0, 60.0])
    assert len(term.get_lines()) == 1 and list(term.get_lines()[0].get_ydata()) == pytest.approx([2.0, 2.0])
    assert len(critic.get_lines()) == 2


def test_empty_study_is_a_one_line_error(tmp_path: Path) -> None:
    (tmp_path / "pretrain").mkdir()
    with pytest.raises(ValueError, match="no finished pretraining"):
        cmim_study_report(tmp_path)


def test_study_stages_cover_every_method_lambda_and_seed(tmp_path: Path) -> None:
    """The study pretrains each method at lambda 0 (the method itself) and each lambda, for every
    seed, in the over-fitting regime with its own validation size, fine-tunes the backbones of the
    first transfer seeds for seg and depth, then reports; catches a lambda or seed left out, the
    transfer run for the wrong seeds, or the main job's budget used."""
    from cmim_dense.pipeline import STUDY_PRETRAIN, STUDY_SEEDS, STUDY_TRANSFER_SEEDS, cmim_study_stages

    stages = cmim_study_stages(tmp_path, ("irnet", "rbnn"), values=(0.8, 3.2), seeds=4, transfer_seeds=2)
    pretrains = [stage.name for stage in stages if stage.name.startswith("pretrain")]
    assert len(pretrains) == 2 * 3 * 4 and "pretrain rbnn+cmim_lam3.2 seed3" in pretrains
    finetunes = [stage.name for stage in stages if stage.name.startswith(("seg ", "depth "))]
    assert len(finetunes) == 2 * 2 * 3 * 2 and "depth rbnn+cmim_lam3.2 seed1" in finetunes
    assert not any(name.endswith(("seed2", "seed3")) for name in finetunes)
    assert len(cmim_study_stages(tmp_path, ("irnet",), values=(0.8,), seeds=1)) == 2 + 2 * 2 + 2  # transfer seeds capped
    assert STUDY_SEEDS >= 8 and 1 <= STUDY_TRANSFER_SEEDS <= STUDY_SEEDS
    assert [stage.name for stage in stages[-2:]] == ["CMIM study report", "chart"]
    assert STUDY_PRETRAIN["synthetic_val_samples"] > STUDY_PRETRAIN["synthetic_samples"]
    assert stages[0].name == "pretrain irnet seed0"


def test_validation_size_of_the_built_in_world_is_configurable(tmp_path: Path) -> None:
    """--synthetic-val-samples sizes the validation split (default a quarter of the training one)."""
    from cmim_dense.data import build_classification_data
    from cmim_dense.engine import resolve_config

    config = resolve_config("irnet", {"out": str(tmp_path), "synthetic_samples": 40, "synthetic_val_samples": 26})
    data = build_classification_data(config.data, 16, 0, config.synthetic_samples, config.synthetic_val_samples)
    assert (len(data.train), len(data.val)) == (40, 26)
    assert len(build_classification_data("synthetic", 16, 0, 40).val) == 10
    with pytest.raises(ValueError, match="synthetic-val-samples"):
        resolve_config("irnet", {"out": str(tmp_path), "synthetic_val_samples": 2})

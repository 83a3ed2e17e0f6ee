"""Figures: the segmentation-vs-depth chart, the qualitative grid, t-SNE, correlation maps, sweeps."""

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from cmim_dense.models import create_model
from cmim_dense.plots.activations import class_sorted_correlation, extract_activations
from cmim_dense.plots.analysis import correlation_chart, plot_correlation, plot_sweep, sweep_chart, tsne_chart
from cmim_dense.plots.common import distinct_tails
from cmim_dense.plots.palette import colorize, nyud_palette
from cmim_dense.plots.qualitative import QualitativeRow, QualitativeSample, TaskPanels, qualitative_grid
from cmim_dense.plots.finetune_results import cmim_partners, load_points, seed_folder
from cmim_dense.plots.seg_depth import MIN_DOT_AREA, dot_areas, plot_seg_depth, scaled_areas, seg_depth_chart
from cmim_dense.plots.sweep import load_sweep, varying_settings
from cmim_dense.plots.tsne import conditional_probabilities, squared_distances, tsne


# method: (top-1 fraction, mIoU, RMSE m)
BACKBONES = {"irnet": (0.580, 0.25, 0.78), "irnet+cmim": (0.612, 0.27, 0.74), "rbnn": (0.599, 0.26, 0.77),
             "bnn": (None, 0.18, 0.95)}


def write_run(folder: Path, task: str, method: str, top1, miou: float, rmse: float, backbone: str | None = None,
              drop: str | None = None, seed: int | None = None, binary_head: str | None = None,
              **head: str) -> Path:
    metrics = {"task": task, "classes": 40, "backbone": backbone or f"/runs/pretrain/{method}/best.pt",
               "method": method, "top1": top1, **({} if seed is None else {"seed": seed}),
               **({} if binary_head is None else {"binary_head": binary_head}), **head}
    if task == "seg":
        metrics.update(miou=miou, pixel_acc=min(miou + 0.3, 1.0), mean_acc=min(miou + 0.1, 1.0),
                       per_class_iou={"wall": 0.6})
    else:
        metrics.update(rmse=rmse, neg_log_rmse=-math.log(rmse), rmse_per_image=rmse, rmse_log=0.3, abs_rel=0.2,
                       sq_rel=0.1, log10=0.08, delta1=0.55, delta2=0.8, delta3=0.9, depth_gt="depths")
    metrics.pop(drop, None)
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps(metrics))
    return folder / "metrics.json"


@pytest.fixture
def finetune_runs(tmp_path: Path) -> Path:
    root = tmp_path / "finetune"
    for method, (top1, miou, rmse) in BACKBONES.items():
        for task in ("seg", "depth"):
            write_run(root / f"{method}_{task}", task, method, top1, miou, rmse)
    write_run(root / "lonely_seg", "seg", "xnor", 0.512, 0.2, 0.9)
    write_run(root / "no_rmse_depth", "depth", "bireal", 0.564, 0.2, 0.8, drop="rmse")
    write_run(root / "no_rmse_seg", "seg", "bireal", 0.564, 0.2, 0.8)
    (root / "broken").mkdir()
    (root / "broken" / "metrics.json").write_text("{not json")
    return root


def test_seg_depth_chart_plots_the_inputs_and_reports_the_rest(finetune_runs: Path, tmp_path: Path) -> None:
    """Backbones with seg and depth runs are the dots; a backbone with a seg run alone is a table row
    (depth '–') and named as left out of the chart; unreadable runs and empty inputs are skipped."""
    result = seg_depth_chart([finetune_runs, tmp_path / "missing_run", str(tmp_path / "nothing*")],
                             tmp_path / "out" / "chart")
    assert sorted(p.label for p in result.charted) == sorted(BACKBONES)
    assert sorted(p.label for p in result.points) == sorted([*BACKBONES, "xnor", "bireal"])
    assert result.no_chart is None
    assert result.left_out == ["bireal: not in the chart, no depth run", "xnor: not in the chart, no depth run"]
    reported = {Path(s.name).parent.name if s.name.endswith("metrics.json") else Path(s.name).name: s.reason
                for s in result.skipped}
    assert "missing keys rmse" in reported["no_rmse_depth"]
    assert "lonely_seg" not in reported and "no_rmse_seg" not in reported
    assert "not valid JSON" in reported["broken"]
    assert "does not exist" in reported["missing_run"]
    assert "matches nothing" in reported["nothing*"]
    assert sorted(path.name for path in result.files) == ["chart.csv", "chart.md", "chart.png", "chart.svg",
                                                          "chart_cmim_differences.csv"]  # irnet+cmim - irnet

    with pytest.raises(ValueError, match="every dot needs seg and depth runs .bireal: not in the chart, no depth run"):
        plot_seg_depth(result.points)
    figure = plot_seg_depth(result.charted)
    ax = figure.axes[0]
    sized = [p for p in result.charted if p.top1 is not None]
    dots = next(c for c in ax.collections if c.get_gid() == "backbones")
    expected = np.array([[-math.log(BACKBONES[p.method][2]), 100 * BACKBONES[p.method][1]] for p in sized])
    np.testing.assert_allclose(dots.get_offsets(), expected)
    ratios = dots.get_sizes() / np.array([BACKBONES[p.method][0] for p in sized])
    np.testing.assert_allclose(ratios, ratios[0])
    crosses = next(c for c in ax.collections if c.get_gid() == "backbones-no-top1")
    np.testing.assert_allclose(crosses.get_offsets(), [[-math.log(0.95), 18.0]])
    labels = {t.get_text() for t in ax.texts}
    assert set(BACKBONES) <= labels

    with (tmp_path / "out" / "chart.csv").open() as handle:
        rows = {row["method"]: row for row in csv.DictReader(handle)}
    for method, (top1, miou, rmse) in BACKBONES.items():
        assert float(rows[method]["miou"]) == miou
        assert float(rows[method]["rmse"]) == rmse
        assert float(rows[method]["neg_log_rmse"]) == -math.log(rmse)
        assert rows[method]["top1"] == ("" if top1 is None else str(top1))
    assert (rows["xnor"]["miou"], rows["xnor"]["rmse"], rows["xnor"]["depth_run"]) == ("0.2", "", "")
    markdown = (tmp_path / "out" / "chart.md").read_text()
    assert "| method | top-1 (%) | mIoU (%) | −ln RMSE | pixel acc. (%) | RMSE (m) | δ<1.25 (%) | backbone |" in markdown
    assert "| irnet+cmim | 61.20 | 27.00 | 0.3011 | 57.00 | 0.7400 | 55.00 |" in markdown
    assert "| xnor | 51.20 | 20.00 | – | 50.00 | – | – |" in markdown


def test_seg_depth_labels_tell_backbones_of_one_method_apart(tmp_path: Path) -> None:
    for seed in ("seed0", "seed1"):
        for task in ("seg", "depth"):
            write_run(tmp_path / f"{seed}_{task}", task, "rbnn", 0.59, 0.25, 0.8, backbone=f"/pre/rbnn_{seed}/best.pt")
    points, skipped = load_points([tmp_path])
    assert not skipped
    assert [p.label for p in points] == ["rbnn (rbnn_seed0)", "rbnn (rbnn_seed1)"]
    assert distinct_tails(["/a/x/best.pt", "/a/x/last.pt"]) == ["best.pt", "last.pt"]


def test_binary_head_runs_of_a_backbone_are_a_point_of_their_own_drawn_as_squares(tmp_path: Path) -> None:
    """The same backbone fine-tuned with a full-precision and with a binary head (metrics.json's
    "binary_head"): two points, labelled apart, each +cmim paired with its base of the same head kind,
    binary heads drawn as squares."""
    for method in ("irnet", "irnet+cmim"):
        for head in (None, "irnet"):
            for task in ("seg", "depth"):
                write_run(tmp_path / f"{method}_{head}_{task}", task, method, 0.6, 0.3 if head else 0.4, 0.8,
                          binary_head=head)
    points, skipped = load_points([tmp_path])
    assert not skipped
    index = {p.label: i for i, p in enumerate(points)}
    assert {p.label: p.binary_head for p in points} == {
        "irnet": None, "irnet, binary head": "irnet", "irnet+cmim": None, "irnet+cmim, binary head": "irnet"}
    assert cmim_partners(points) == {index["irnet+cmim"]: index["irnet"],
                                     index["irnet+cmim, binary head"]: index["irnet, binary head"]}
    figure = plot_seg_depth(points)
    gids = {c.get_gid(): len(c.get_offsets()) for c in figure.axes[0].collections if c.get_gid()}
    assert gids["backbones"] == 2 and gids["backbones-binary-head"] == 2


def test_seg_depth_two_seg_runs_of_one_backbone_are_reported(tmp_path: Path) -> None:
    write_run(tmp_path / "a_seg", "seg", "irnet", 0.58, 0.25, 0.8)
    write_run(tmp_path / "b_seg", "seg", "irnet", 0.58, 0.26, 0.8)
    write_run(tmp_path / "depth", "depth", "irnet", 0.58, 0.25, 0.8)
    points, skipped = load_points([tmp_path])
    assert not points
    assert len(skipped) == 3 and all("2 semantic segmentation and 1 depth runs" in s.reason for s in skipped)


def write_seed(root: Path, method: str, seed: int, top1: float, miou: float, neg_log_rmse: float,
               recorded_seed: int | None = None) -> None:
    """Seed ``seed`` of ``method`` as pipeline/run.py --seeds lays it out: a seg and a depth run of the
    backbone ``/runs/pretrain/METHOD/seed<k>/best.pt``, each recording its fine-tuning seed."""
    for task in ("seg", "depth"):
        write_run(root / method / f"seed{seed}" / task, task, method, top1, miou, math.exp(-neg_log_rmse),
                  backbone=f"/runs/pretrain/{method}/seed{seed}/best.pt",
                  seed=seed if recorded_seed is None else recorded_seed)


def bar_extents(ax, gid: str) -> list[tuple[float, float, float, float]]:
    """Every error bar of the collections ``gid`` as (x0, y0, x1, y1), sorted."""
    segments = [segment for c in ax.collections if c.get_gid() == gid for segment in c.get_segments()]
    return sorted(tuple(float(v) for v in np.asarray(segment).ravel()) for segment in segments)


def test_seeded_runs_are_one_dot_with_95_percent_error_bars(tmp_path: Path, capsys, entry_script) -> None:
    """Three seeds of irnet and of irnet+cmim are two dots at their means; the error bars span the
    Student-t 95 % interval: irnet mIoU 20, 22, 24 % -> 22 ± 4.968275423500662 (s = 2 pp, t_{0.975,2}
    = 4.302652729749464), -ln RMSE 0.1, 0.2, 0.3 -> 0.2 ± 0.2484137711750331; irnet+cmim mIoU 25, 26,
    30 % -> 27 ± 6.572410607728432 (s = sqrt(7) pp), -ln RMSE 0.15, 0.35, 0.4 -> 0.3 ± 0.3286205303864215
    (s = sqrt(0.0175)).  fp (one run)
    gets no bar; the table gives mean ± half-width.

    Catches: seeds drawn as separate dots, bars of one standard deviation or of the normal 1.96,
    x and y half-widths swapped, bars on a single-seed dot, a table without the intervals, the plots
    command not gathering seeds."""
    root = tmp_path / "finetune"
    for seed, (miou, nlr) in enumerate(((0.20, 0.1), (0.22, 0.2), (0.24, 0.3))):
        write_seed(root, "irnet", seed, 0.5, miou, nlr)
    for seed, (miou, nlr) in enumerate(((0.25, 0.15), (0.26, 0.35), (0.30, 0.4))):
        write_seed(root, "irnet+cmim", seed, 0.6, miou, nlr)
    write_run(root / "fp" / "seg", "seg", "fp", 0.7, 0.4, 0.6)
    write_run(root / "fp" / "depth", "depth", "fp", 0.7, 0.4, 0.6)

    script = entry_script("plots/seg_vs_depth")
    assert script.main([str(root), "--out", str(tmp_path / "chart")]) == 0
    assert "3 backbones from 7 seed runs (0 inputs skipped)" in capsys.readouterr().out
    markdown = (tmp_path / "chart.md").read_text()
    assert "| irnet | 3 | 50.00 ± 0.00 | 22.00 ± 4.97 | 0.2000 ± 0.2484 |" in markdown
    assert "| irnet+cmim | 3 | 60.00 ± 0.00 | 27.00 ± 6.57 | 0.3000 ± 0.3286 |" in markdown
    assert "| fp | 1 | 70.00 | 40.00 | 0.5108 | 70.00 | 0.6000 |" in markdown  # one seed: the value, no '±'
    with (tmp_path / "chart.csv").open() as handle:
        rows = {row["method"]: row for row in csv.DictReader(handle)}
    assert float(rows["irnet"]["miou_ci95"]) == pytest.approx(0.04968275423500662, rel=1e-9)
    assert rows["irnet"]["seeds"] == "0;1;2" and rows["fp"]["miou_ci95"] == ""

    points, skipped = load_points([root])
    assert not skipped and [(p.label, p.n) for p in points] == [("fp", 1), ("irnet", 3), ("irnet+cmim", 3)]
    ax = plot_seg_depth(points).axes[0]
    x_bars = [(0.2 - 0.2484137711750331, 22.0, 0.2 + 0.2484137711750331, 22.0),
              (0.3 - 0.3286205303864215, 27.0, 0.3 + 0.3286205303864215, 27.0)]
    y_bars = [(0.2, 22.0 - 4.968275423500662, 0.2, 22.0 + 4.968275423500662),
              (0.3, 27.0 - 6.572410607728432, 0.3, 27.0 + 6.572410607728432)]
    np.testing.assert_allclose(bar_extents(ax, "seed-ci-x"), x_bars, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(bar_extents(ax, "seed-ci-y"), y_bars, rtol=1e-7, atol=1e-9)
    dots = next(c for c in ax.collections if c.get_gid() == "backbones")
    np.testing.assert_allclose(dots.get_offsets(), [[-math.log(0.6), 40.0], [0.2, 22.0], [0.3, 27.0]], atol=1e-9)
    assert "error bars: 95 % CI of the mean over 3 seeds (Student t); 1-seed dots have none" in ax.get_title()
    low, high = ax.get_ylim()
    assert low < 22.0 - 4.968 and high > 40.0  # the bars fit in the axes


def test_paired_cmim_differences_pair_by_seed(tmp_path: Path) -> None:
    """irnet seeds 0-3 and irnet+cmim seeds 1-4 pair on seeds 1, 2, 3: mIoU differences 5, 4, 6 pp ->
    +5.00 ± 2.48 (s = 1, t_{0.975,2} / sqrt(3) = 2.484137711750331); -ln RMSE differences 0.05, 0.15,
    0.10 -> +0.1000 ± 0.1242 (s = 0.05); top-1 +10 pp ± 0.  Seeds 0 and 4 are named as unpaired.  A
    fine-tune whose recorded seed (0) is not its backbone's folder (seed1) is skipped.

    Catches: base minus twin, the difference of the two means (irnet 24.0 %, irnet+cmim 42.75 %:
    +18.75), pairing by position, unpaired seeds kept, a mis-seeded run averaged in."""
    root = tmp_path / "finetune"
    for seed, (miou, nlr) in enumerate(((0.30, 0.5), (0.20, 0.1), (0.22, 0.2), (0.24, 0.3))):
        write_seed(root, "irnet", seed, 0.5, miou, nlr)
    for seed, (miou, nlr) in zip((4, 3, 2, 1), ((0.90, 0.9), (0.30, 0.40), (0.26, 0.35), (0.25, 0.15))):
        write_seed(root, "irnet+cmim", seed, 0.6, miou, nlr)
    write_seed(root, "rbnn", 1, 0.5, 0.2, 0.2, recorded_seed=0)
    result = seg_depth_chart([root], tmp_path / "chart")

    assert {Path(s.name).parent.name for s in result.skipped} == {"seg", "depth"}
    assert all(s.reason == "fine-tuned with seed 0 on the backbone of seed1" for s in result.skipped)
    [difference] = result.differences
    assert (difference.twin, difference.base, difference.seeds) == ("irnet+cmim", "irnet", (1, 2, 3))
    miou = difference.metrics["miou"].interval
    assert miou.mean == pytest.approx(0.05, abs=1e-12)
    assert miou.half_width == pytest.approx(0.02484137711750331, rel=1e-7)
    depth = difference.metrics["neg_log_rmse"].interval
    assert (depth.mean, depth.half_width) == pytest.approx((0.1, 0.12420688558751655), rel=1e-7)
    assert result.notes == ["irnet+cmim − irnet: seed(s) 0, 4 only on one side, left out"]
    markdown = (tmp_path / "chart.md").read_text()
    assert "## Paired CMIM differences" in markdown
    assert "| irnet+cmim − irnet | 1, 2, 3 | +10.00 ± 0.00 | +5.00 ± 2.48 | +0.1000 ± 0.1242 |" in markdown
    with (tmp_path / "chart_cmim_differences.csv").open() as handle:
        rows = {row["metric"]: row for row in csv.DictReader(handle)}
    assert rows["miou"]["seeds"] == "1;2;3" and rows["miou"]["n_seeds"] == "3"
    assert float(rows["miou"]["ci95"]) == pytest.approx(0.02484137711750331, rel=1e-7)


def test_binary_distilled_and_multi_task_heads_pair_with_their_own_kind(tmp_path: Path) -> None:
    """Over one irnet backbone (seeds 0, 1): the full-precision head, the binary head, the binary head
    distilled, and a multi-task model's full-precision heads are four points; binary − FP and distilled −
    FP pair with the single-task FP head, distilled with the binary head trained alone, multi-task with the
    single-task FP head; no top-1 difference (one backbone).  mIoU binary − FP: seed 0 −4 pp, seed 1 −6 pp.

    The chart draws the three single-task points (distilled as a diamond, dashed arrows from the FP head to
    both binary ones) and leaves the multi-task point to the tables.

    Catches: head kinds merged into one point (or skipped as duplicate runs), a distilled head paired with
    the distilled one's own kind, a top-1 "difference" of a backbone with itself, multi-task dots drawn on
    top of their single-task twins."""
    root = tmp_path / "finetune"
    heads = {"": {}, "-binary_head_irnet": {"binary_head": "irnet"},
             "-binary_head_irnet-distilled": {"binary_head": "irnet", "head_teacher": "t/last.pt"},
             "+multi": {"multi_task": "seg,depth", "task_weighting": "fixed"}}
    for seed in (0, 1):
        for offset, (suffix, head) in enumerate(heads.items()):
            for task in ("seg", "depth"):
                miou = 0.40 - (0.04 + 0.02 * seed) * (offset == 1) - 0.01 * (offset == 2) + 0.001 * (offset == 3)
                write_run(root / f"seed{seed}" / f"{task}{suffix}", task, "irnet", 0.5, miou, 0.8,
                          backbone=f"/runs/pretrain/irnet/seed{seed}/best.pt", seed=seed, **head)
    result = seg_depth_chart([root], tmp_path / "chart")
    assert not result.skipped and sorted(p.label for p in result.points) == [
        "irnet", "irnet, binary head", "irnet, binary head, distilled", "irnet, multi-task"]
    pairs = {(d.pairing, d.twin, d.base): d for d in result.differences}
    assert set(pairs) == {("binary_head", "irnet, binary head", "irnet"),
                          ("binary_head", "irnet, binary head, distilled", "irnet"),
                          ("distillation", "irnet, binary head, distilled", "irnet, binary head"),
                          ("multi_task", "irnet, multi-task", "irnet")}
    binary = pairs[("binary_head", "irnet, binary head", "irnet")]
    assert binary.metrics["miou"].differences == pytest.approx([-0.04, -0.06]) and "top1" not in binary.metrics
    distilled = pairs[("distillation", "irnet, binary head, distilled", "irnet, binary head")]
    assert distilled.metrics["miou"].differences == pytest.approx([0.03, 0.05])
    assert [path.name for path in result.files if "differences" in path.name] == [
        "chart_binary_head_differences.csv", "chart_distillation_differences.csv", "chart_multi_task_differences.csv"]
    assert sorted(p.label for p in result.charted) == ["irnet", "irnet, binary head", "irnet, binary head, distilled"]
    assert result.left_out == ["irnet, multi-task: not in the chart, beside its single-task models in the tables "
                               "(the paired multi-task differences)"]
    figure = plot_seg_depth(result.charted)
    gids = {c.get_gid(): len(c.get_offsets()) for c in figure.axes[0].collections if c.get_gid()}
    assert (gids["backbones"], gids["backbones-binary-head"], gids["backbones-binary-head-distilled"]) == (1, 1, 1)
    assert sum(1 for text in figure.axes[0].texts if text.arrow_patch is not None
               and text.arrow_patch.get_linestyle() == "--") == 2  # FP head -> each binary head


def test_a_single_seed_chart_says_it_has_no_error_bars(finetune_runs: Path, tmp_path: Path) -> None:
    """Runs without seeds: the title says "1 seed: no error bars", no bar is drawn, the table has no
    '±' and says there are no intervals; a seed folder is only a whole path part ``seed<k>``.

    Catches: a single-seed chart that looks like a seeded one (or draws zero-width bars), a '± nan'
    in the table, backbones such as rbnn_seed0 or seed01 taken for seeds of one dot."""
    result = seg_depth_chart([finetune_runs], tmp_path / "chart")
    ax = plot_seg_depth(result.charted).axes[0]
    assert ax.get_title().endswith("\n1 seed: no error bars")
    assert not [c for c in ax.collections if str(c.get_gid()).startswith("seed-ci")]
    markdown = (tmp_path / "chart.md").read_text()
    assert "±" not in markdown.split("## Paired")[0] and "nan" not in markdown
    assert "1 seed per backbone: no confidence intervals" in markdown
    assert "| irnet+cmim − irnet | ? | +3.20 | +2.00 |" in markdown  # one unseeded pair: the difference alone
    assert seed_folder("/r/pretrain/irnet/seed12/best.pt") == (12, "/r/pretrain/irnet/seed*/best.pt")
    assert seed_folder("/r/pretrain/rbnn_seed0/best.pt") == (None, "/r/pretrain/rbnn_seed0/best.pt")
    assert seed_folder("/r/seed01/best.pt") == (None, "/r/seed01/best.pt")
    assert seed_folder("/r/pretrain/seed3") == (None, "/r/pretrain/seed3")  # a file name is no folder


def test_seg_vs_depth_script(finetune_runs: Path, tmp_path: Path, capsys, entry_script) -> None:
    script = entry_script("plots/seg_vs_depth")
    assert script.main([str(tmp_path / "nowhere"), "--out", str(tmp_path / "x")]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: no usable fine-tuning run") and "\n" not in error
    assert script.main([str(finetune_runs), "--out", str(tmp_path / "chart")]) == 0
    captured = capsys.readouterr()
    assert "6 backbones from 6 seed runs, 4 in the chart (2 inputs skipped)" in captured.out
    assert "warning: skipped" in captured.err and "broken" in captured.err
    assert "note: xnor: not in the chart, no depth run" in captured.err
    assert (tmp_path / "chart.png").stat().st_size > 10_000


def test_depth_only_runs_get_the_tables_and_the_reason_for_no_chart(tmp_path: Path, capsys, entry_script) -> None:
    """The runs of a ``--tasks depth --seeds 2`` job (irnet and irnet+cmim, seeds 0 and 1, in
    RUN/seed<k>/depth) and one fp run: the tables have the depth columns, each mean ± 95 % interval
    and the paired differences; no chart is written (an old one at OUT is removed) and one line says
    why.  irnet −ln RMSE 0.1, 0.3 -> 0.2 ± 1.2706 (t_{0.975,1} = 12.7062 times s / √2 = 0.1);
    irnet+cmim 0.15, 0.45 -> 0.3 ± 1.9059; paired differences 0.05, 0.15 -> +0.1000 ± 0.6353.

    Catches: a depth-only job that fails at its end (tables or differences that need a seg run), a
    chart of no dots or a stale chart beside the new tables, the no-chart case passed over silently."""
    root = tmp_path / "finetune"
    for method, values in (("irnet", (0.1, 0.3)), ("irnet+cmim", (0.15, 0.45))):
        for seed, neg_log_rmse in enumerate(values):
            write_run(root / method / f"seed{seed}" / "depth", "depth", method, 0.5, 0.0, math.exp(-neg_log_rmse),
                      backbone=f"/runs/pretrain/{method}/seed{seed}/best.pt", seed=seed)
    write_run(root / "fp" / "depth", "depth", "fp", 0.7, 0.0, 0.6)
    for suffix in ("png", "svg"):
        (tmp_path / f"chart.{suffix}").write_text("a chart of other runs")

    assert entry_script("plots/seg_vs_depth").main([str(root), "--out", str(tmp_path / "chart")]) == 0
    out = capsys.readouterr().out
    assert (f"no seg-vs-depth chart: it needs seg and depth runs, these runs have depth only; tables in "
            f"{tmp_path / 'chart'}.md (and .csv)\n") in out
    assert "3 backbones from 5 seed runs (0 inputs skipped)" in out
    assert not (tmp_path / "chart.png").exists() and not (tmp_path / "chart.svg").exists()
    markdown = (tmp_path / "chart.md").read_text()
    assert markdown.startswith("| method | seeds | top-1 (%) | −ln RMSE | RMSE (m) | δ<1.25 (%) | backbone |\n")
    assert "| irnet | 2 | 50.00 ± 0.00 | 0.2000 ± 1.2706 |" in markdown
    assert "| irnet+cmim | 2 | 50.00 ± 0.00 | 0.3000 ± 1.9059 |" in markdown
    assert "| fp | 1 | 70.00 | 0.5108 | 0.6000 | 55.00 |" in markdown
    assert "| irnet+cmim − irnet | 0, 1 | +0.00 ± 0.00 | +0.1000 ± 0.6353 |" in markdown
    assert "mIoU" not in markdown
    with (tmp_path / "chart.csv").open() as handle:
        rows = {row["method"]: row for row in csv.DictReader(handle)}
    assert float(rows["irnet"]["neg_log_rmse"]) == pytest.approx(0.2) and rows["irnet"]["seeds"] == "0;1"
    assert float(rows["irnet"]["neg_log_rmse_ci95"]) == pytest.approx(1.2706204736174698, rel=1e-9)

    write_run(root / "xnor" / "seg", "seg", "xnor", 0.5, 0.2, 0.9)  # seg and depth, never of one backbone
    result = seg_depth_chart([root], tmp_path / "chart")
    assert result.no_chart == "no backbone has both seg and depth runs (for each of its seeds)"
    assert not result.charted and [p.label for p in result.points] == ["fp", "irnet", "irnet+cmim", "xnor"]
    assert [path.suffix for path in result.files] == [".csv", ".md", ".csv"]


def test_palette_and_qualitative_grid() -> None:
    for classes in (40, 13):
        palette = nyud_palette(classes)
        assert palette.shape == (classes, 3) and len({tuple(c) for c in palette}) == classes
        assert not (palette == 0).all(axis=1).any()  # black is void only
    labels = np.array([[0, 1], [255, 39]])
    rgb = colorize(labels, 40)
    assert (rgb[1, 0] == 0).all() and (rgb[1, 1] == nyud_palette(40)[39]).all()
    with pytest.raises(ValueError, match="outside 0..12"):
        colorize(labels, 13)

    rng = np.random.default_rng(0)

    def sample() -> QualitativeSample:
        label = rng.integers(0, 40, (12, 16))
        depth = rng.uniform(0.5, 9.0, (12, 16))
        normals = rng.normal(size=(12, 16, 3))
        normals /= np.linalg.norm(normals, axis=-1, keepdims=True)
        normals[0, 0] = 0.0  # invalid
        return QualitativeSample(rng.integers(0, 255, (12, 16, 3), dtype=np.uint8),
                                 [TaskPanels("semantic segmentation", "classes", label, label),
                                  TaskPanels("depth", "metres", depth, depth * 1.1),
                                  TaskPanels("surface normals", "unit_vectors", normals, -normals)])

    rows = [QualitativeRow(name, [sample(), sample()]) for name in ("irnet", "irnet+cmim", "rbnn")]
    figure = qualitative_grid(rows)
    assert len(figure.axes) == 3 * 2 * 7 + 1  # image + 2 panels per task, one shared depth colorbar
    assert [ax.get_title() for ax in figure.axes[:7]] == [
        "image", "GT semantic segmentation", "predicted semantic segmentation", "GT depth", "predicted depth",
        "GT surface normals", "predicted surface normals"]
    depth_images = [ax.images[0] for i, ax in enumerate(figure.axes[:-1]) if i % 7 in (3, 4)]  # row-major panels
    assert len(depth_images) == 12 and len({id(im.norm) for im in depth_images}) == 1
    assert figure.axes[-1].get_xlabel() == "depth (m)"  # a horizontal colorbar under the depth columns
    shown = figure.axes[5].images[0].get_array()  # GT normals of the first row: (n + 1) / 2, invalid white
    np.testing.assert_allclose(shown[0, 0], [1.0, 1.0, 1.0])
    np.testing.assert_allclose(shown[3, 4], (rows[0].samples[0].tasks[2].truth[3, 4] + 1) / 2)
    bad = QualitativeSample(rows[0].samples[0].image, [TaskPanels("depth", "metres", np.ones((3, 3)), np.ones((3, 3)))])
    with pytest.raises(ValueError, match="depth ground truth is"):
        qualitative_grid([QualitativeRow("bad", [bad])])
    only_normals = [QualitativeRow("fp", [QualitativeSample(rows[0].samples[0].image, rows[0].samples[0].tasks[2:])])]
    assert len(qualitative_grid(only_normals).axes) == 3  # no depth colorbar, no class legend


def clusters(points_per_class: int = 40, classes: int = 4, dims: int = 20) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    centres = 6.0 * torch.randn(classes, dims, generator=generator)
    labels = torch.arange(points_per_class * classes) % classes
    return centres[labels] + torch.randn(len(labels), dims, generator=generator), labels


def test_tsne_keeps_separated_clusters_apart_and_is_deterministic() -> None:
    x, labels = clusters()
    probabilities = conditional_probabilities(squared_distances(x.double()), 15.0)
    entropy = -(probabilities * probabilities.clamp_min(1e-300).log()).sum(dim=1)
    torch.testing.assert_close(entropy.exp(), torch.full_like(entropy, 15.0), rtol=1e-4, atol=0)
    embedding = tsne(x, perplexity=15.0, iterations=400, seed=3)
    assert embedding.shape == (160, 2) and torch.isfinite(embedding).all()
    distances = squared_distances(embedding).fill_diagonal_(math.inf)
    neighbours = distances.topk(5, largest=False).indices
    accuracy = (labels[neighbours].mode(dim=1).values == labels).float().mean()
    assert accuracy >= 0.97
    assert torch.equal(embedding, tsne(x, perplexity=15.0, iterations=400, seed=3))
    with pytest.raises(ValueError, match="perplexity"):
        tsne(x[:10], perplexity=30.0)


def test_class_sorted_correlation() -> None:
    x, labels = clusters(points_per_class=5, classes=3)
    x = x.sign()
    correlation, sorted_labels = class_sorted_correlation(x, labels)
    assert correlation.shape == (15, 15)
    assert sorted_labels.tolist() == [0] * 5 + [1] * 5 + [2] * 5
    # labels are 0, 1, 2, 0, 1, 2, ...: by class, in the original order within a class (hand-written)
    order = torch.tensor([0, 3, 6, 9, 12, 1, 4, 7, 10, 13, 2, 5, 8, 11, 14])
    torch.testing.assert_close(correlation, correlation.T)
    torch.testing.assert_close(correlation.diagonal(), torch.ones(15, dtype=torch.float64))
    manual = np.corrcoef(x[order].numpy())
    np.testing.assert_allclose(correlation.numpy(), manual, atol=1e-12)
    same = sorted_labels[:, None] == sorted_labels[None, :]
    assert correlation[same].mean() > correlation[~same].mean() + 0.3
    cosine, _ = class_sorted_correlation(x, labels, "cosine")
    torch.testing.assert_close(cosine, (x[order] @ x[order].T).double() / x.shape[1])


def save_checkpoint(path: Path, method: str, top1: float, cmim: dict | None, seed: int = 0) -> Path:
    """A minimal best.pt laid out like pretrain/run.py's (the meta keys the readers use)."""
    config = {"method": method, "arch": "resnet18", "data": "synthetic", "epochs": 8, "image_size": 48,
              "seed": seed, "synthetic_samples": 2000, "cmim": cmim}
    meta = {"method": method, "arch": "resnet18", "num_classes": 10, "epoch": 8, "top1": top1, "top5": 0.9,
            "data": "synthetic(shapes, 10 classes, 2000/500, 48px, seed 0)", "image_size": 48,
            "real_weights": False, "config": config}
    path.mkdir(parents=True)
    torch.save({"model": {}, "meta": meta}, path / "best.pt")
    return path / "best.pt"


def cmim_settings(lam: float, n_nce: int = 256) -> dict:
    return {"lam": lam, "beta": 2.0, "tau": 0.1, "n_nce": n_nce, "layers": "stages", "embed": "mlp",
            "variant": "paper", "bank_dtype": "float32", "normalizer": "running"}


def test_sweep_reader_and_chart(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    save_checkpoint(root / "irnet", "irnet", 0.5803, None)
    for lam, top1 in ((0.2, 0.5929), (0.8, 0.6122), (3.2, 0.6102)):
        save_checkpoint(root / f"irnet_cmim_{lam}", "irnet+cmim", top1, cmim_settings(lam))
    save_checkpoint(root / "zz_repeat", "irnet+cmim", 0.6, cmim_settings(0.8))
    save_checkpoint(root / "rbnn_cmim_0.8" / "nested", "rbnn+cmim", 0.625, cmim_settings(0.8, 512), seed=1)
    save_checkpoint(root / "rbnn_cmim_1.6", "rbnn+cmim", 0.62, cmim_settings(1.6, 256))
    (root / "torn").mkdir()
    (root / "torn" / "best.pt").write_bytes(b"not a checkpoint")
    (root / "partial").mkdir()
    torch.save({"model": {}, "meta": {"method": "irnet"}}, root / "partial" / "best.pt")
    (root / "no_config").mkdir()
    torch.save({"model": {}, "meta": {"method": "irnet", "arch": "resnet18", "num_classes": 10, "image_size": 32,
                                      "top1": 0.5, "config": None}}, root / "no_config" / "best.pt")
    runs, skipped = load_sweep([root], "lambda")
    points = {(r.method, r.value): round(r.top1, 6) for r in runs}
    assert points == {("irnet", None): 58.03, ("irnet+cmim", 0.2): 59.29, ("irnet+cmim", 0.8): 61.22,
                      ("irnet+cmim", 3.2): 61.02, ("rbnn+cmim", 0.8): 62.5, ("rbnn+cmim", 1.6): 62.0}
    reasons = {Path(s.name).parent.name: s.reason for s in skipped}
    assert "not a readable checkpoint" in reasons["torn"]
    assert reasons["partial"].startswith("is a checkpoint whose meta names neither a task nor an arch; expected a "
                                         "pretrained backbone")
    assert reasons["no_config"] == "meta holds no configuration (not written by pretrain/run.py?)"
    assert "repeats irnet+cmim with lambda 0.8" in reasons["zz_repeat"]
    assert varying_settings(runs, "lambda") == ["rbnn+cmim: runs also differ in cmim.n_nce, seed"]
    by_n, _ = load_sweep([root / "rbnn_cmim_0.8", root / "rbnn_cmim_1.6"], "n_nce")
    assert sorted(r.value for r in by_n) == [256.0, 512.0]

    figure = plot_sweep(runs, "lambda")
    ax = figure.axes[0]
    lines = {line.get_label(): line for line in ax.get_lines()}
    np.testing.assert_allclose(lines["irnet+cmim"].get_xdata(), [0.2, 0.8, 3.2])
    np.testing.assert_allclose(lines["irnet+cmim"].get_ydata(), [59.29, 61.22, 61.02])
    np.testing.assert_allclose(lines["irnet (no CMIM)"].get_ydata(), [58.03, 58.03])
    assert ax.get_xscale() == "log"
    result = sweep_chart([root], tmp_path / "sweep", "lambda")
    assert [p.suffix for p in result.files] == [".png", ".svg", ".csv"]
    assert "irnet+cmim,0.8,61.22" in (tmp_path / "sweep.csv").read_text()
    with pytest.raises(ValueError, match="no readable pretraining run"):
        sweep_chart([root / "torn"], tmp_path / "none")


def test_activation_figures_from_a_checkpoint(tmp_path: Path) -> None:
    model = create_model("resnet18", "bnn", num_classes=13)
    path = tmp_path / "bnn" / "best.pt"
    path.parent.mkdir()
    meta = {"method": "bnn", "arch": "resnet18", "num_classes": 13, "epoch": 1, "top1": 0.1, "top5": 0.5,
            "data": "synthetic", "image_size": 32, "real_weights": False,
            "config": {"data": "synthetic", "seed": 0, "synthetic_samples": 200}}
    torch.save({"model": model.state_dict(), "meta": meta}, path)
    activations = extract_activations(str(path), "layer3", samples=30)
    assert activations.features.shape == (30, 256 * 2 * 2)
    assert set(activations.features.unique().tolist()) <= {-1.0, 0.0, 1.0}  # sign, zero padding aside
    assert activations.labels.tolist() == [k % 13 for k in range(30)]
    assert activations.site == "layer3 (layer3.1.conv2)"
    with pytest.raises(ValueError, match="unknown tap sites"):
        extract_activations(str(path), "layer9.0.conv1", samples=4)

    result = tsne_chart([str(path)], tmp_path / "tsne", "pooled", samples=30, perplexity=5.0, iterations=100)
    assert all(p.stat().st_size > 0 for p in result.files)
    result = correlation_chart([str(path)], tmp_path / "corr", "layer4", samples=20)
    assert len(result.files) == 2
    correlation, labels = class_sorted_correlation(activations.features, activations.labels)
    figure = plot_correlation([(activations, correlation, labels)])
    assert len(figure.axes) == 2  # the heatmap and its colorbar
    assert [t.get_text() for t in figure.axes[0].get_xticklabels()] == list(activations.class_names)


def test_analysis_script_errors_in_one_line(tmp_path: Path, capsys, entry_script) -> None:
    script = entry_script("plots/analysis")
    assert script.main(["tsne", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "t")]) == 2
    error = capsys.readouterr().err.strip()
    assert error == f"error: checkpoint {tmp_path / 'missing.pt'} does not exist"
    assert script.main(["sweep", str(tmp_path), "--out", str(tmp_path / "s")]) == 2
    assert "no readable pretraining run" in capsys.readouterr().err


def test_a_backbone_at_zero_top1_is_plotted_and_visible(tmp_path: Path) -> None:
    for method, top1 in (("bnn", 0.0), ("fp", 0.5)):
        for task in ("seg", "depth"):
            write_run(tmp_path / f"{method}_{task}", task, method, top1, 0.2, 0.9)
    result = seg_depth_chart([tmp_path], tmp_path / "chart")
    assert not result.skipped and {p.method for p in result.points} == {"bnn", "fp"}
    areas = dot_areas(result.points)
    assert areas.min() > 0 and areas.max() == pytest.approx(500.0)
    np.testing.assert_array_equal(scaled_areas(np.array([0.0, 0.25, np.nan]), 0.5), [MIN_DOT_AREA, 250.0, np.nan])
    np.testing.assert_array_equal(scaled_areas(np.array([0.0, np.nan]), 0.0), [MIN_DOT_AREA, np.nan])  # all at 0


def test_a_normals_run_adds_its_columns_and_is_checked(tmp_path: Path) -> None:
    """A backbone with a surface-normals run besides seg and depth: the table gains the normals
    columns (headline after the chart's two), filled for that backbone and '–' for the other; an
    impossible angle is skipped with its reason.

    Catches: a third task dropped from the tables, a normals run taken for a seg or depth run,
    a task's values never checked."""
    for method in ("fp", "irnet"):
        for task in ("seg", "depth"):
            write_run(tmp_path / method / task, task, method, 0.6, 0.4, 0.7)
    normals = {"task": "normals", "classes": 40, "backbone": "/runs/pretrain/fp/best.pt", "method": "fp", "top1": 0.6,
               "mean_angle": 21.5, "median_angle": 10.25, "rmse_angle": 30.0, "within_11_25": 0.5,
               "within_22_5": 0.68, "within_30": 0.74}
    (tmp_path / "fp" / "normals").mkdir()
    (tmp_path / "fp" / "normals" / "metrics.json").write_text(json.dumps(normals))
    (tmp_path / "bad" / "normals").mkdir(parents=True)
    (tmp_path / "bad" / "normals" / "metrics.json").write_text(json.dumps({**normals, "median_angle": 200.0}))
    result = seg_depth_chart([tmp_path], tmp_path / "chart")
    assert [(Path(s.name).parent.parent.name, s.reason) for s in result.skipped] == [
        ("bad", "median_angle 200.0 is not an angle in [0, 180] degrees")]
    markdown = (tmp_path / "chart.md").read_text()
    assert ("| method | top-1 (%) | mIoU (%) | −ln RMSE | mean angle (°) | pixel acc. (%) | RMSE (m) | "
            "δ<1.25 (%) | median angle (°) | < 11.25° (%) | < 30° (%) | backbone |") in markdown
    assert "| fp | 60.00 | 40.00 | 0.3567 | 21.50 | 70.00 | 0.7000 | 55.00 | 10.25 | 50.00 | 74.00 |" in markdown
    assert "| irnet | 60.00 | 40.00 | 0.3567 | – | 70.00 | 0.7000 | 55.00 | – | – | – |" in markdown
    with (tmp_path / "chart.csv").open() as handle:
        rows = {row["method"]: row for row in csv.DictReader(handle)}
    assert rows["fp"]["normals_run"].endswith("fp/normals/metrics.json") and rows["irnet"]["normals_run"] == ""

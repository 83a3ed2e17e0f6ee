"""One multi-task dense model (cmim_dense/dense/multitask.py), its loss weightings and head distillation:
one backbone forward for every head, Kendall et al.'s uncertainty weighting and the distillation losses
against hand-computed values, a seg + depth + normals run that learns every task and writes each
task's metrics.json as single-task runs do, and a binary multi-task head distilled from it."""

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from cmim_dense.dense import create_dense_model, get_task
from cmim_dense.dense.multitask import FixedWeighting, UncertaintyWeighting, multitask_from_models
from cmim_dense.engine.finetune_config import resolve_finetune_config
from cmim_dense.export.roundtrip import export_and_verify
from cmim_dense.prediction import predict_files
from cmim_dense.plots.seg_depth import seg_depth_chart

from .conftest import load_entry_script

FAST = ["--output-stride", "16", "--decoder-channels", "32", "--batch-size", "4", "--no-progress"]
TASKS = "seg,depth,normals"


def test_one_backbone_forward_feeds_every_head_and_each_head_is_its_single_task_model() -> None:
    """The multi-task model built from three single-task models runs the encoder once per batch and gives
    each task exactly its single-task model's output; create_dense_model with a dict builds one."""
    singles = {"seg": create_dense_model("resnet18", "irnet", 13, "deeplabv3plus", 16, 16).eval(),
               "depth": create_dense_model("resnet18", "irnet", 1, "deeplabv3plus", 16, 16).eval()}
    singles["depth"].encoder.load_state_dict(singles["seg"].encoder.state_dict())
    model = multitask_from_models(singles).eval()
    calls = []
    model.encoder.register_forward_hook(lambda *_: calls.append(1))
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        outputs = model(x)
        assert len(calls) == 1
        for name, single in singles.items():
            assert torch.equal(outputs[name], single(x))
    built = create_dense_model("resnet18", "fp", {"seg": 40, "depth": 1, "normals": 3}, "deeplabv3plus", 16, 16)
    assert {name: branch.head[0].out_channels for name, branch in built.branches.items()} == {
        "seg": 40, "depth": 1, "normals": 3}


def test_uncertainty_weighting_is_kendalls_eq7_starting_at_the_fixed_weights() -> None:
    """sum_t c_t exp(-s_t) L_t + s_t / 2 with c = 1 (seg, softmax) and 1/2 (depth, Gaussian), s_t starting
    at log(c_t / w_t): the objective by hand, the weights equal to the fixed ones at the start, and the
    gradient of s_t zero where the weight is 1 / (2 L_t)."""
    tasks = [get_task("seg"), get_task("depth")]
    losses = {"seg": torch.tensor(2.0), "depth": torch.tensor(0.5)}
    weighting = UncertaintyWeighting(tasks, [1.0, 0.1])
    assert weighting.weights() == pytest.approx({"seg": 1.0, "depth": 0.1})
    expected = 1.0 * 2.0 + 0.0 + 0.1 * 0.5 + 0.5 * math.log(0.5 / 0.1)
    assert weighting(losses).item() == pytest.approx(expected, rel=1e-6)
    assert FixedWeighting(tasks, [1.0, 0.1])(losses).item() == pytest.approx(2.05)
    with torch.no_grad():  # at the stationary point: c exp(-s) = 1 / (2 L)
        weighting.log_variance.copy_(torch.tensor([math.log(1.0 * 2 * 2.0), math.log(0.5 * 2 * 0.5)]))
    weighting(losses).backward()
    assert weighting.log_variance.grad.abs().max().item() < 1e-6
    assert weighting.weights() == pytest.approx({"seg": 1 / (2 * 2.0), "depth": 1 / (2 * 0.5)})


def test_the_distillation_losses_by_hand() -> None:
    """seg: KL(p_teacher || p_student) per pixel (0 for equal logits, by hand for two classes); depth: mean
    |d - d_teacher|; normals: mean 1 - cos of the directions (blind to length)."""
    seg, depth, normals = get_task("seg"), get_task("depth"), get_task("normals")
    logits = torch.randn(2, 4, 3, 3)
    assert seg.distillation(logits, logits).item() == pytest.approx(0.0, abs=1e-6)
    student, teacher = torch.zeros(1, 2, 1, 1), torch.tensor([math.log(3.0), 0.0]).view(1, 2, 1, 1)
    assert seg.distillation(student, teacher).item() == pytest.approx(0.75 * math.log(1.5) + 0.25 * math.log(0.5))
    assert depth.distillation(torch.full((1, 1, 2, 2), 2.0), torch.tensor([1.0, 2.0, 3.0, 5.0]).view(1, 1, 2, 2)
                              ).item() == pytest.approx((1 + 0 + 1 + 3) / 4)
    x, y = torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 3.0, 0.0])
    pair = torch.stack([torch.stack([x, 5 * x]), torch.stack([y, x])], dim=0).permute(0, 2, 1)[..., None]
    assert normals.distillation(pair[:, :, :1], pair[:, :, 1:]).item() == pytest.approx((1.0 + 0.0) / 2)
    assert F.cosine_similarity(x, y, dim=0).item() == 0.0  # the first pair's angle is 90 degrees


def test_several_tasks_resolve_to_one_schedule_and_bad_combinations_are_refused() -> None:
    """seg,depth,normals on the built-in data: the longest schedule at seg's lr, the other tasks' lrs as their
    fixed weights (depth 3e-3 / 3e-2, normals 3e-1 / 3e-2), no random scaling (depth forbids it), its own
    folder; a weighting of one task, weights of the wrong count and a repeated task are one-line errors."""
    config = resolve_finetune_config({"task": TASKS, "backbone": "b.pt"})
    assert (config.iters, config.lr, config.lr_step, config.scale) == (600, 3e-2, 400, (1.0, 1.0))
    assert config.task_weighting == "fixed" and config.task_weights == pytest.approx((1.0, 0.1, 10.0))
    assert config.out.endswith("/seg+depth+normals") and config.multi_task
    single = resolve_finetune_config({"task": "seg", "backbone": "b.pt"})
    assert (single.task_weighting, single.task_weights, single.iters, single.scale) == (None, None, 300, (0.5, 2.0))
    for settings, message in (({"task": "seg", "task_weighting": "uncertainty"}, "combine several tasks"),
                              ({"task": TASKS, "task_weights": (1.0, 2.0)}, "one weight per task"),
                              ({"task": "seg,seg"}, "more than once"),
                              ({"task": TASKS, "task_weighting": "gradnorm"}, "unknown task weighting")):
        with pytest.raises(ValueError, match=message):
            resolve_finetune_config({"backbone": "b.pt", **settings})


@pytest.fixture(scope="module")
def multitask_run(backbone, tmp_path_factory):
    """A 50-iteration seg + depth + normals model over the fp backbone (fixed weights)."""
    out = tmp_path_factory.mktemp("multitask") / "run"
    assert load_entry_script("finetune/nyud").main(["--task", TASKS, "--backbone", str(backbone), "--iters", "50",
                                                    "--out", str(out), *FAST]) == 0
    return out


def test_a_multitask_run_learns_every_task_and_writes_each_tasks_metrics(multitask_run, tmp_path) -> None:
    """Every head beats its constant predictor; each task's metrics.json sits in OUT/TASK as a single-task run
    writes it (plus the multi-task keys), ``--evaluate`` rebuilds the model from last.pt to the same figures,
    the 1-bit export rebuilds it to identical outputs and predicts every task of an image, and the tables
    take the runs as one point of their own ("fp, multi-task")."""
    records = {name: json.loads((multitask_run / name / "metrics.json").read_text()) for name in TASKS.split(",")}
    assert records["seg"]["miou"] > 1.5 * records["seg"]["baseline"]["miou"], records["seg"]
    assert records["depth"]["rmse"] < 0.95 * records["depth"]["baseline"]["rmse"], records["depth"]
    assert records["normals"]["mean_angle"] < records["normals"]["baseline"]["mean_angle"] - 2, records["normals"]
    assert all(r["task"] == name and r["multi_task"] == TASKS and r["task_weighting"] == "fixed" and r["seed"] == 0
               for name, r in records.items())
    assert load_entry_script("finetune/nyud").main(["--evaluate", str(multitask_run / "last.pt"),
                                                    "--out", str(tmp_path / "again")]) == 0
    for name, record in records.items():
        again = json.loads((tmp_path / "again" / name / "metrics.json").read_text())
        key = get_task(name).headline.key
        assert again[key] == record[key]
    assert export_and_verify(str(multitask_run / "last.pt"), str(tmp_path / "model.safetensors"))
    Image.fromarray(np.zeros((40, 50, 3), dtype=np.uint8)).save(tmp_path / "room.png")
    written = predict_files(tmp_path / "model.safetensors", [tmp_path / "room.png"], tmp_path / "predictions")
    assert sorted(path.name for path in written) == sorted(f"room_{name}.{suffix}" for name in TASKS.split(",")
                                                          for suffix in ("png", "npy"))
    assert np.load(tmp_path / "predictions" / "room_normals.npy").shape == (40, 50, 3)
    result = seg_depth_chart([multitask_run], tmp_path / "chart")
    assert [p.label for p in result.points] == ["fp, multi-task"] and not result.skipped
    assert result.points[0].mean("mean_angle") == records["normals"]["mean_angle"]


def test_a_binary_multitask_head_distils_from_its_full_precision_teacher(multitask_run, backbone, tmp_path,
                                                                        capsys) -> None:
    """A binary (IR-Net) multi-task head with uncertainty weighting distils from the full-precision run: each
    task's distillation loss is recorded and falls, the learned weights are saved with the model, the
    teacher is named in metrics.json; a teacher of other tasks is refused in one line."""
    finetune = load_entry_script("finetune/nyud").main
    out = tmp_path / "student"
    assert finetune(["--task", TASKS, "--backbone", str(backbone), "--binary-head", "irnet", "--head-teacher",
                     str(multitask_run / "last.pt"), "--task-weighting", "uncertainty", "--iters", "12",
                     "--out", str(out), *FAST]) == 0
    state = torch.load(out / "last.pt", weights_only=True)
    first, last = state["history"][0], state["history"][-1]
    assert set(first["distillation_losses"]) == set(TASKS.split(","))
    assert all(last["distillation_losses"][name] < first["distillation_losses"][name] for name in first["task_losses"])
    saved = UncertaintyWeighting([get_task(name) for name in TASKS.split(",")], [1.0, 1.0, 1.0])
    saved.load_state_dict(state["weighting"])
    assert saved.weights() == pytest.approx(last["task_weights"]) and saved.weights() != pytest.approx(
        first["task_weights"])
    record = json.loads((out / "depth" / "metrics.json").read_text())
    assert record["head_teacher"] == str(multitask_run / "last.pt") and record["task_weighting"] == "uncertainty"
    capsys.readouterr()
    assert finetune(["--task", "seg", "--backbone", str(backbone), "--head-teacher", str(multitask_run / "last.pt"),
                     "--out", str(tmp_path / "refused"), *FAST]) == 2
    assert capsys.readouterr().err.startswith(f"error: --head-teacher {multitask_run / 'last.pt'} was fine-tuned "
                                              "for seg,depth,normals, not seg;")

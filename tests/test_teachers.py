"""Teacher-based objectives (ReActNet KD, S2-BNN GDC, DIR-Net RBD) and teacher loading.

That every recipe trains (and learns) from the engine, teachers included, is in test_learning.py."""

import math

import pytest
import torch
import torchvision

from cmim_dense import create_model
from cmim_dense.checkpoint_io import save_atomic
from cmim_dense.losses import representation_alignment, soft_cross_entropy
from cmim_dense.models import load_teacher


def test_soft_cross_entropy_hand_value() -> None:
    student = torch.tensor([[0.0, math.log(3.0)]])  # softmax = [1/4, 3/4]
    teacher = torch.tensor([[0.0, 0.0]])  # softmax = [1/2, 1/2]
    expected = -(0.5 * math.log(0.25) + 0.5 * math.log(0.75))
    assert soft_cross_entropy(student, teacher).item() == pytest.approx(expected)
    # temperature 2 on student logits [0, 2 ln 3] gives the same [1/4, 3/4]
    assert soft_cross_entropy(student * 2, teacher, temperature=2.0).item() == pytest.approx(expected)


def test_representation_alignment_hand_value() -> None:
    student = [torch.tensor([[[[3.0, 4.0]]]])]  # normalised (0.6, 0.8)
    teacher = [torch.tensor([[[[0.0, 2.0]]]])]  # normalised (0, 1)
    assert representation_alignment(student, teacher).item() == pytest.approx(0.36 + 0.04)
    with pytest.raises(ValueError, match="differ"):
        representation_alignment([torch.zeros(1, 2, 2, 2)], [torch.zeros(1, 2, 4, 4)])


def test_load_teacher_from_files(tmp_path) -> None:
    torch.save(torchvision.models.resnet34(num_classes=7).state_dict(), tmp_path / "tv34.pt")
    teacher = load_teacher(tmp_path / "tv34.pt")
    assert (teacher.arch, teacher.num_classes, teacher.training) == ("resnet34", 7, False)
    assert not any(p.requires_grad for p in teacher.parameters())

    fp = create_model("resnet18", "fp", num_classes=3)
    save_atomic({"model": fp.state_dict(), "meta": {"method": "fp", "arch": "resnet18", "num_classes": 3}},
                tmp_path / "fp.pt")
    assert load_teacher(tmp_path / "fp.pt").arch == "resnet18"

    binary = create_model("resnet18", "irnet", num_classes=3)
    save_atomic({"model": binary.state_dict(), "meta": {"method": "irnet", "arch": "resnet18", "num_classes": 3}},
                tmp_path / "irnet.pt")
    with pytest.raises(ValueError, match="must be full precision"):
        load_teacher(tmp_path / "irnet.pt")
    dense = tmp_path / "finetuned.pt"  # the probe's case: a fine-tuned last.pt as --teacher, KeyError 'method'
    save_atomic({"model": fp.state_dict(), "meta": {"task": "seg", "backbone_meta": {"method": "fp"}}}, dense)
    with pytest.raises(ValueError, match=f"^teacher {dense} is a fine-tuned dense model .*; expected a pretrained "
                                         "backbone"):
        load_teacher(dense)
    state = torchvision.models.resnet18(num_classes=3).state_dict()
    state["layer1.0.conv1.weight"] = torch.zeros(64, 64, 5, 5)
    torch.save(state, tmp_path / "wrong.pt")
    with pytest.raises(ValueError, match="does not fit a resnet18 fp model"):
        load_teacher(tmp_path / "wrong.pt")
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="not a state dict"):
        load_teacher(tmp_path / "list.pt")

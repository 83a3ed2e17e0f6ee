"""A fine-tuned dense model out of the lab: exported whole (1 bit per backbone weight), rebuilt from
the file alone, and run on one's own images of any size by ``python -m cmim_dense.predict``."""

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cmim_dense.dense import dense_model_from_checkpoint
from cmim_dense.engine import resolve_config, run_pretraining
from cmim_dense.engine.finetune import run_finetuning
from cmim_dense.engine.finetune_config import resolve_finetune_config
from cmim_dense.export import load_exported
from cmim_dense.export.__main__ import main as export_main
from cmim_dense.predict import main as predict_main


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory) -> dict[str, Path]:
    """An IR-Net backbone (binary weights and activations: packed for real) under a head fine-tuned
    for 2 iterations on each task: what is checked is the plumbing, not the quality."""
    root = tmp_path_factory.mktemp("predict")
    run_pretraining(resolve_config("irnet", {"epochs": 1, "batch_size": 16, "image_size": 32, "synthetic_samples": 32,
                                             "out": str(root / "backbone"), "progress_bar": False}))
    runs = {}
    for task in ("seg", "depth", "normals"):
        run_finetuning(resolve_finetune_config({
            "task": task, "backbone": str(root / "backbone" / "best.pt"), "iters": 2, "out": str(root / task),
            "output_stride": 16, "decoder_channels": 16, "batch_size": 2, "progress_bar": False}))
        runs[task] = root / task / "last.pt"
    return runs


def photos(folder: Path) -> list[Path]:
    """Two images of odd sizes (not multiples of the output stride), a PNG and a JPEG."""
    rng = np.random.default_rng(0)
    folder.mkdir()
    paths = [folder / "kitchen.png", folder / "hall.jpg"]
    for path, size in zip(paths, [(37, 53), (70, 90)]):
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(path)
    return paths


def test_a_finetuned_model_exports_whole_and_comes_back_from_the_file_alone(finetuned, tmp_path, capsys) -> None:
    """Catches: the export refusing a fine-tuned last.pt (the issue), a file that needs the model's
    skeleton to load, a head or task lost on the way."""
    out = tmp_path / "seg.safetensors"
    assert export_main([str(finetuned["seg"]), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "seg model (deeplabv3plus) over irnet resnet18" in printed and "outputs identical" in printed
    assert out.stat().st_size < finetuned["seg"].stat().st_size / 4  # last.pt also holds the optimizer state
    rebuilt, meta = load_exported(out)
    original, _ = dense_model_from_checkpoint(finetuned["seg"])
    original.encoder.packed_inference = False  # the export's float forward against the checkpoint's
    x = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(rebuilt(x), original(x))
    assert meta["task"] == "seg" and meta["config"]["classes"] == 40
    assert export_main([str(finetuned["seg"]), "--out", str(tmp_path / "x.safetensors"), "--output-stride", "8"]) == 2
    assert "--output-stride applies to a backbone" in capsys.readouterr().err


def test_predict_writes_each_tasks_picture_and_array_at_the_images_own_size(finetuned, tmp_path, capsys) -> None:
    """Every task, from the export (packed kernel) and from last.pt: NAME.png and NAME.npy at the
    image's own size; class ids in range, depth in metres, unit normals; the packed model's
    segmentation agrees with the float model's on at least 99 % of pixels (sign ties aside)."""
    images = photos(tmp_path / "photos")
    for task, model in finetuned.items():
        export = tmp_path / f"{task}.safetensors"
        assert export_main([str(model), "--out", str(export)]) == 0
        for source in (export, model):
            out = tmp_path / f"{task}-{source.suffix[1:]}"
            assert predict_main(["--model", str(source), *map(str, images), "--out", str(out)]) == 0
            for image, size in zip(("kitchen", "hall"), [(37, 53), (70, 90)]):
                picture = np.asarray(Image.open(out / f"{image}.png"))
                array = np.load(out / f"{image}.npy")
                assert picture.shape == (*size, 3) and picture.dtype == np.uint8
                if task == "seg":
                    assert array.shape == size and array.dtype == np.uint8 and array.max() < 40
                elif task == "depth":
                    assert array.shape == size and array.dtype == np.float32 and np.isfinite(array).all()
                else:
                    assert array.shape == (*size, 3) and np.allclose(np.linalg.norm(array, axis=-1), 1, atol=1e-5)
    packed = np.load(tmp_path / "seg-safetensors" / "hall.npy")
    floating = np.load(tmp_path / "seg-pt" / "hall.npy")
    assert (packed == floating).mean() >= 0.99
    assert "wrote 2 predictions to" in capsys.readouterr().out


def test_bad_inputs_are_one_line_and_write_nothing(finetuned, tmp_path, capsys) -> None:
    images = photos(tmp_path / "photos")
    broken = tmp_path / "photos" / "broken.png"
    broken.write_bytes(b"not an image")
    out = tmp_path / "out"
    assert predict_main(["--model", str(finetuned["seg"]), *map(str, images), str(broken), "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and f"{broken} cannot be read as an image" in error and not out.exists()
    backbone = tmp_path / "backbone.safetensors"
    assert export_main([str(finetuned["seg"].parent.parent / "backbone" / "best.pt"), "--out", str(backbone)]) == 0
    assert predict_main(["--model", str(backbone), str(images[0]), "--out", str(out)]) == 2
    assert "is a backbone export, not a fine-tuned dense model" in capsys.readouterr().err
    assert predict_main(["--model", str(tmp_path / "missing.pt"), str(images[0]), "--out", str(out)]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_qualitative_grid_from_finetuned_heads(finetuned, python, root, tmp_path) -> None:
    """The grid (Fig. 5a) from a folder of TASK/last.pt, in this process and by plots/qualitative.py."""
    from cmim_dense.plots.predictions import qualitative_rows

    folder = finetuned["seg"].parent.parent
    rows, classes = qualitative_rows([folder], [0, 2])
    assert classes == 40 and rows[0].name == "irnet" and len(rows[0].samples) == 2
    seg, depth, normals = rows[0].samples[1].tasks
    assert seg.prediction.shape == seg.truth.shape == depth.prediction.shape == depth.truth.shape == (96, 128)
    assert normals.prediction.shape == normals.truth.shape == (96, 128, 3)
    assert np.allclose(np.linalg.norm(normals.prediction, axis=-1), 1.0, atol=1e-5)  # unit predictions
    assert rows[0].samples[1].image.dtype.name == "uint8" and seg.prediction.max() < 40
    result = subprocess.run([python, str(root / "plots" / "qualitative.py"), str(folder), "--images", "0",
                             "--out", str(tmp_path / "grid")], capture_output=True, text=True,
                            env={"CMIM_DENSE_CACHE": os.environ["CMIM_DENSE_CACHE"], "HF_HUB_OFFLINE": "1",
                                 "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "grid.png").is_file() and (tmp_path / "grid.svg").is_file()

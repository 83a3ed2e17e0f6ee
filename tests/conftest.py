import importlib.util
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
# every cache the suite fills (the native kernel, rendered data sets, matplotlib's fonts) in a folder
# of its own, for this process and the commands it starts: never the user's ~/.cache
CACHE = Path(tempfile.mkdtemp(prefix="cmim_dense_tests_"))
os.environ["CMIM_DENSE_CACHE"] = str(CACHE / "cmim_dense")
os.environ["MPLCONFIGDIR"] = str(CACHE / "matplotlib")
torch.set_num_threads(2)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    shutil.rmtree(CACHE, ignore_errors=True)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def python() -> str:
    return sys.executable


def load_entry_script(name: str):
    """An entry script (``"finetune/nyud"``, ``"plots/seg_vs_depth"``) loaded as a module, to call its
    ``main(argv)`` in this process: runs and errors without a fresh interpreter's imports (4-5 s)."""
    spec = importlib.util.spec_from_file_location(f"entry_{name.replace('/', '_')}", ROOT / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def entry_script():
    """:func:`load_entry_script` as a fixture."""
    return load_entry_script


@pytest.fixture(scope="session")
def backbone(tmp_path_factory):
    """A real pretraining checkpoint: fp, 2 epochs of 390 images of the built-in world (88 % top-1;
    one epoch of 64 images reached 12 %, and a depth head on it only 0.93 x the baseline RMSE), by
    pretrain/run.py's main() in this process."""
    out = tmp_path_factory.mktemp("pretrain") / "fp"
    assert load_entry_script("pretrain/run").main([
        "--method", "fp", "--epochs", "2", "--synthetic-samples", "390", "--batch-size", "32", "--image-size", "32",
        "--optimizer", "adam", "--lr", "1e-3", "--out", str(out), "--no-progress"]) == 0
    return out / "best.pt"

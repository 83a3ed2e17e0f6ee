import importlib.util
import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def python() -> str:
    return sys.executable


@pytest.fixture(scope="session")
def entry_script(root: Path):
    """Loads an entry script (``"finetune/nyud"``, ``"plots/seg_vs_depth"``) as a module, to call its
    ``main(argv)`` in this process: argument and input errors without a fresh interpreter's imports."""

    def load(name: str):
        spec = importlib.util.spec_from_file_location(f"entry_{name.replace('/', '_')}", root / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load

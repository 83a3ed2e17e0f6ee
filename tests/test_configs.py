"""The experiment configs of the CMIM paper's Tables 2 and 3."""

import json
from pathlib import Path

import pytest
import torch

from cmim_dense.checkpoint_io import load_checkpoint
from cmim_dense.engine import resolve_config
from cmim_dense.engine.config import pretrain_config, read_config_file
from cmim_dense.models import create_model

FLAGS = {"method", "arch", "data", "image_size", "epochs", "batch_size", "optimizer", "lr", "weight_decay",
         "schedule", "cmim_lambda", "cmim_nce_n"}


def test_table_configs_resolve_to_the_paper_protocol(root) -> None:
    files = sorted((root / "configs").glob("table*.yaml"))
    assert len(files) == 18  # 10 rows of Table 2, 8 lambda values of Table 3
    lambdas = set()
    for path in files:
        values = read_config_file(path, FLAGS)
        config = resolve_config(values.pop("method"), {**values, "data": "synthetic"})
        assert (config.epochs, config.batch_size, config.lr, config.optimizer, config.schedule) == (
            100, 256, 0.1, "sgd", "cos"), path.name
        if path.name.startswith("table3"):
            lambdas.add(config.cmim.lam if config.cmim else 0.0)
    assert lambdas == {0.0, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 12.8}


def test_config_file_errors(tmp_path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("method: irnet\nlearning_rate: 3\n")
    with pytest.raises(ValueError, match="unknown keys learning_rate"):
        read_config_file(bad, FLAGS)
    bad.write_text("- a list\n")
    with pytest.raises(ValueError, match="mapping"):
        read_config_file(bad, FLAGS)
    with pytest.raises(FileNotFoundError):
        read_config_file(tmp_path / "missing.yaml", FLAGS)


TINY = ["--epochs", "2", "--batch-size", "16", "--image-size", "32", "--synthetic-samples", "96", "--no-progress"]
TIMING = {"images_per_s", "epoch_time_s"}


def same_run(a: Path, b: Path) -> None:
    """Two run folders with the same recorded settings, metrics (timings aside) and final weights."""
    assert json.loads((a / "config.json").read_text()) == json.loads((b / "config.json").read_text())
    records = [[{k: v for k, v in json.loads(line).items() if k not in TIMING}
                for line in (run / "metrics.jsonl").read_text().splitlines()] for run in (a, b)]
    assert records[0] == records[1]
    first, second = load_checkpoint(a / "last.pt")["model"], load_checkpoint(b / "last.pt")["model"]
    assert all(torch.equal(value, second[key]) for key, value in first.items())


def test_a_runs_config_json_recreates_the_run(entry_script, tmp_path) -> None:
    """``--config RUN/config.json`` (every resolved value: warm-up, milestones, the CMIM settings) runs
    the same run to the digit on CPU; a flag beside it replaces its value one for one (no rescaling,
    the file holds resolved values).  Catches: a recorded value dropped or re-derived from the recipe
    (a different warm-up, lr or lambda), a flag that does not override the file."""
    pretrain = entry_script("pretrain/run")
    assert pretrain.main(["--method", "irnet+cmim", *TINY, "--lr", "0.02", "--warmup", "0.5", "--cmim-lambda", "1.5",
                          "--cmim-nce-n", "8", "--out", str(tmp_path / "a")]) == 0
    recorded = tmp_path / "a" / "config.json"
    assert pretrain.main(["--config", str(recorded), "--out", str(tmp_path / "b"), "--no-progress"]) == 0
    same_run(tmp_path / "a", tmp_path / "b")
    replaced = pretrain_config({"seed": 3, "epochs": 1, "cmim_tau": 0.2, "out": str(tmp_path / "c")}, recorded)
    expected = json.loads(recorded.read_text())
    expected.update(seed=3, epochs=1, cmim={**expected["cmim"], "tau": 0.2})
    assert replaced.settings() == expected and replaced.out == str(tmp_path / "c")
    with pytest.raises(ValueError, match="--method irnet differs from the run's irnet\\+cmim"):
        pretrain_config({"method": "irnet"}, recorded)


def test_a_two_stage_runs_config_json_recreates_both_stages(entry_script, tmp_path) -> None:
    """ReActNet's config.json is its second stage's; it recreates both stages from the first's values."""
    teacher = tmp_path / "teacher.pt"
    torch.save(create_model("resnet18", "fp", num_classes=13).state_dict(), teacher)
    pretrain = entry_script("pretrain/run")
    args = ["--method", "reactnet", "--teacher", str(teacher), *TINY, "--epochs", "1", "--synthetic-samples", "48"]
    assert pretrain.main([*args, "--out", str(tmp_path / "a")]) == 0
    assert pretrain.main(["--config", str(tmp_path / "a" / "config.json"), "--out", str(tmp_path / "b"),
                          "--no-progress"]) == 0
    same_run(tmp_path / "a" / "stage1", tmp_path / "b" / "stage1")
    same_run(tmp_path / "a", tmp_path / "b")


def test_a_config_file_that_is_neither_kind_is_refused(entry_script, tmp_path, capsys) -> None:
    mixed = tmp_path / "mixed.json"
    mixed.write_text(json.dumps({"method": "irnet", "milestones": [], "epochs": 1}))
    assert entry_script("pretrain/run").main(["--config", str(mixed), "--out", str(tmp_path / "r")]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "is neither a YAML of flags nor a run's config.json as written" in error


def test_yaml_values_are_typed_as_the_dataclass_declares_and_defaults_come_from_it(tmp_path) -> None:
    """YAML 1.1 reads 1e-3 as text and JSON has no tuples: build_config gives each field its declared type;
    what neither the flags nor the recipe set is the dataclass's own default; unknown names fail in one line."""
    from cmim_dense.engine.config import PretrainConfig
    from cmim_dense.engine.finetune_config import FinetuneConfig, resolve_finetune_config
    from cmim_dense.engine.run_state import build_config

    path = tmp_path / "run.yaml"
    path.write_text("method: irnet+cmim\nlr: 1e-3\nepochs: 2\ncmim_lambda: 1.6\ncmim_nce_n: 64\n")
    values = read_config_file(path, FLAGS)
    assert values["lr"] == "1e-3"  # what YAML 1.1 reads
    config = resolve_config(values.pop("method"), values)
    assert (config.lr, config.epochs, config.cmim.lam, config.cmim.n_nce) == (0.001, 2, 1.6, 64)
    assert isinstance(config.lr, float) and isinstance(config.cmim.lam, float)
    assert (config.arch, config.amp, config.eval_every, config.cmim.variant) == (
        PretrainConfig.arch, PretrainConfig.amp, PretrainConfig.eval_every, "paper")
    finetune = resolve_finetune_config({"task": "seg", "backbone": "b.pt", "crop": [32, 48], "lr": "0.5"})
    assert finetune.crop == (32, 48) and finetune.lr == 0.5 and finetune.momentum == FinetuneConfig.momentum
    with pytest.raises(ValueError, match=r"^unknown settings learning_rate; valid: "):
        build_config(FinetuneConfig, {"task": "seg", "learning_rate": 1.0})
    with pytest.raises(ValueError, match=r"^--lr must be a number, got 'fast'$"):
        resolve_finetune_config({"task": "seg", "backbone": "b.pt", "lr": "fast"})

"""The experiment configs of the CMIM paper's Tables 2 and 3."""

import pytest

from cmim_dense.engine import resolve_config
from cmim_dense.engine.config import read_config_file

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

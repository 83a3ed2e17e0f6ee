"""Every command line answers ``--help`` without loading torch (issue #24: under 1 s), and the names
its help text lists are the registries' own.

A command's parser imports no torch (the names it checks come from torch-free modules, the others
are checked by the registries once the arguments are parsed); the interpreter below blocks torch and
albumentations, so any import of either on the way to the help text fails the test."""

import subprocess

import pytest

from cmim_dense.dense import DEPTH_LOSSES, HEADS, TASKS
from cmim_dense.data.nyud_meta import DEPTH_KINDS
from cmim_dense.engine.optim import OPTIMIZERS, SCHEDULES
from cmim_dense.models import ARCHS, LAYOUTS

SCRIPTS = ["pretrain/run.py", "finetune/nyud.py", "pipeline/run.py", "datasets/make_nyud_meta.py",
           "datasets/make_synthetic_nyud.py", "datasets/prepare_nyud.py", "plots/analysis.py", "plots/qualitative.py",
           "plots/seg_vs_depth.py"]
MODULES = ["cmim_dense.export", "cmim_dense.predict", "cmim_dense.summary", "cmim_dense.convert"]
BLOCKED = ("torch", "albumentations")


def help_without_torch(python: str, root, command: str) -> subprocess.CompletedProcess:
    """``command --help`` (a script path or a ``-m`` module name) in an interpreter where importing
    torch or albumentations raises ImportError."""
    run = (f"runpy.run_module({command!r}, run_name='__main__', alter_sys=True)" if command in MODULES
           else f"runpy.run_path({str(root / command)!r}, run_name='__main__')")
    program = (f"import runpy, sys; sys.modules.update(dict.fromkeys({BLOCKED!r})); "
               f"sys.argv = [{command!r}, '--help']; {run}")
    return subprocess.run([python, "-c", program], capture_output=True, text=True, cwd=root)


@pytest.mark.parametrize("command", SCRIPTS + MODULES)
def test_help_answers_without_torch(python, root, command) -> None:
    """Catches: a registry, the engine or a data loader imported at the top of an entry script or a
    ``python -m`` module, or by a package ``__init__`` on its way (a --help of 4-5 s again)."""
    result = help_without_torch(python, root, command)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("usage:"), result.stdout[:200]


def help_text(entry_script, capsys, name: str, module=None) -> str:
    main = module.main if module is not None else entry_script(name).main
    with pytest.raises(SystemExit):
        main(["--help"])
    return " ".join(capsys.readouterr().out.split())  # argparse wraps the help at any space


def test_help_names_every_registered_choice(entry_script, capsys) -> None:
    """The flags whose names the registries check after parsing list those names in their help.

    Catches: an architecture, optimizer, schedule, task, head, depth loss or checkpoint format added
    to (or renamed in) its registry without its command's help saying so."""
    from cmim_dense import convert

    expected = {
        "pretrain/run": [*ARCHS, *OPTIMIZERS, *SCHEDULES],
        "finetune/nyud": [*TASKS, *HEADS, *DEPTH_LOSSES, *DEPTH_KINDS],
        "convert": LAYOUTS.names(),
    }
    for name, names in expected.items():
        text = help_text(entry_script, capsys, name, convert if name == "convert" else None)
        missing = [n for n in names if n not in text]
        assert not missing, f"{name} --help does not name {missing}"


@pytest.mark.parametrize(("script", "args", "message"), [
    ("finetune/nyud", ["--task", "segmentation", "--backbone", "x.pt"], "unknown task 'segmentation'; valid: depth, "
                                                                         "normals, seg"),
    ("finetune/nyud", ["--task", "seg", "--backbone", "x.pt", "--head", "pspnet"], "unknown head 'pspnet'; valid: "),
    ("finetune/nyud", ["--task", "depth", "--backbone", "x.pt", "--depth-loss", "l2"], "unknown depth loss 'l2'; "
                                                                                          "valid: berhu, l1"),

    ("finetune/nyud", ["--task", "seg", "--backbone", "x.pt", "--output-stride", "4"], "--output-stride of the "
                                                                                         "deeplabv3plus head must be"),
    ("pretrain/run", ["--arch", "resnet50"], "--arch must be one of resnet18, resnet18_cifar, resnet34, got "
                                             "'resnet50'"),
    ("pretrain/run", ["--schedule", "poly"], "--schedule must be one of cos, linear, step, got 'poly'"),
])
def test_unknown_names_are_refused_by_the_registries_in_one_line(entry_script, capsys, tmp_path, script, args,
                                                                 message) -> None:
    """Without argparse choices, a wrong name is still refused at once, in one line naming the valid
    ones, before anything is built or written.

    Catches: a name checked only when the model or data is built (minutes later, or a traceback)."""
    out = tmp_path / "out"
    assert entry_script(script).main([*args, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
    assert not out.exists()

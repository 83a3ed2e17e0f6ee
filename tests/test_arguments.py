import argparse
import subprocess
import sys

import pytest

from cmim_dense.arguments import image_size, scale_range
from cmim_dense.cli import first_line, report_user_errors


def test_image_size_square_and_height_by_width() -> None:
    assert image_size("224") == (224, 224)
    assert image_size("480x640") == (480, 640)
    assert image_size("64X96") == (64, 96)
    for bad in ("", "x", "480x", "0x64", "1x2x3", "a"):
        with pytest.raises(argparse.ArgumentTypeError, match="HEIGHTxWIDTH"):
            image_size(bad)


def test_scale_range() -> None:
    assert scale_range("0.5,2") == (0.5, 2.0)
    assert scale_range("1,1") == (1.0, 1.0)
    with pytest.raises(argparse.ArgumentTypeError, match="MIN,MAX"):
        scale_range("2")
    with pytest.raises(argparse.ArgumentTypeError, match="0 < MIN <= MAX"):
        scale_range("2,1")


def test_argument_types_do_not_import_torch() -> None:
    # command lines build their parsers from these types: --help and bad flags answer at once
    code = "import sys, cmim_dense.arguments, cmim_dense.cli, cmim_dense; assert 'torch' not in sys.modules, 'torch imported'"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_user_errors_become_one_line_and_status_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert first_line(ValueError("  first\nsecond\n")) == "first"
    assert first_line(KeyError()) == "KeyError"
    assert report_user_errors(lambda: 7) == (0, 7)

    def missing() -> None:
        raise FileNotFoundError("data/nyud does not exist")

    assert report_user_errors(missing) == (2, None)
    assert capsys.readouterr().err == "error: data/nyud does not exist\n"
    with pytest.raises(KeyError):  # a bug, not a user error: the traceback is kept
        report_user_errors(lambda: {}["x"])

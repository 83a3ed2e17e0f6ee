"""One cache folder, the same from any working directory, for the built-in rooms and the kernel."""

from pathlib import Path

from cmim_dense.cache import cache_root
from cmim_dense.data.nyud_source import nyud_root
from cmim_dense.packed.native.build import native_library


def test_the_cache_root_follows_the_variable_then_xdg_then_home(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)  # a relative default (the old runs/data) would land here
    monkeypatch.delenv("CMIM_DENSE_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert cache_root() == tmp_path / "home" / ".cache" / "cmim_dense"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "cmim_dense"
    monkeypatch.setenv("CMIM_DENSE_CACHE", "~/mine")
    assert cache_root() == tmp_path / "home" / "mine"


def test_the_rooms_and_the_kernel_live_in_the_cache_root(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    root = cache_root()  # the suite's own (conftest)
    assert root.name == "cmim_dense"
    monkeypatch.delenv("CMIM_DENSE_CACHE")  # reached through the default instead: the same folder, no rebuild
    monkeypatch.setenv("XDG_CACHE_HOME", str(root.parent))
    rooms = nyud_root("synthetic")
    assert rooms.is_relative_to(root / "nyud") and (rooms / "meta.json").is_file()
    library = native_library()
    assert library is not None and library.path.parent == root / "native"
    assert list(tmp_path.iterdir()) == []  # nothing in the working directory (the old default was ./runs/data)

"""``gradsight._files``: an output file is written whole, through ``NAME.partial``, or not at all."""

from __future__ import annotations

from pathlib import Path

import pytest
from matplotlib.figure import Figure

from gradsight._files import atomic_path, save_figure, write_bytes, write_text


def test_success_renames_the_partial_file_and_leaves_nothing_else(tmp_path: Path) -> None:
    out = tmp_path / "sub" / "table.csv"
    with atomic_path(out) as partial:
        assert partial == tmp_path / "sub" / "table.csv.partial"
        partial.write_text("a,b\n1,2\n")
        assert not out.exists()  # nothing under the user's name until the file is complete
    assert out.read_text() == "a,b\n1,2\n"
    assert sorted(p.name for p in out.parent.iterdir()) == ["table.csv"]


def test_a_failure_leaves_neither_the_output_nor_the_partial_file(tmp_path: Path) -> None:
    out = tmp_path / "table.csv"
    with pytest.raises(OSError, match="No space"), atomic_path(out) as partial:
        partial.write_text("a,b\n1,")
        raise OSError(28, "No space left on device")
    assert list(tmp_path.iterdir()) == []


def test_a_failure_keeps_an_existing_output_as_it_was(tmp_path: Path) -> None:
    out = write_text(tmp_path / "graph.dot", "digraph old {}\n")
    with pytest.raises(UnicodeEncodeError):
        write_text(out, "digraph new { a [label=\"\ud800\"] }\n")  # a lone surrogate cannot be written
    assert out.read_text() == "digraph old {}\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["graph.dot"]


def test_a_failed_rename_removes_the_partial_file(tmp_path: Path) -> None:
    out = tmp_path / "a_directory"
    out.mkdir()  # a file cannot replace a directory
    with pytest.raises(OSError):
        write_bytes(out, b"data")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_directory"]


@pytest.mark.parametrize(("name", "magic"), [("f.png", b"\x89PNG"), ("f.svg", b"<?xml"), ("f.pdf", b"%PDF"),
                                             ("f.PDF", b"%PDF"), ("no_suffix", b"\x89PNG")])
def test_save_figure_writes_the_format_of_the_suffix(tmp_path: Path, name: str, magic: bytes) -> None:
    """matplotlib would take the format from ``.partial``: it is passed from the output's suffix."""
    fig = Figure()
    fig.subplots().plot([1, 2, 3])
    out = save_figure(fig, tmp_path / name, dpi=50)
    assert out.read_bytes().startswith(magic)
    assert [p.name for p in tmp_path.iterdir()] == [name]

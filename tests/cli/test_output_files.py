"""The commands' output files (figures, the probe table, graphs) are written through ``NAME.partial``:
a command that fails while writing leaves neither the file nor ``NAME.partial``, one that succeeds
leaves only the file."""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

import pandas as pd
import pytest
from matplotlib.figure import Figure

from gradsight.cli import main

MLP = "mlp:depth=4,width=8"

#: (what is written, argv with OUT for the output file, what the file starts with)
OUTPUTS = {
    "plot figure": (["plot", "RUN", "--kind", "flow", "-o", "OUT.pdf"], b"%PDF"),
    "probe figure": (["probe", MLP, "--batch-size", "4", "-o", "OUT.svg"], b"<?xml"),
    "probe table": (["probe", MLP, "--batch-size", "4", "--csv", "OUT.csv"], b"name,kind,"),
    "paths figure": (["paths", "resmlp:depth=6,width=8", "--samples", "1", "--batch-size", "1", "-o", "OUT.png"],
                     b"\x89PNG"),
    "shattering figure": (["shattering", "--depths", "2", "--blocks", "1", "--width", "8", "--points", "16",
                           "-o", "OUT.svg"], b"<?xml"),
    "graph as DOT": (["graph", MLP, "--no-probe", "-o", "OUT.dot"], b"digraph"),
    "graph rendered": (["graph", MLP, "--no-probe", "-o", "OUT.png"], b"\x89PNG"),
}


def _argv(kind: str, run: Path, folder: Path) -> tuple[list[str], Path]:
    argv, _ = OUTPUTS[kind]
    out = folder / argv[-1].replace("OUT", "out")
    return [str(run) if a == "RUN" else str(out) if a.startswith("OUT") else a for a in argv], out


def _full_disk(cls: type, method: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``cls.method`` write a few bytes to its file and fail as a full disk does (the file is
    the first argument, or the path itself for ``Path`` methods)."""

    def write_then_fail(self, *args, **kwargs):
        with open(self if isinstance(self, Path) else args[0], "wb") as f:
            f.write(b"half a fi")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cls, method, write_then_fail)


def _needs_graphviz(kind: str) -> None:
    if kind == "graph rendered" and shutil.which("dot") is None:
        pytest.skip("Graphviz 'dot' is not installed")


@pytest.mark.parametrize("kind", list(OUTPUTS))
def test_a_written_output_leaves_no_partial_file(kind: str, tiny_run: Path, tmp_path: Path) -> None:
    _needs_graphviz(kind)
    folder = tmp_path / "out"
    argv, out = _argv(kind, tiny_run, folder)
    assert main(argv) == 0
    assert out.read_bytes().startswith(OUTPUTS[kind][1])  # the format of the suffix, not of ".partial"
    assert [p.name for p in folder.iterdir()] == [out.name]


@pytest.mark.parametrize("kind", list(OUTPUTS))
def test_a_failed_write_leaves_neither_the_output_nor_a_partial_file(
        kind: str, tiny_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture) -> None:
    _needs_graphviz(kind)
    if kind.endswith("figure"):
        _full_disk(Figure, "savefig", monkeypatch)
    elif kind == "probe table":
        _full_disk(pd.DataFrame, "to_csv", monkeypatch)
    else:  # the graph: the text or the bytes Graphviz rendered
        _full_disk(Path, "write_bytes" if kind == "graph rendered" else "write_text", monkeypatch)
    folder = tmp_path / "out"
    argv, out = _argv(kind, tiny_run, folder)
    assert main(argv) == 2
    assert "No space left on device" in capsys.readouterr().err
    assert list(folder.iterdir()) == []

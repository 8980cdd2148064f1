"""``gradsight probe``: the printed table."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from gradsight.cli import main


def test_probe_prints_the_stream_rms_of_every_addition(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A pre-LN GPT has two additions per block; each printed row shows the RMS of the stream
    before the addition, the value of the table written with --csv."""
    csv = tmp_path / "probe.csv"
    spec = "gpt_preln:depth=2,width=16,heads=2,context=8"
    assert main(["probe", spec, "--batch-size", "4", "--csv", str(csv)]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = lines[0].split()
    assert "stream_rms" in header
    table = pd.read_csv(csv)
    blocks = table[table["kind"] == "block"]
    assert list(blocks["name"]) == ["transformer.h.0[attn]", "transformer.h.0[mlp]",
                                    "transformer.h.1[attn]", "transformer.h.1[mlp]"]
    printed = {row.split()[1]: row.split() for row in lines[1:1 + len(blocks)]}
    column = header.index("stream_rms")
    for name, stream_rms in zip(blocks["name"], blocks["stream_rms"]):
        assert stream_rms > 0
        assert printed[name][column] == f"{stream_rms:.3e}"

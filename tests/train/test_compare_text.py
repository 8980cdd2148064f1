"""``gradsight compare`` of language models on a byte-level corpus, offline, end to end."""

from __future__ import annotations

import csv
import math
from dataclasses import replace
from pathlib import Path

import pytest

import gradsight as gs
from gradsight.cli import main
from gradsight.train import get_recipe
from gradsight.train.compare import compare

LM = ["--models", "token_resmlp", "--depths", "3,5", "--dataset", "pystdlib", "--recipe", "gpt", "--epochs", "1",
      "--limit", "4096", "--context", "16", "--quiet"]
FIGURES = {"gradflow-token_resmlp-3.png", "gradflow-token_resmlp-5.png", "gradflow-all.png", "training-curves.png"}


def _entries(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


@pytest.fixture(scope="module")
def compared_lm(tmp_path_factory) -> tuple[Path, str]:
    """token_resmlp at depths 3 and 5 on 4 KiB of each pystdlib split, 1 epoch, warmup 10 steps,
    histograms at every 2nd recorded step."""
    out = tmp_path_factory.mktemp("lm") / "out"
    with pytest.MonkeyPatch.context() as mp:
        printed: list[str] = []
        mp.setattr("click.echo", lambda message="", **kw: printed.append(str(message)))
        assert main(["compare", *LM, "--warmup", "10", "--histograms", "2", "--threads", "1", "--out", str(out)]) == 0
    return out, "\n".join(printed)


def test_compare_writes_the_language_model_table_runs_figures_and_report(compared_lm):
    out, printed = compared_lm
    with (out / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["network", "layers", "parameters", "train_loss", "test_loss", "test_bits_per_byte",
                             "time_s"]
    assert [(r["network"], r["layers"]) for r in rows] == [("token_resmlp", "3"), ("token_resmlp", "5")]
    for row in rows:
        assert float(row["test_bits_per_byte"]) == pytest.approx(float(row["test_loss"]) / 0.6931471805599453)
    markdown = (out / "results.md").read_text()
    assert "| network | layers | parameters | train loss | test loss | test bits per byte | time (s) |" in markdown
    assert "--recipe gpt --context 16 --warmup 10" in markdown and "--histograms 2" in markdown
    assert "Dataset **pystdlib** (first 4096 bytes of each split): 4,096 training and 4,096 test bytes" in markdown
    assert "linear warmup over 10 steps" in markdown and "context 16" in markdown
    assert "token_resmlp-3 train / test loss" in markdown
    assert FIGURES <= _entries(out / "figures")
    assert (out / "report.html").stat().st_size > 10_000
    assert "| token_resmlp | 3 |" in printed and "test bits per byte" in printed


def test_compare_histograms_option_records_them_at_every_kth_recorded_step(compared_lm):
    out, _ = compared_lm
    with gs.open_run(out / "runs" / "token_resmlp-3") as run:
        recorded = run.steps()
        hist_steps = sorted(set(run.histograms(level="model")["step"]))
        assert run.meta["histograms_every"] == 2
    assert len(recorded) >= 4 and hist_steps == recorded[::2]


def test_language_model_runs_record_the_corpus_and_the_schedule(compared_lm):
    out, _ = compared_lm
    with gs.open_run(out / "runs" / "token_resmlp-5") as run:
        config = run.config
        lr = run.metrics()["lr"].dropna()
        assert run.status == "finished" and "test_bits_per_byte" in run.metrics().columns
    assert (config["family"], config["depth"], config["context"], config["input_shape"]) == ("token_resmlp", 5, 16, [16])
    assert config["text"]["python_version"] and config["text"]["train_bytes"] == 4096
    assert config["recipe"]["warmup_steps"] == 10 and config["compare"]["warmup"] == 10
    assert lr.iloc[-1] == pytest.approx(1e-3)  # past the warmup


@pytest.mark.parametrize("args, contains", [
    (["--models", "plain", "--depths", "8"], ["'plain' takes image inputs, not tokens"]),
    (["--dataset", "text:/no/such/folder"], ["does not exist"]),
    (["--limit", "10"], ["too short for windows of 16 bytes"]),
    (["--warmup", "-1"], ["--warmup"]),
    (["--dataset", "mnist5k"], ["'token_resmlp' is a language model", "pystdlib"]),
])
def test_bad_language_model_input_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, args, contains):
    before = _entries(tmp_path)
    assert main(["compare", *LM, "--out", str(tmp_path / "out"), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(("gradsight: error:", "Error:")), err
    assert all(text in err[0] for text in contains), err
    assert _entries(tmp_path) == before


def test_compare_on_a_local_text_folder(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(10):
        (corpus / f"part{i}.txt").write_text(f"line {i}: the quick brown fox jumps over the lazy dog\n" * 20)
    result = compare(["token_resmlp"], [3], f"text:{corpus}", out=tmp_path / "out", recipe="gpt", epochs=1,
                     context=8, progress=False)
    assert result.table[0]["test_bits_per_byte"] > 0
    assert f"Dataset **text:{corpus}**" in (tmp_path / "out" / "results.md").read_text()


def test_compare_trains_the_gpt_family_with_and_without_warmup(tmp_path):
    recipe = replace(get_recipe("gpt"), batches_per_epoch=8, batch_size=8)
    runs = {}
    for warmup in (0, 4):
        runs[warmup] = compare(["gpt_preln", "gpt_postln", "gpt_noskip"], [1, 2], "pystdlib", out=tmp_path / f"w{warmup}",
                               recipe=recipe, epochs=1, limit=2048, context=16, warmup=warmup, progress=False)
    result = runs[4]
    assert [(r["network"], r["layers"]) for r in result.table] == [
        ("gpt_preln", 1), ("gpt_preln", 2), ("gpt_postln", 1), ("gpt_postln", 2), ("gpt_noskip", 1), ("gpt_noskip", 2)]
    assert all(math.isfinite(r["test_loss"]) for r in result.table)
    with gs.open_run(runs[0].run_dirs[0]) as cold, gs.open_run(result.run_dirs[0]) as warm:
        assert cold.config["recipe"]["warmup_steps"] == 0 and warm.config["recipe"]["warmup_steps"] == 4
        assert cold.metrics()["loss"].iloc[0] == warm.metrics()["loss"].iloc[0]  # same weights, same first batch
        assert cold.metrics()["loss"].iloc[1] != warm.metrics()["loss"].iloc[1]  # a quarter of the step size

"""Model arguments shared by the commands: the model spec, ``--arg``, ``--input-shape`` (ONE
sample, without the batch dimension, in every command) and token inputs for language models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from gradsight.cli import main

VOCAB = 20
TOKEN_ARGS = ["--input-shape", "6", "--input-dtype", "long", "--vocab-size", str(VOCAB)]


class TokenNet(nn.Module):
    """Embedding, one residual MLP block over the token vectors, and logits per token:
    (N, T) ids -> (N, T, vocab_size)."""

    def __init__(self, vocab_size: int = VOCAB, width: int = 8) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, width)
        self.block = nn.Sequential(nn.Linear(width, width), nn.Tanh(), nn.Linear(width, width))
        self.head = nn.Linear(width, vocab_size)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.embed(ids)
        return self.head(h + self.block(h))


class LogitsOnly(nn.Module):
    """A Hugging Face causal LM whose forward returns the logits tensor alone."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model(ids).logits


def tiny_gpt2(**kwargs: int) -> nn.Module:
    """GPT-2 with 2 layers, width 32, 2 heads and 100 token ids."""
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(
        **{"n_layer": 2, "n_embd": 32, "n_head": 2, "vocab_size": 100, "n_positions": 32,
           "bos_token_id": 0, "eos_token_id": 0, **kwargs}
    )
    torch.manual_seed(0)
    return LogitsOnly(transformers.GPT2LMHeadModel(config))


@pytest.fixture(autouse=True)
def _single_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# -- token models ---------------------------------------------------------------------------------
def test_graph_of_a_token_model(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "g.dot"
    assert main(["graph", "tests.cli.test_model_args:TokenNet", *TOKEN_ARGS, "-o", str(out)]) == 0
    dot = out.read_text()
    assert '"param:embed.weight"' in dot and "Embedding" in dot


def test_doctor_checks_a_token_model(capsys: pytest.CaptureFixture) -> None:
    argv = ["doctor", "tests.cli.test_model_args:TokenNet", *TOKEN_ARGS, "--steps", "2", "--batch-size", "4", "--json"]
    assert main(argv) in (0, 1)
    report = json.loads(capsys.readouterr().out)
    assert report["target"].startswith("model tests.cli.test_model_args:TokenNet after 2 step(s)")


def test_probe_of_a_token_model_with_model_arguments(capsys: pytest.CaptureFixture) -> None:
    argv = ["probe", "tests.cli.test_model_args:TokenNet", *TOKEN_ARGS, "--arg", "width=4", "--batch-size", "4"]
    assert main(argv) == 0
    assert "embed" in capsys.readouterr().out


def test_a_registered_token_model_needs_no_input_options(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """The registry says token_resmlp takes 16 token ids below 256: no flags needed."""
    assert main(["graph", "token_resmlp:width=8", "--no-probe", "-o", str(tmp_path / "g.dot")]) == 0
    assert "2 skip edges" in capsys.readouterr().out  # its two residual blocks
    assert main(["probe", "token_resmlp:width=8", "--batch-size", "4"]) == 0
    assert "body.block1" in capsys.readouterr().out
    assert main(["paths", "token_resmlp:width=8", "--samples", "1"]) == 0
    assert "2 residual blocks" in capsys.readouterr().out
    argv = ["doctor", "token_resmlp:width=8", "--input-shape", "8", "--steps", "2", "--batch-size", "4"]
    assert main(argv) in (0, 1)
    assert "gradsight doctor: model token_resmlp" in capsys.readouterr().out


def test_graph_and_doctor_of_a_tiny_gpt2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    pytest.importorskip("transformers")
    spec = "tests.cli.test_model_args:tiny_gpt2"
    args = ["--input-shape", "8", "--input-dtype", "long", "--vocab-size", "100"]
    out = tmp_path / "gpt2.dot"
    assert main(["graph", spec, *args, "--view", "module", "--max-depth", "3", "-o", str(out)]) == 0
    assert '"module:model.transformer.wte"' in out.read_text()  # the token embedding
    assert main(["doctor", spec, *args, "--steps", "1", "--batch-size", "2"]) in (0, 1)
    assert "gradsight doctor: model" in capsys.readouterr().out


# -- the input shape means one sample everywhere -------------------------------------------------------
def test_input_shape_sizes_a_registered_model(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """One sample of 12 features: the MLP is built with in_features=12 (no batch dimension)."""
    out = tmp_path / "g.dot"
    assert main(["graph", "mlp:depth=4,width=8", "--input-shape", "12", "--no-probe", "-o", str(out)]) == 0
    assert "(8, 12)" in out.read_text()  # the first weight: width x in_features
    assert main(["probe", "resnet:depth=8", "--input-shape", "1,8,8", "--batch-size", "4"]) == 0
    assert "stage3.block0" in capsys.readouterr().out


def test_registered_models_need_no_input_shape(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["paths", "resmlp:depth=6,width=4", "--samples", "1"]) == 0
    assert "2 residual blocks" in capsys.readouterr().out
    assert main(["graph", "simple_resnet:width=4", "--no-probe", "-o", str(tmp_path / "g.dot")]) == 0
    assert "2 skip edges" in capsys.readouterr().out


def test_paths_of_torchvision_resnet18_given_as_a_spec(capsys: pytest.CaptureFixture) -> None:
    pytest.importorskip("torchvision")
    argv = ["paths", "torchvision.models:resnet18:num_classes=3", "--input-shape", "3,32,32", "--samples", "1"]
    assert main(argv) == 0
    assert "8 residual blocks" in capsys.readouterr().out


@pytest.mark.parametrize("command", [["graph", "-o", "g.dot"], ["probe"], ["paths"], ["doctor"]])
@pytest.mark.parametrize(
    "args, message",
    [
        (["--input-shape", "2,x"], "bad --input-shape '2,x'"),
        (["--input-shape", "0,4"], "one sample, without the batch dimension"),
        (["--input-shape", "6", "--input-dtype", "long"], "give --vocab-size N"),
        (["--arg", "depth"], "write KEY=VALUE"),
    ],
)
def test_bad_model_arguments_are_one_line_in_every_command(
    command: list[str], args: list[str], message: str, capsys: pytest.CaptureFixture, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    spec = "tests.cli.test_model_args:TokenNet" if "long" in args else "resmlp:depth=4,width=4"
    assert main([command[0], spec, *command[1:], *args]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("command", [["graph", "-o", "g.dot"], ["probe"], ["paths"]])
def test_a_model_from_elsewhere_needs_an_input_shape(command: list[str], capsys: pytest.CaptureFixture,
                                                      tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert main([command[0], "torch.nn:Linear:in_features=3,out_features=2", *command[1:]]) == 2
    assert "give --input-shape" in capsys.readouterr().err


def test_doctor_of_a_model_from_elsewhere_needs_an_input_shape(capsys: pytest.CaptureFixture) -> None:
    assert main(["doctor", "tests.cli.test_model_args:TokenNet"]) == 2
    err = capsys.readouterr().err
    assert "pass --input-shape" in err and len(err.strip().splitlines()) == 1


def test_report_draws_the_graph_of_a_registered_token_model(tmp_path: Path) -> None:
    from tests.plots.runs import make_run

    run = make_run(tmp_path / "run", depth=2, steps=2)
    out = tmp_path / "r.html"
    assert main(["report", str(run), "--graph", "token_resmlp:width=8", "-o", str(out)]) == 0
    assert "<h3>Computation graph</h3>" in out.read_text()

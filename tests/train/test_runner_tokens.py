"""The training runner on a byte-level corpus: next-token loss over every position, test loss on
fixed windows, bits per byte, and what the run's config says about the corpus."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gradsight as gs
from gradsight.data import TextSplits, fixed_windows, load_dataset, token_batch
from gradsight.train import build_for_data, evaluate, get_recipe, train
from gradsight.train.tasks import TEST_WINDOWS

CONTEXT = 16
TINY_GPT = replace(get_recipe("gpt"), batch_size=4, batches_per_epoch=6, epochs=2)


@pytest.fixture(scope="module")
def corpus() -> TextSplits:
    text = b"def f(x):\n    return x + 1\n\nclass A:\n    pass\n" * 40
    stream = torch.frombuffer(bytearray(text), dtype=torch.uint8)
    cut = int(0.9 * len(text))
    return TextSplits(train=stream[:cut], test=stream[cut:], name="tiny", source="test", train_files=1, test_files=1)


class Bigram(nn.Module):
    """A local token model: logits of the next byte from the current one only."""

    def __init__(self, vocab_size: int = 256, width: int = 8) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, width)
        self.head = nn.Linear(width, vocab_size)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(idx))


def test_the_loss_is_next_token_cross_entropy_over_every_position(corpus, tmp_path):
    model = Bigram()
    twin = Bigram()
    twin.load_state_dict(model.state_dict())
    result = train(model, corpus, TINY_GPT, seed=3, device="cpu", run_dir=tmp_path / "run", progress=False,
                   context=CONTEXT, every=1)
    x, y = token_batch(corpus.train, CONTEXT, TINY_GPT.batch_size, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = F.cross_entropy(twin(x).reshape(-1, 256), y.reshape(-1))
    with gs.open_run(tmp_path / "run") as run:
        assert run.metrics()["loss"].iloc[0] == pytest.approx(float(expected), rel=1e-6)
        assert result.steps == 12 and run.steps() == list(range(12))  # an epoch is batches_per_epoch steps


def test_epoch_metrics_are_losses_next_byte_errors_and_bits_per_byte(corpus, tmp_path):
    result = train("token_resmlp", corpus, TINY_GPT, depth=3, width=16, seed=0, device="cpu",
                   run_dir=tmp_path / "run", progress=False, context=CONTEXT)
    last = result.final
    assert last.test_bits_per_byte == pytest.approx(last.test_loss / math.log(2))
    assert last.train_bits_per_byte == pytest.approx(last.train_loss / math.log(2))
    assert last.test_accuracy == pytest.approx(1 - last.test_error)
    with gs.open_run(tmp_path / "run") as run:
        logged = run.metrics().dropna(subset=["epoch"])
        assert list(logged["test_bits_per_byte"]) == pytest.approx([m.test_bits_per_byte for m in result.epochs])
        assert list(logged["train_loss"]) == pytest.approx([m.train_loss for m in result.epochs])
        config = run.config
    assert (config["input_kind"], config["input_shape"], config["context"], config["vocab_size"]) == (
        "tokens", [CONTEXT], CONTEXT, 256)
    assert config["text"]["train_bytes"] == corpus.num_train and config["test_windows"] <= TEST_WINDOWS
    assert (config["family"], config["depth"]) == ("token_resmlp", 3)
    assert config["recipe"]["optimizer"] == "adamw" and config["steps_per_epoch"] == 6
    assert list(result.row()) == ["network", "layers", "parameters", "train_loss", "test_loss",
                                  "test_bits_per_byte", "time_s"]


def test_test_loss_is_measured_on_fixed_windows_of_the_test_split(corpus, tmp_path):
    model = build_for_data("token_resmlp", corpus, context=CONTEXT, depth=3, width=16)
    result = train(model, corpus, TINY_GPT, device="cpu", run_dir=tmp_path / "run", progress=False, context=CONTEXT)
    x, y = fixed_windows(corpus.test, CONTEXT, TEST_WINDOWS)
    with torch.no_grad():
        logits = model(x)
    assert result.final.test_loss == pytest.approx(float(F.cross_entropy(logits.reshape(-1, 256), y.reshape(-1))))
    assert evaluate(model, x, y, batch_size=7) == pytest.approx((result.final.test_loss, result.final.test_error))
    assert model.training


def test_a_token_model_is_built_with_the_context_and_the_corpus_vocabulary(corpus):
    model = build_for_data("token_resmlp", corpus, context=32, depth=3)
    assert model.position.num_embeddings == 32 and model.head.out_features == 256
    assert model.model_info.input_shape == (32,) and model.model_info.input_kind == "tokens"


def test_clipping_happens_after_recording(corpus, tmp_path):
    clipped = replace(TINY_GPT, grad_clip=1e-6, batches_per_epoch=1, epochs=1)
    model = Bigram()
    twin = Bigram()
    twin.load_state_dict(model.state_dict())
    train(model, corpus, clipped, seed=0, device="cpu", run_dir=tmp_path / "run", progress=False, context=CONTEXT)
    x, y = token_batch(corpus.train, CONTEXT, clipped.batch_size, generator=torch.Generator().manual_seed(0))
    F.cross_entropy(twin(x).reshape(-1, 256), y.reshape(-1)).backward()
    unclipped = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in twin.parameters()]))
    with gs.open_run(tmp_path / "run") as run:
        recorded = run.series("grad_norm", level="model").iloc[0, 0]
    assert recorded == pytest.approx(float(unclipped), rel=1e-5) and recorded > 1e-3


def test_a_corpus_shorter_than_the_context_is_a_clear_error(corpus, tmp_path):
    with pytest.raises(ValueError, match="too short"):
        train("token_resmlp", corpus.limited(10), TINY_GPT, depth=3, device="cpu", run_dir=tmp_path / "run",
              progress=False, context=CONTEXT)
    assert not (tmp_path / "run").exists()


def test_pystdlib_trains_a_registered_token_model(tmp_path):
    data = load_dataset("pystdlib", limit=4096)
    result = train("token_resmlp", data, replace(TINY_GPT, epochs=1), depth=3, width=16, device="cpu",
                   run_dir=tmp_path / "run", progress=False, context=CONTEXT)
    assert math.isfinite(result.final.test_loss)
    with gs.open_run(tmp_path / "run") as run:
        assert run.config["text"]["python_version"] and run.config["dataset"] == "pystdlib"


def test_a_short_training_stream_is_caught_before_anything_is_recorded(corpus, tmp_path):
    short = replace(corpus, train=corpus.train[:CONTEXT])
    with pytest.raises(ValueError, match="too short"):
        train("token_resmlp", short, TINY_GPT, depth=3, device="cpu", run_dir=tmp_path / "run", progress=False,
              context=CONTEXT)
    assert not (tmp_path / "run").exists()

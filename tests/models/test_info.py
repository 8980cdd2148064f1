"""sample_input / input_spec: the one way gradsight draws an input for a model, from the registry
first, then what the caller passes, else a clear error naming what to pass."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gradsight.cli import UserError
from gradsight.cli._args import resolve_input
from gradsight.models import (
    InputSpec,
    UnknownInputError,
    create_model,
    info_of,
    input_spec,
    list_models,
    model_info,
    sample_input,
)


@pytest.mark.parametrize(
    "name, kwargs, shape, dtype",
    [
        ("resnet20", {"in_channels": 1}, (1, 32, 32), torch.float32),  # image
        ("mlp", {"in_features": 12}, (12,), torch.float32),  # vector
        ("token_resmlp", {"vocab_size": 7}, (16,), torch.long),  # tokens
    ],
    ids=["image", "vector", "tokens"],
)
def test_sample_input_follows_the_registry(name: str, kwargs: dict, shape: tuple, dtype: torch.dtype) -> None:
    model = create_model(name, **kwargs)
    x = sample_input(model, 3, seed=0)
    assert x.shape == (3, *shape) and x.dtype == dtype
    if dtype == torch.long:
        assert 0 <= int(x.min()) and int(x.max()) < 7
    # a model, its ModelInfo and ModelInfo.example_input draw the same batch
    assert torch.equal(sample_input(info_of(model), 3, seed=0), x)
    assert torch.equal(model.model_info.example_input(3, generator=torch.Generator().manual_seed(0)), x)


@pytest.mark.parametrize("name", list_models())
def test_every_registered_model_has_a_sample_input_the_cli_draws_alike(name: str) -> None:
    info = model_info(name)
    spec = input_spec(info)
    assert spec.shape == info.input_shape and spec.dtype == info.input_dtype and spec.vocab_size == info.vocab_size
    assert resolve_input(info, None) == spec  # the command line resolves by the same rule


def test_the_values_are_those_of_one_seeded_draw_on_the_cpu() -> None:
    """What gs.probe, gs.path_lengths, the check-up and the CLI drew before there was one function."""
    x = sample_input(None, 4, input_shape=(3, 5), generator=torch.Generator().manual_seed(7))
    assert torch.equal(x, torch.randn((4, 3, 5), generator=torch.Generator().manual_seed(7)))
    ids = sample_input(None, 4, input_shape=(6,), input_dtype="long", vocab_size=9, seed=7)
    assert torch.equal(ids, torch.randint(0, 9, (4, 6), generator=torch.Generator().manual_seed(7)))


def test_what_the_caller_passes_wins_over_the_registry() -> None:
    model = create_model("token_resmlp")
    assert sample_input(model, 2, input_shape=(5,)).shape == (2, 5)  # still token ids of the registry
    assert sample_input(model, 2, input_shape=(5,)).dtype == torch.long
    assert int(sample_input(model, 50, vocab_size=3).max()) < 3
    assert sample_input(model, 2, input_dtype="float").dtype == torch.float32
    assert sample_input(create_model("mlp"), 2, input_shape=(1, 28, 28)).shape == (2, 1, 28, 28)
    assert sample_input(nn.Linear(4, 2), 2, input_shape=(4,), input_dtype=torch.float64).dtype == torch.float64


def test_a_model_from_elsewhere_needs_input_shape() -> None:
    with pytest.raises(UnknownInputError, match=r"input of Linear is not known .*pass input_shape=") as raised:
        sample_input(nn.Linear(4, 2), 2)
    assert raised.value.missing == "input_shape" and isinstance(raised.value, ValueError)
    assert sample_input(nn.Linear(4, 2), 2, input_shape=(4,)).shape == (2, 4)


def test_token_ids_need_a_vocabulary() -> None:
    with pytest.raises(UnknownInputError, match="pass vocab_size=") as raised:
        input_spec(nn.Embedding(5, 2), input_shape=(3,), input_dtype="long")
    assert raised.value.missing == "vocab_size"
    with pytest.raises(ValueError, match="input_dtype must be"):
        input_spec(None, input_shape=(3,), input_dtype=torch.bool)


def test_seed_or_generator_not_both() -> None:
    with pytest.raises(ValueError, match="not both"):
        sample_input(None, 2, input_shape=(3,), seed=0, generator=torch.Generator())
    assert torch.equal(sample_input(None, 2, input_shape=(3,), seed=1), sample_input(None, 2, input_shape=(3,), seed=1))


def test_the_batch_goes_to_the_models_device() -> None:
    model = nn.Linear(3, 2, device="meta")
    assert sample_input(model, 2, input_shape=(3,)).device.type == "meta"
    assert sample_input(model, 2, input_shape=(3,), device="cpu").device.type == "cpu"


def test_a_batch_too_large_for_memory_is_a_memory_error() -> None:
    with pytest.raises(MemoryError, match=r"input batch of shape \(1048576, 16777216\)"):
        InputSpec((1 << 24,), torch.float32).batch(1 << 20)


def test_the_command_line_names_its_options() -> None:
    with pytest.raises(UserError, match="give --input-shape"):
        resolve_input(None, None)
    with pytest.raises(UserError, match="give --vocab-size N"):
        resolve_input(None, "6", "long")
    assert resolve_input(None, "2x3", "long", 5) == InputSpec((2, 3), torch.long, 5)


# -- every caller draws through it -------------------------------------------------------------
def test_probe_paths_graph_and_the_check_up_need_input_shape_for_a_model_from_elsewhere() -> None:
    from gradsight.compgraph import trace_inputs_for
    from gradsight.diagnosis.checkup import checkup
    from gradsight.probes.paths import path_lengths
    from gradsight.probes.probe import probe

    model = nn.Linear(4, 2)
    for call in (lambda: probe(model), lambda: path_lengths(model), lambda: trace_inputs_for(model),
                 lambda: checkup(model, steps=1)):
        with pytest.raises(UnknownInputError, match="pass input_shape="):
            call()


class HasInputShape(nn.Module):
    """A model from elsewhere with an ``input_shape`` attribute of its own."""

    input_shape = (4,)

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


def test_the_check_up_no_longer_guesses_a_model_input_shape_attribute() -> None:
    """checkup used to read ``model.input_shape``, an attribute no model has; what a model takes
    comes from the registry or the caller, as everywhere else."""
    from gradsight.diagnosis.checkup import checkup

    with pytest.raises(UnknownInputError, match="pass input_shape="):
        checkup(HasInputShape(), steps=1)
    findings = checkup(HasInputShape(), input_shape=(4,), steps=1, batch_size=4)
    assert isinstance(findings, list)


def test_the_check_up_of_a_registered_model_takes_the_registry_input() -> None:
    """Without inputs or input_shape a registered model is checked on its own input: token ids
    for a language model (the check-up used to need input_shape and drew floats, which an
    embedding rejects)."""
    from gradsight.diagnosis.checkup import checkup

    torch.manual_seed(0)
    findings = checkup(create_model("token_resmlp", width=8, context=8), steps=1, batch_size=4)
    assert isinstance(findings, list)
    findings = checkup(create_model("mlp", depth=4, width=8, in_features=6), steps=1, batch_size=4)
    assert isinstance(findings, list)

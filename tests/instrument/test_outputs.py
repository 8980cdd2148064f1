"""main_output: the one rule for the main tensor of a model's output (tensor, tuple, dict, HF output)."""

from __future__ import annotations

from collections import OrderedDict, namedtuple
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from gradsight.instrument.outputs import main_output

LOGITS = torch.randn(2, 3)
HIDDEN = torch.randn(2, 4)
LOSS = torch.tensor(1.5)
IDS = torch.tensor([1, 2])


@pytest.mark.parametrize(
    "output, expected",
    [
        (LOGITS, LOGITS),
        ((LOGITS, HIDDEN), LOGITS),
        ([HIDDEN, LOGITS], HIDDEN),
        ((IDS, LOGITS), LOGITS),  # integer tensors are skipped
        ((None, (HIDDEN, LOGITS)), HIDDEN),  # depth first
        ({"hidden": HIDDEN, "out": LOGITS}, HIDDEN),  # a mapping: its values, in order
        ({"loss": LOSS, "logits": LOGITS}, LOGITS),  # logits win over a loss that comes first
        (OrderedDict(loss=LOSS, logits=LOGITS), LOGITS),
        ({"logits": IDS, "scores": LOGITS}, LOGITS),  # integer "logits" are not the logits
        (namedtuple("Out", "loss logits")(LOSS, LOGITS), LOGITS),
        (SimpleNamespace(loss=LOSS, logits=LOGITS), LOGITS),
    ],
    ids=["tensor", "tuple", "list", "ids_first", "nested", "dict", "dict_logits", "ordered_dict_logits",
         "integer_logits", "namedtuple_logits", "object_with_logits"],
)
def test_the_main_output_of_each_kind_of_output(output: object, expected: torch.Tensor) -> None:
    assert main_output(output) is expected


@pytest.mark.parametrize("output", [IDS, None, 3.0, (), {}, (IDS, None), SimpleNamespace(loss=LOSS)],
                         ids=["ids", "none", "number", "empty_tuple", "empty_dict", "no_float", "object"])
def test_outputs_without_a_floating_point_tensor_have_none(output: object) -> None:
    assert main_output(output) is None


def test_hugging_face_outputs() -> None:
    modeling_outputs = pytest.importorskip("transformers.modeling_outputs")
    with_loss = modeling_outputs.CausalLMOutputWithPast(loss=LOSS, logits=LOGITS)
    assert main_output(with_loss) is LOGITS
    assert main_output(with_loss.to_tuple()) is LOSS  # a tuple has no names: its first tensor
    assert main_output(modeling_outputs.BaseModelOutput(last_hidden_state=HIDDEN)) is HIDDEN


class DictModel(nn.Module):
    """A model returning a loss before its logits, as a Hugging Face model given labels does."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = self.fc(x)
        return {"loss": logits.square().mean(), "logits": logits}


def test_probe_and_the_check_up_take_the_logits_of_a_dict_output() -> None:
    from gradsight.diagnosis.checkup import checkup
    from gradsight.probes.probe import probe

    table = probe(DictModel(), input_shape=(4,), batch_size=8)
    assert table.set_index("name").loc["fc", "out_grad_norm"] > 0
    findings = checkup(DictModel(), input_shape=(4,), steps=1, batch_size=8)
    assert isinstance(findings, list)

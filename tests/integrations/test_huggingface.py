"""``GradFlowCallback`` in a real ``transformers.Trainer``, on a tiny GPT-2 built from a
local config with random weights (nothing is downloaded)."""

from __future__ import annotations

import math

import pytest
import torch

import gradsight as gs
from tests.instrument.reference import assert_matches, reference

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from gradsight.integrations.huggingface import GradFlowCallback  # noqa: E402

ACCUMULATE = 2
STEPS = 3


class Tokens(torch.utils.data.Dataset):
    def __init__(self, n: int = 16, length: int = 8, vocab: int = 50) -> None:
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(0, vocab, (n, length), generator=g)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


class Reference(transformers.TrainerCallback):
    """Slow reference statistics at the same point, after the callback under test."""

    def __init__(self) -> None:
        self.refs: dict[int, dict] = {}

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.refs[state.global_step] = reference(model)


class ScaledLoss(transformers.Trainer):
    """A Trainer whose loss is multiplied by ``loss_scale`` (to make gradients large)."""

    def __init__(self, *args, loss_scale: float = 1.0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.loss_scale = loss_scale

    def compute_loss(self, model, inputs, return_outputs=False, **kwargs):
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, **kwargs)
        return (self.loss_scale * loss, outputs) if return_outputs else self.loss_scale * loss


def _trainer(tmp_path, max_grad_norm: float, report_to: list[str], loss_scale: float = 1.0):
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=50, n_positions=16, n_embd=16, n_layer=2, n_head=2)
    model = transformers.GPT2LMHeadModel(config)
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "out"), max_steps=STEPS, per_device_train_batch_size=4,
        gradient_accumulation_steps=ACCUMULATE, learning_rate=1e-2, max_grad_norm=max_grad_norm,
        logging_steps=1, report_to=report_to, save_strategy="no", use_cpu=True, disable_tqdm=True,
        dataloader_num_workers=0, seed=0,
    )
    return ScaledLoss(model=model, args=args, train_dataset=Tokens(), loss_scale=loss_scale)


def test_records_each_optimizer_step_and_logs_to_the_reporters(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing import event_accumulator

    trainer = _trainer(tmp_path, max_grad_norm=0.0, report_to=["tensorboard"])
    callback = GradFlowCallback.attach(trainer, tmp_path / "run", backend="eager")
    ref = Reference()
    trainer.add_callback(ref)
    trainer.train()

    run = gs.open_run(tmp_path / "run")
    assert run.status == "finished"
    assert run.steps() == list(range(STEPS))
    assert run.series("grad_not_zeroed", level="model").iloc[:, 0].to_dict() == {s: 0.0 for s in range(1, STEPS)}
    frame = run.frame()
    assert set(ref.refs) == set(range(STEPS))
    for step, want in ref.refs.items():
        assert_matches(frame, want, step=step)
    assert "transformer.wte.weight" in set(frame.name)  # tied to lm_head: recorded once
    assert "lm_head.weight" not in set(frame.name)
    assert run.config["huggingface"]["gradient_accumulation_steps"] == ACCUMULATE
    # the Trainer's own grad_norm (unclipped here) equals the recorded model grad_norm
    model = frame[(frame.level == "model") & (frame.stat == "grad_norm")].set_index("step").value
    logged = run.metrics()["grad_norm"]
    for step in range(STEPS):
        assert math.isclose(logged[step], model[step], rel_tol=1e-5)
    # and the statistics reached TensorBoard through the Trainer's report_to callback
    [events] = {p.parent for p in (tmp_path / "out").rglob("events.out.tfevents.*")}
    acc = event_accumulator.EventAccumulator(str(events), size_guidance={event_accumulator.SCALARS: 0})
    acc.Reload()
    board = {e.step: e.value for e in acc.Scalars("train/gradsight/model/grad_norm")}
    assert sorted(board) == [1, 2, 3]  # the Trainer logs after the step, at global_step
    for step in range(STEPS):
        assert math.isclose(board[step + 1], model[step], rel_tol=1e-6)
    assert callback.monitor.closed


class PreClipReference:
    """Slow reference statistics taken inside the trainer's ``clip_grad_norm_``, before clipping."""

    def __init__(self, trainer) -> None:
        self.refs: dict[int, dict] = {}
        clip = trainer.accelerator.clip_grad_norm_

        def clip_grad_norm_(*args, **kwargs):
            self.refs[trainer.state.global_step] = reference(trainer.model)
            return clip(*args, **kwargs)

        trainer.accelerator.clip_grad_norm_ = clip_grad_norm_
        self.wrapper = clip_grad_norm_


def test_attached_with_clipping_it_records_the_gradients_before_clipping(tmp_path):
    """``max_grad_norm=1.0`` (the Trainer's default) with gradients far larger: the
    recorded statistics are the pre-clip ones, equal to a reference taken just before
    the clip and to the ``grad_norm`` the Trainer logs; ``config["grad_clip"]`` says so."""
    trainer = _trainer(tmp_path, max_grad_norm=1.0, report_to=[], loss_scale=100.0)
    ref = PreClipReference(trainer)
    GradFlowCallback.attach(trainer, tmp_path / "run", backend="eager", log_levels=())
    clipped = Reference()
    trainer.add_callback(clipped)
    trainer.train()

    run = gs.open_run(tmp_path / "run")
    assert run.config["grad_clip"] == {"post_clip": False, "max_norm": 1.0}
    frame = run.frame()
    assert set(ref.refs) == set(range(STEPS))
    for step, want in ref.refs.items():
        assert_matches(frame, want, step=step)
    model = run.frame(level="model", stat="grad_norm").set_index("step").value
    logged = run.metrics()["grad_norm"]
    for step in range(STEPS):
        assert model[step] > 10
        assert math.isclose(logged[step], model[step], rel_tol=1e-5)
        assert math.isclose(clipped.refs[step][("model", "")]["grad_norm"], 1.0, rel_tol=1e-4)  # what was applied
    assert trainer.accelerator.clip_grad_norm_ is ref.wrapper  # the callback's wrapper is gone


def test_passed_as_a_callback_with_clipping_it_records_clipped_gradients_and_says_so(tmp_path, caplog):
    trainer = _trainer(tmp_path, max_grad_norm=1e-3, report_to=[])
    trainer.add_callback(GradFlowCallback(tmp_path / "run", backend="eager", log_levels=()))
    with caplog.at_level("WARNING", logger="gradsight.integrations.huggingface"):
        trainer.train()
    assert "GradFlowCallback.attach(trainer)" in caplog.text
    run = gs.open_run(tmp_path / "run")
    frame = run.frame(level="model", stat="grad_norm").set_index("step").value
    pre_clip = run.metrics()["grad_norm"]
    assert run.config["huggingface"]["max_grad_norm"] == 1e-3
    assert run.config["grad_clip"] == {"post_clip": True, "max_norm": 1e-3}
    for step in range(STEPS):
        assert math.isclose(frame[step], 1e-3, rel_tol=1e-3)
        assert pre_clip[step] > 10 * frame[step]


def test_without_clipping_grad_clip_says_none(tmp_path):
    trainer = _trainer(tmp_path, max_grad_norm=0.0, report_to=[])
    GradFlowCallback.attach(trainer, tmp_path / "run", backend="eager", log_levels=())
    trainer.train()
    run = gs.open_run(tmp_path / "run")
    assert run.config["grad_clip"] == {"post_clip": False, "max_norm": None}
    assert run.steps() == list(range(STEPS))
    assert "clip_grad_norm_" not in vars(trainer.accelerator)


def test_histograms_are_passed_to_the_monitor(tmp_path):
    trainer = _trainer(tmp_path, max_grad_norm=0.0, report_to=[])
    GradFlowCallback.attach(trainer, tmp_path / "run", backend="eager", histograms=2)
    trainer.train()
    run = gs.open_run(tmp_path / "run")
    assert sorted(set(run.histograms(level="model").step)) == [0, 2]
    assert set(run.frame(level="model", stat="fp16_underflow").step) == {0, 2}


def test_options_taken_from_the_trainer_or_not_of_gs_watch_are_refused_when_the_callback_is_made():
    with pytest.raises(TypeError, match="takes optimizer from the Trainer"):
        GradFlowCallback(optimizer=object())
    with pytest.raises(TypeError, match="unexpected keyword argument 'histogram'"):
        GradFlowCallback(histogram=2)


def test_noise_scale_and_adam_state_through_the_callback(tmp_path):
    """The Trainer's accumulated micro-batches give the noise scale; its AdamW's state (inside
    accelerate's wrapper) is read after each measured step (float64 recomputation of the last)."""
    from tests.instrument.test_optimizer_state import _reference

    trainer = _trainer(tmp_path, max_grad_norm=0.0, report_to=[])
    GradFlowCallback.attach(trainer, tmp_path / "run", backend="eager", log_levels=(), update_ratio=True,
                            noise_scale=4)
    trainer.train()
    run = gs.open_run(tmp_path / "run")
    assert list(run.series("gns_batch", "model").iloc[:, 0]) == [ACCUMULATE * 4] * STEPS
    optimizer = getattr(trainer.optimizer, "optimizer", trainer.optimizer)
    name_of = {id(p): n for n, p in trainer.model.named_parameters()}
    names = [name_of[id(p)] for group in optimizer.param_groups for p in group["params"]]
    want = _reference(optimizer.state_dict(), names)[("model", "")]
    # the step's learning rate, not the state dict's after the scheduler: linear decay to 0 at max_steps
    want["adam_step_rms"] = want["adam_update_rms"] * 1e-2 * (1 - (STEPS - 1) / STEPS)
    model = run.frame(level="model")
    for stat, value in want.items():
        got = model[(model.step == STEPS - 1) & (model.stat == stat)].value.item()
        assert got == pytest.approx(value, rel=1e-5, abs=1e-12), stat

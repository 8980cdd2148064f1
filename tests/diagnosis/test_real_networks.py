"""The doctor on networks from outside the zoo, and the bugs it had on them.

Each regression test is named for the bug it pins: a crash on a zero-initialized head,
dead units that were zero elements (embeddings, padded convolutions), a forward rule
comparing the embedding with the logits, update ratios of zero-started tensors, and a
recorded plain-56 run judged healthy while the model check flagged it.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import gradsight as gs
from gradsight.cli import main
from gradsight.diagnosis import checkup

torchvision = pytest.importorskip("torchvision")

VIT_ARGS = dict(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64, num_classes=10)


def codes(findings, at_least="info"):
    return {f.code for f in findings if f.severity >= at_least}


def small_vit() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.VisionTransformer(**VIT_ARGS)


def record(model, run_dir, batch, loss_fn, *, steps=4, lr=1e-3, activations=True, config=None):
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    with gs.watch(model, run_dir, optimizer=opt, activations=activations, config=config) as mon:
        for _ in range(steps):
            x, y = batch()
            loss = loss_fn(model(x), y)
            loss.backward()
            mon.step(loss)
            opt.step()
            opt.zero_grad()
    return run_dir


def images(n=8, size=32, channels=3, classes=10):
    gen = torch.Generator().manual_seed(1)
    return lambda: (torch.randn(n, channels, size, size, generator=gen), torch.randint(0, classes, (n,), generator=gen))


# -- never crash on a healthy model -----------------------------------------------------------


def test_zero_division_on_vit_zero_initialized_head_assert_healthy():
    x, y = images()()
    findings = gs.assert_healthy(small_vit(), x, nn.functional.cross_entropy, y)
    assert "rule_failed" not in codes(findings)
    assert not codes(findings, "warning"), gs.format_findings(findings)


def test_zero_division_on_vit_zero_initialized_head_doctor_spec(capsys):
    args = [f"--arg={k}={v}" for k, v in VIT_ARGS.items()]
    status = main(["doctor", "torchvision.models:VisionTransformer", *args, "--input-shape", "3,32,32",
                   "--steps", "3", "--batch-size", "8"])
    captured = capsys.readouterr()
    assert status == 0, captured.out + captured.err
    assert "Traceback" not in captured.err and "rule_failed" not in captured.out


def test_zero_division_on_vit_zero_initialized_head_recorded_run_with_activations(tmp_path):
    run = record(small_vit(), tmp_path / "vit", images(), nn.functional.cross_entropy, steps=6)
    findings = gs.diagnose(run)
    assert "rule_failed" not in codes(findings)
    # the head and class token start at zero: infinite first update ratios, then ~1/k
    assert not codes(findings, "warning"), gs.format_findings(findings)


def test_all_zero_gradients_are_judged_without_raising(tmp_path):
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))
    with gs.watch(model, tmp_path / "run", activations=True) as mon:
        for _ in range(2):
            (model(torch.randn(5, 4)) * 0.0).sum().backward()  # every gradient and output gradient is zero
            mon.step()
            model.zero_grad()
    assert "rule_failed" not in codes(gs.diagnose(tmp_path / "run"))


def test_a_failing_rule_is_a_finding_and_doctor_exits_by_severity(tmp_path, monkeypatch, capsys):
    import gradsight.diagnosis as diagnosis

    def broken(data, th):
        raise ZeroDivisionError("float division by zero")

    monkeypatch.setattr(diagnosis, "RULES", (broken, *diagnosis.RULES))
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    with gs.watch(model, tmp_path / "run") as mon:
        model(torch.randn(6, 3)).sum().backward()
        mon.step()
    (f,) = [f for f in gs.diagnose(tmp_path / "run") if f.code == "rule_failed"]
    assert f.severity == "warning" and "'broken'" in f.message and "ZeroDivisionError" in f.message
    assert main(["doctor", str(tmp_path / "run")]) == 0  # a warning, not an error
    assert main(["doctor", str(tmp_path / "run"), "--fail-on", "warning"]) == 1
    assert "Traceback" not in capsys.readouterr().err


def test_doctor_on_a_model_that_rejects_its_input_exits_2(capsys):
    assert main(["doctor", "torch.nn:Linear", "--arg", "in_features=3", "--arg", "out_features=2",
                 "--input-shape", "5", "--steps", "1"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.splitlines()[-1].startswith("gradsight: error: the model does not train")


# -- dead units are units ------------------------------------------------------------------------


class TokenNet(nn.Module):
    def __init__(self, vocab=50):
        super().__init__()
        self.emb = nn.Embedding(vocab, 16)
        self.fc = nn.Linear(16, 16)
        self.out = nn.Linear(16, vocab)

    def forward(self, tokens):
        return self.out(torch.relu(self.fc(self.emb(tokens))))


def test_dead_units_fired_on_embedding_rows_of_unseen_tokens(tmp_path):
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)

    def batch():
        t = torch.randint(0, 10, (4, 6), generator=gen)  # 40 of 50 tokens never appear
        return t, t

    ce = lambda out, y: nn.functional.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))  # noqa: E731
    findings = gs.diagnose(record(TokenNet(), tmp_path / "run", batch, ce))
    assert "dead_units" not in codes(findings), gs.format_findings(findings)


def test_dead_units_fired_on_padded_convolutions_over_small_maps(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Tanh(), nn.Conv2d(8, 8, 3, padding=1), nn.Tanh(),
                          nn.Conv2d(8, 8, 3, padding=1), nn.Flatten(), nn.Linear(8, 10))
    run = record(model, tmp_path / "run", images(size=1), nn.functional.cross_entropy)
    with gs.open_run(run) as r:
        assert (r.series("grad_zero_frac", "param")["2.weight"] >= 8 / 9).all()  # 1x1 maps: 8 of 9 taps see padding
    findings = gs.diagnose(run)
    assert "dead_units" not in codes(findings), gs.format_findings(findings)


def test_dead_relu_units_and_unused_outputs_get_their_own_advice(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 6))
    with torch.no_grad():
        model[2].bias[:12] = -100.0  # 12 of 32 units never fire
    gen = torch.Generator().manual_seed(0)

    def batch():
        return torch.randn(16, 8, generator=gen), torch.randint(0, 4, (16,), generator=gen)

    def loss(out, y):
        return nn.functional.cross_entropy(out[:, :4], y)  # outputs 4 and 5 are never used

    findings = gs.diagnose(record(model, tmp_path / "run", batch, loss, steps=10))
    # some silent units of a hidden layer are an info (stock squeeze-excite layers leave most of theirs
    # silent on random data); unused outputs of the last layer a warning
    (units,) = [f for f in findings if f.code == "silent_units"]
    (outputs,) = [f for f in findings if f.code == "dead_units"]
    assert units.severity == "info" and units.layers == ["2"] and units.measured["2"] >= 12 / 32
    assert "never uses" in outputs.message and outputs.layers == ["4"]
    assert outputs.measured["4"] == pytest.approx(2 / 6)


def test_a_layer_whose_output_never_reaches_the_loss_is_told_from_silent_units(tmp_path):
    class Gated(nn.Module):  # a parallel branch multiplied by zero: its layers get exactly zero gradient
        def __init__(self):
            super().__init__()
            self.inp, self.main = nn.Linear(8, 16), nn.Linear(16, 16)
            self.side = nn.Sequential(nn.Linear(16, 16), nn.GELU(), nn.Linear(16, 16))
            self.out = nn.Linear(16, 4)

        def forward(self, x):
            h = self.inp(x)
            return self.out(h + self.main(h) + 0.0 * self.side(h))

    torch.manual_seed(0)
    model = Gated()
    gen = torch.Generator().manual_seed(0)

    def batch():
        return torch.randn(16, 8, generator=gen), torch.randint(0, 4, (16,), generator=gen)

    findings = gs.diagnose(record(model, tmp_path / "run", batch, nn.functional.cross_entropy, steps=10))
    with gs.open_run(tmp_path / "run") as r:  # the reference: autograd's own zero gradients
        assert (r.series("grad_norm", "layer")[["side.0", "side.2"]] == 0).all().all()
    (units,) = [f for f in findings if f.code == "silent_units"]
    assert set(units.layers) == {"side.0", "side.2"}
    assert "never reaches the loss" in units.message and "activation is zero" not in units.message


# -- forward signal: like with like --------------------------------------------------------------


@pytest.mark.parametrize("n_layer", [2, 4])
def test_exploding_forward_on_stock_pre_ln_gpt2(tmp_path, n_layer):
    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=n_layer, n_embd=32, n_head=2, vocab_size=100, n_positions=32)
    model = transformers.GPT2LMHeadModel(cfg)
    gen = torch.Generator().manual_seed(0)

    def batch():
        t = torch.randint(0, 100, (8, 16), generator=gen)
        return t, t

    def loss(out, y):
        return nn.functional.cross_entropy(out.logits[:, :-1].reshape(-1, 100), y[:, 1:].reshape(-1))

    findings = gs.diagnose(record(model, tmp_path / "run", batch, loss))
    assert not codes(findings, "warning"), gs.format_findings(findings)


def test_a_stream_starting_below_its_norms_eps_is_no_exploding_forward(tmp_path):
    """Stock MobileViT (xx-small widths): each stage's convolutions hand its transformer a
    stream of variance 1e-11..1e-7, below LayerNorm's eps (1e-5), so the first layer's
    ``layernorm_before`` outputs 0.1-0.4 where its gain and the next layers' give 1, and the
    stream then grows by additions, not by anything multiplying it. Those first layers are
    left out of the forward profile (the warning went away), and every one left out is one
    whose norm input, measured with a float64 hook at the first step, is below eps / 3."""
    transformers = pytest.importorskip("transformers")
    from gradsight.diagnosis.rules import _table, eps_bound_instances
    from gradsight.store.view import Level, RunView

    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    cfg = transformers.MobileViTConfig(image_size=64, num_labels=10, hidden_sizes=[64, 80, 96],
                                       neck_hidden_sizes=[16, 16, 24, 48, 64, 80, 320])
    model = transformers.MobileViTForImageClassification(cfg)
    variance: dict[str, float] = {}

    def keep(name):
        def hook(_module, args):
            variance.setdefault(name, float(args[0].double().var(-1, unbiased=False).mean()))
        return hook

    for name, module in model.named_modules():
        if name.endswith("layernorm_before"):
            module.register_forward_pre_hook(keep(name.removesuffix(".layernorm_before")))
    run = record(model, tmp_path / "run", images(8, 64), lambda out, y: nn.functional.cross_entropy(out.logits, y),
                 steps=5)
    with RunView(run) as view:
        bound = eps_bound_instances(view, _table(view, Level.MODULE, "act_rms"))
    assert bound == {f"mobilevit.encoder.layer.{i}.transformer.layer.0" for i in (2, 3, 4)}
    eps = cfg.layer_norm_eps
    assert all(variance[b] < eps / 3 for b in bound)
    assert all(v > eps for b, v in variance.items() if b.endswith(("layer.1", "layer.2", "layer.3"))
               and "layer.2.transformer" not in b)  # the 2-layer stage's second layer is below eps too
    findings = gs.diagnose(run)
    assert "exploding_forward" not in codes(findings), gs.format_findings(findings)


class _OneFeature(nn.Module):
    """A pre-norm MLP block over tokens of one feature (timm's CSATv2 runs a transformer
    block on one channel): ``x + fc2(relu(fc1(LayerNorm(1)(x))))``."""

    def __init__(self) -> None:
        super().__init__()
        self.norm, self.fc1, self.fc2 = nn.LayerNorm(1), nn.Linear(1, 4), nn.Linear(4, 1)

    def forward(self, x):
        return x + self.fc2(torch.relu(self.fc1(self.norm(x))))


def test_an_idle_branch_behind_a_norm_over_one_feature_names_it(tmp_path):
    """A LayerNorm over one value outputs its bias whatever the value (autograd, float64:
    its input gradient is exactly 0), so the branch behind it passes nothing back; the
    idle-branch finding names the norm as the cause (judged here with a share threshold
    the blocks' float32 rounding, 2e-6, stays under)."""
    from gradsight.diagnosis import Thresholds

    x = torch.randn(5, 1, dtype=torch.float64, requires_grad=True)
    norm = nn.LayerNorm(1).double()
    (grad,) = torch.autograd.grad((norm(x) * torch.randn(5, 1, dtype=torch.float64)).sum(), x)
    assert (grad == 0).all()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.Unflatten(1, (16, 1)), *[_OneFeature() for _ in range(3)],
                          nn.Flatten(), nn.Linear(16, 10))
    gen = torch.Generator().manual_seed(0)
    run = record(model, tmp_path / "run", lambda: (torch.randn(32, 4, generator=gen),
                                                   torch.randint(0, 10, (32,), generator=gen)),
                 nn.functional.cross_entropy, steps=12)
    (f,) = [f for f in gs.diagnose(run, Thresholds(branch_share_low=1e-4)) if f.code == "idle_branch"]
    assert "'2.norm' and 2 more normalize a single feature" in f.message


# -- gradient scale from parameter gradients: the run and the model check agree ----------------------


def test_recorded_plain56_run_and_its_model_check_agree(tmp_path):
    """Plain-56 (batch-normed) grows its parameter gradients about 1e3x toward the input under
    Adam, measured like with like (a stage's blocks against each other, never the stem against
    the head), below the exploding threshold that healthy MobileOne-S0 set (4.3e3); its whole
    gradient is beyond the healthy size, and the finding says both. The recorded run and the
    model check say the same."""
    from gradsight.diagnosis.rules import depth_profiles
    from gradsight.store.view import RunView

    torch.manual_seed(0)
    model = gs.models.create_model("plain56", in_channels=1)
    run = record(model, tmp_path / "run", images(16, 28, 1), nn.functional.cross_entropy, steps=3, activations=False)
    with RunView(run) as view:
        (profile,) = depth_profiles(view)
    assert 1e2 < 10 ** profile.median < gs.Thresholds().explode_ratio
    first, last = profile.ends
    assert first.startswith("stage") and first.split(".")[0] == last.split(".")[0]
    recorded = codes(gs.diagnose(run), "warning")
    torch.manual_seed(0)
    checked = codes(checkup(gs.models.create_model("plain56", in_channels=1), input_shape=(1, 28, 28), steps=3,
                            batch_size=16), "warning")
    assert "exploding_gradients" in recorded and "exploding_gradients" in checked
    # flagged by its size (||g||/||w|| about 68 against the healthy 17 at most), with the growth said
    (f,) = [f for f in gs.diagnose(run) if f.code == "exploding_gradients"]
    assert f.measured["grad_over_weight"] > gs.Thresholds().grad_size_high
    assert f.measured["first_over_last"] == pytest.approx(10 ** profile.median)
    assert "residual connections" in f.message


# -- clipped gradients -------------------------------------------------------------------------------


def test_post_clip_runs_say_so_and_skip_growth_rules(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
    clip = {"post_clip": True, "max_norm": 1.0}
    with gs.watch(model, tmp_path / "run", config={"grad_clip": clip}) as mon:
        for i in range(12):
            (model(torch.randn(6, 4)) * 10.0 ** (i // 3)).pow(2).mean().backward()  # a growing gradient
            mon.step()
            model.zero_grad()
    found = {f.code: f for f in gs.diagnose(tmp_path / "run")}
    assert found["clipped_gradients"].severity == "info" and "max_norm=1" in found["clipped_gradients"].message
    assert "growing_gradient_norm" not in found

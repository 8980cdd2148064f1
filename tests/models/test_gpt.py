"""The GPT family: shapes, causality, equal parameters, what each layout computes, init, tying."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import gradsight as gs
from gradsight.instrument import monitor
from gradsight.models import GPTConfig, create_model, model_info
from gradsight.models.gpt import CausalSelfAttention, NoSkipBlock, PostLNBlock, PreLNBlock
from gradsight.probes.paths import find_residual_blocks

from .helpers import count_parameters

GPTS = ["gpt_preln", "gpt_postln", "gpt_noskip"]
SMALL = {"depth": 2, "width": 16, "heads": 2, "context": 12, "vocab_size": 23}


def _ids(batch: int = 2, length: int = SMALL["context"], vocab: int = SMALL["vocab_size"]) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, length))


def _record_one_step(model: nn.Module, ids: torch.Tensor, run_dir: Path, **options) -> None:
    """One next-token backward pass on ``ids``, recorded into ``run_dir``."""
    with monitor.watch(model, run_dir=run_dir, **options) as mon:
        F.cross_entropy(model(ids).flatten(0, 1), ids.flatten()).backward()
        mon.step()


@pytest.mark.parametrize("name", GPTS)
def test_logits_have_one_row_per_position_and_token(name: str) -> None:
    model = create_model(name, **SMALL)
    for length in (1, 5, SMALL["context"]):
        assert model(_ids(3, length)).shape == (3, length, SMALL["vocab_size"])
    with pytest.raises(ValueError, match="longer than the context"):
        model(_ids(1, SMALL["context"] + 1))


@pytest.mark.parametrize("name", GPTS)
def test_registration_says_family_depth_and_input(name: str) -> None:
    info = model_info(name, depth=3, vocab_size=50)
    assert (info.family, info.depth, info.input_kind, info.input_shape, info.vocab_size) == (
        name, 3, "tokens", (64,), 50)  # fmt: skip
    assert model_info(name).depth == len(create_model(name).transformer.h) == 6
    with pytest.raises(ValueError, match="transformer blocks"):
        model_info(name, depth=0)


def test_bad_keywords_are_refused() -> None:
    with pytest.raises(ValueError, match="heads must divide width"):
        create_model("gpt_preln", width=10, heads=4)
    with pytest.raises(ValueError, match="width must be a positive integer"):
        create_model("gpt_preln", width=0)
    with pytest.raises(TypeError):
        create_model("gpt_preln", n_embd=32)
    with pytest.raises(TypeError):
        create_model("gpt_preln", layout="postln")


@pytest.mark.parametrize("name", GPTS)
def test_output_at_position_t_does_not_depend_on_later_tokens(name: str) -> None:
    model = create_model(name, **SMALL).eval()
    ids = _ids()
    with torch.no_grad():
        reference = model(ids)
        for t in range(SMALL["context"] - 1):
            changed = ids.clone()
            changed[:, t + 1 :] = (changed[:, t + 1 :] + 1) % SMALL["vocab_size"]
            logits = model(changed)
            torch.testing.assert_close(logits[:, : t + 1], reference[:, : t + 1], rtol=0, atol=1e-6)
            assert not torch.allclose(logits[:, t + 1 :], reference[:, t + 1 :])


def test_attention_is_a_masked_softmax_over_earlier_positions() -> None:
    """Reference: for each head, softmax(q k^T / sqrt(d) + causal mask) v, one position at a time."""
    config = GPTConfig(width=12, heads=3)
    attn = CausalSelfAttention(config)
    x = torch.randn(2, 7, 12)
    q, k, v = attn.c_attn(x).split(12, dim=2)
    head_dim = 12 // 3
    y = torch.zeros_like(x)
    for h in range(3):
        cols = slice(h * head_dim, (h + 1) * head_dim)
        for t in range(7):
            scores = q[:, t, cols].unsqueeze(1) @ k[:, : t + 1, cols].transpose(1, 2) / math.sqrt(head_dim)
            y[:, t, cols] = (scores.softmax(dim=-1) @ v[:, : t + 1, cols]).squeeze(1)
    torch.testing.assert_close(attn(x), attn.c_proj(y))


def test_the_layouts_have_the_same_parameters_but_post_ln_has_no_final_norm() -> None:
    shapes = {name: {n: p.shape for n, p in create_model(name, **SMALL).named_parameters()} for name in GPTS}
    final_norm = {"transformer.ln_f.weight", "transformer.ln_f.bias"}
    assert shapes["gpt_preln"] == shapes["gpt_noskip"]
    assert set(shapes["gpt_preln"]) - set(shapes["gpt_postln"]) == final_norm
    assert {n: s for n, s in shapes["gpt_preln"].items() if n not in final_norm} == shapes["gpt_postln"]
    counts = {name: count_parameters(create_model(name)) for name in GPTS}
    assert counts == {"gpt_preln": 336_896, "gpt_noskip": 336_896, "gpt_postln": 336_896 - 2 * 64}


def test_each_block_computes_what_its_layout_says() -> None:
    config = GPTConfig(width=8, heads=2)
    pre = PreLNBlock(config)
    post, noskip = PostLNBlock(config), NoSkipBlock(config)
    with torch.no_grad():
        for ln in (pre.ln_1, pre.ln_2):  # non-trivial affine norms, shared by the three blocks
            ln.weight.uniform_(0.5, 1.5)
            ln.bias.uniform_(-0.5, 0.5)
        post.load_state_dict(pre.state_dict())
        noskip.load_state_dict(pre.state_dict())
        x = torch.randn(2, 5, 8)
        h = x + pre.attn(pre.ln_1(x))
        torch.testing.assert_close(pre(x), h + pre.mlp(pre.ln_2(h)))
        h = pre.ln_1(x + pre.attn(x))
        torch.testing.assert_close(post(x), pre.ln_2(h + pre.mlp(h)))
        torch.testing.assert_close(noskip(x), pre.mlp(pre.ln_2(pre.attn(pre.ln_1(x)))))
        assert not torch.allclose(pre(x), post(x))


def test_with_zero_branches_pre_ln_is_the_identity_post_ln_normalizes_and_no_skip_is_zero() -> None:
    """Zero output projections make attn and mlp return 0: pre-LN passes x through, post-LN
    returns ln_2(ln_1(x)) (with the initial affine (1, 0): x normalized per token), no-skip 0."""
    blocks = {name: cls(GPTConfig(width=8, heads=2)) for name, cls in
              (("pre", PreLNBlock), ("post", PostLNBlock), ("noskip", NoSkipBlock))}  # fmt: skip
    x = torch.randn(2, 5, 8) * 3 + 1
    with torch.no_grad():
        for block in blocks.values():
            for proj in (block.attn.c_proj, block.mlp.c_proj):
                proj.weight.zero_()
                proj.bias.zero_()
        torch.testing.assert_close(blocks["pre"](x), x)
        normalized = (x - x.mean(-1, keepdim=True)) / torch.sqrt(x.var(-1, unbiased=False, keepdim=True) + 1e-5)
        torch.testing.assert_close(blocks["post"](x), F.layer_norm(normalized, (8,)), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(blocks["noskip"](x), torch.zeros_like(x))


def test_init_is_nanogpts_with_scaled_output_projections() -> None:
    depth = 8
    model = create_model("gpt_preln", depth=depth, width=64, heads=4)
    expected_std = {"c_attn": 0.02, "c_fc": 0.02, "c_proj": 0.02 / math.sqrt(2 * depth), "wte": 0.02, "wpe": 0.02}
    for name, param in model.named_parameters():
        layer = name.split(".")[-2]
        if name.endswith("bias"):
            assert not param.any(), name
        elif "ln" in layer:
            assert (param == 1).all(), name
        else:
            target = expected_std.get(layer, 0.02)
            assert abs(param.std().item() / target - 1) < 0.1, (name, param.std().item(), target)
    unscaled = create_model("gpt_preln", depth=depth, scaled_init=False)
    assert abs(unscaled.transformer.h[0].mlp.c_proj.weight.std().item() / 0.02 - 1) < 0.1


def test_tied_head_shares_the_token_embedding_and_the_store_marks_it(tmp_path: Path) -> None:
    model = create_model("gpt_preln", tie_weights=True, **SMALL)
    assert model.lm_head.weight is model.transformer.wte.weight
    untied = create_model("gpt_preln", **SMALL)
    assert count_parameters(untied) - count_parameters(model) == SMALL["vocab_size"] * SMALL["width"]
    _record_one_step(model, _ids(), tmp_path / "run")
    with gs.open_run(tmp_path / "run") as run:
        layers = run.layers("layer").set_index("name")
    assert "lm_head" not in layers.index
    assert layers.loc["transformer.wte", "tied"] and not layers["tied"].drop("transformer.wte").any()


def test_no_skip_gpt_has_no_residual_blocks(tmp_path: Path) -> None:
    model = create_model("gpt_noskip", **SMALL)
    ids = _ids()
    assert find_residual_blocks(model, ids) == []
    _record_one_step(model, ids, tmp_path / "run", activations=True)
    with gs.open_run(tmp_path / "run") as run:
        assert run.layers("block").empty
        assert len(run.layers("layer")) == len([m for m in model.modules() if list(m.parameters(recurse=False))])


@pytest.mark.parametrize("name", ["gpt_preln", "gpt_postln"])
def test_pre_and_post_ln_gpts_have_residual_blocks(name: str) -> None:
    model = create_model(name, **SMALL)
    blocks = find_residual_blocks(model, _ids())
    assert blocks and all(b.startswith("transformer.h.") for b in blocks)
    assert {b.split("[")[0] for b in blocks} == {f"transformer.h.{i}" for i in range(SMALL["depth"])}


def test_dropout_is_off_by_default_and_eval_mode_is_deterministic() -> None:
    model = create_model("gpt_preln", **SMALL)
    assert all(m.p == 0 for m in model.modules() if isinstance(m, nn.Dropout))
    model = create_model("gpt_preln", dropout=0.5, **SMALL).eval()
    ids = _ids()
    with torch.no_grad():
        torch.testing.assert_close(model(ids), model(ids))

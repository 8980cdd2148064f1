"""Hugging Face transformers as they are: every residual addition of GPT-2, Llama and BERT.

Tiny configurations, random initialization, token inputs; nothing is downloaded. The
references keep, with ``retain_grad``, the stream ``s`` before each addition and the
addition's output ``z`` (read at the module that consumes it: the next LayerNorm, or
the next layer): skip = ``dL/dz``, branch = ``dL/ds - dL/dz``.
"""

from __future__ import annotations

import math

import pytest
import torch

import gradsight as gs

transformers = pytest.importorskip("transformers")

RTOL = 1e-4


def _gpt2():
    config = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=100, n_positions=32,
                                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return transformers.GPT2LMHeadModel(config)


def _llama():
    config = transformers.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                      num_key_value_heads=2, vocab_size=100, max_position_embeddings=64)
    return transformers.LlamaForCausalLM(config)


def _bert():
    config = transformers.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                                     vocab_size=100, max_position_embeddings=64, hidden_dropout_prob=0.0,
                                     attention_probs_dropout_prob=0.0)
    return transformers.BertForMaskedLM(config)


#: model -> (build, [(row, module whose input is the stream s, module whose input is the sum z)])
MODELS = {
    "gpt2": (_gpt2, [(f"transformer.h.{i}[{b}]", s, z) for i in range(2) for b, s, z in (
        ("attn", f"transformer.h.{i}", f"transformer.h.{i}.ln_2"),
        ("mlp", f"transformer.h.{i}.ln_2", "transformer.h.1" if i == 0 else "transformer.ln_f"))]),
    "llama": (_llama, [(f"model.layers.{i}[{b}]", s, z) for i in range(2) for b, s, z in (
        ("self_attn", f"model.layers.{i}", f"model.layers.{i}.post_attention_layernorm"),
        ("mlp", f"model.layers.{i}.post_attention_layernorm", "model.layers.1" if i == 0 else "model.norm"))]),
    "bert": (_bert, [(r, s, z) for i in range(2) for r, s, z in (
        (f"bert.encoder.layer.{i}.attention", f"bert.encoder.layer.{i}",
         f"bert.encoder.layer.{i}.attention.output.LayerNorm"),
        (f"bert.encoder.layer.{i}", f"bert.encoder.layer.{i}.intermediate",
         f"bert.encoder.layer.{i}.output.LayerNorm"))]),
}


def _build(name: str):
    torch.manual_seed(0)
    model = MODELS[name][0]()
    model.train()
    ids = torch.randint(0, 100, (2, 12))
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0  # one padded sequence
    return model, ids, mask


def _loss(model, ids, mask, **kw):
    return model(input_ids=ids, attention_mask=mask, labels=ids, **kw).loss


def _first_input(args: tuple, kwargs: dict) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


def _reference(name: str, model, ids, mask) -> dict[tuple[str, str], float]:
    modules = dict(model.named_modules())
    kept: dict[str, torch.Tensor] = {}

    def keep(module_name):
        def hook(module, args, kwargs):
            t = _first_input(args, kwargs)
            t.retain_grad()
            kept[module_name] = t

        return hook

    wanted = {m for _, s, z in MODELS[name][1] for m in (s, z)}
    handles = [modules[m].register_forward_pre_hook(keep(m), with_kwargs=True) for m in wanted]
    _loss(model, ids, mask).backward()
    for h in handles:
        h.remove()
    model.zero_grad()
    want = {}
    for row, s_name, z_name in MODELS[name][1]:
        s, z = kept[s_name], kept[z_name]
        skip = z.grad.double()
        branch = s.grad.double() - skip
        want[(row, "skip_grad_norm")] = float(skip.norm())
        want[(row, "branch_grad_norm")] = float(branch.norm())
        want[(row, "skip_branch_cos")] = float((skip * branch).sum() / (skip.norm() * branch.norm()))
        want[(row, "act_rms")] = float(s.detach().double().pow(2).mean().sqrt())
        b = (z - s).detach().double().reshape(-1, z.shape[-1])
        want[(row, "branch_var")] = float(b.var(0, unbiased=False).mean())
        want[(row, "branch_mean_sq")] = float(b.mean(0).square().mean())
    return want


def _watch(model, run_dir, ids, mask, **kw):
    with gs.watch(model, run_dir, activations=True) as mon:
        _loss(model, ids, mask, **kw).backward()
        mon.step()
    frame = gs.open_run(run_dir).frame(level="block")
    return gs.open_run(run_dir).layers("block").name.tolist(), {(r.name, r.stat): r.value for r in frame.itertuples()}


def _assert_matches(got, want):
    for key, value in want.items():
        assert key in got, key
        # the stored values are float32; the branch_var reference z - s rounds at about 1e-7 of z
        tol = 1e-3 if key[1] == "branch_var" else RTOL
        assert math.isclose(got[key], value, rel_tol=tol, abs_tol=1e-7), (key, got[key], value)


@pytest.mark.parametrize("name", list(MODELS))
def test_two_rows_per_layer_match_retain_grad(tmp_path, name):
    model, ids, mask = _build(name)
    want = _reference(name, model, ids, mask)
    rows, got = _watch(model, tmp_path / "run", ids, mask)
    assert rows == [row for row, _, _ in MODELS[name][1]]
    _assert_matches(got, want)


@pytest.mark.parametrize("name", list(MODELS))
def test_gradient_checkpointing_gives_the_same_rows(tmp_path, name):
    model, ids, mask = _build(name)
    want = _reference(name, model, ids, mask)
    model.gradient_checkpointing_enable()
    rows, got = _watch(model, tmp_path / "run", ids, mask)
    assert rows == [row for row, _, _ in MODELS[name][1]]
    _assert_matches(got, want)


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_use_cache_does_not_change_the_rows(tmp_path, name):
    model, ids, mask = _build(name)
    want = _reference(name, model, ids, mask)
    rows, got = _watch(model, tmp_path / "run", ids, mask, use_cache=True)
    assert rows == [row for row, _, _ in MODELS[name][1]]
    _assert_matches(got, want)


@pytest.mark.parametrize("name", list(MODELS))
def test_probe_finds_every_addition(name):
    model, ids, mask = _build(name)
    df = gs.probe(model.eval(), ids)
    blocks = df[df.kind == "block"]
    assert blocks.name.tolist() == [row for row, _, _ in MODELS[name][1]]
    assert (blocks.skip_grad_norm > 0).all() and (blocks.branch_grad_norm > 0).all()
    assert (blocks.stream_rms > 0).all() and (blocks.branch_var > 0).all()

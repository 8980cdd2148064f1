"""Roles of container-owned parameters (nn.MultiheadAttention's in-projection) and of recurrent layers."""

from __future__ import annotations

import pytest

from gradsight.store.roles import Role, is_recurrent_type, layer_roles, role_of


def test_multihead_attention_in_projection_bias_is_not_an_embedding():
    """The first attention's ``in_proj_bias`` sits on the input side of the network, where a
    container-owned parameter (a position embedding, a class token) is an embedding; the
    in-projection's bias, and the learned key/value biases, are not."""
    layers = [("enc.layers.0.self_attn.in_proj_weight", "Parameter", 768),
              ("enc.layers.0.self_attn.in_proj_bias", "Parameter", 48),
              ("enc.layers.0.self_attn.bias_k", "Parameter", 64),
              ("enc.layers.0.self_attn.out_proj", "Linear", 272),
              ("head", "Linear", 51)]
    assert layer_roles(layers) == [Role.WEIGHTED, Role.OTHER, Role.OTHER, Role.WEIGHTED, Role.HEAD]
    # a container-owned parameter before the first weighted layer is still an embedding
    assert layer_roles([("pos_embed", "Parameter", 640), ("blocks.0.fc", "Linear", 272),
                        ("head", "Linear", 51)]) == [Role.EMBEDDING, Role.WEIGHTED, Role.HEAD]


@pytest.mark.parametrize("module_type", ["LSTM", "GRU", "RNN", "LSTMCell", "GRUCell", "RNNCell"])
def test_recurrent_layers_are_weighted(module_type):
    """nn.LSTM was role ``other``: the depth figures, which show weighted layers, left it out."""
    assert role_of(module_type, name="rnn.l0", numel=3000) == Role.WEIGHTED
    assert is_recurrent_type(module_type)
    assert layer_roles([("encoder", "Embedding", 100), ("rnn.l0", module_type, 3000), ("rnn.l1", module_type, 3000),
                        ("decoder", "Linear", 500)]) == [Role.EMBEDDING, Role.WEIGHTED, Role.WEIGHTED, Role.HEAD]


@pytest.mark.parametrize("module_type", ["Linear", "Conv2d", "LayerNorm", "Parameter", "RNNBlock"])
def test_other_layers_are_not_recurrent(module_type):
    assert not is_recurrent_type(module_type)


@pytest.mark.parametrize("module_type", ["BatchNorm2d", "LayerNorm", "LlamaRMSNorm", "LayerNorm2d", "GroupNorm1",
                                         "BatchNormAct2d", "SyncBatchNormAct", "GroupNormAct", "LayerNormAct2d",
                                         "FrozenBatchNormAct2d", "LocalResponseNormalization"])
def test_norm_layers_of_every_library_are_norms(module_type):
    """timm's norm-and-activation layers (``BatchNormAct2d`` in 29 of the doctor population's
    timm networks) and ``GroupNorm1`` were role ``other``."""
    assert role_of(module_type, name="features.norm0", numel=64) == Role.NORM


@pytest.mark.parametrize("module_type", ["NormFreeBlock", "Normalize", "NormalizedLinear"])
def test_types_that_only_mention_norm_are_not_norms(module_type):
    assert role_of(module_type, name="stages.0", numel=64) != Role.NORM


def test_a_timm_batchnormact_layer_is_recorded_as_a_norm(tmp_path):
    timm = pytest.importorskip("timm")
    import torch

    import gradsight as gs

    model = timm.create_model("lcnet_050", pretrained=False, num_classes=4)
    with gs.watch(model, tmp_path / "run") as mon:
        model(torch.randn(2, 3, 32, 32)).sum().backward()
        mon.step()
    with gs.open_run(tmp_path / "run") as run:
        layers = run.layers()
        assert set(layers[layers.module_type == "BatchNormAct2d"].role) == {Role.NORM}


def test_an_embedding_placed_last_does_not_hide_the_head():
    # BART's model.shared is called only through encoder/decoder.embed_tokens: its place in forward
    # order is unknown and it sits last; the untied lm_head before it is still the head
    layers = [("model.encoder.fc", "Linear", 64), ("model.decoder.norm", "LayerNorm", 16), ("lm_head", "Linear", 640),
              ("model.shared", "Embedding", 640)]
    assert layer_roles(layers) == [Role.WEIGHTED, Role.NORM, Role.HEAD, Role.EMBEDDING]
    # tied: the head's weight is the embedding's row, the last layer that is no embedding is a norm: no head
    assert Role.HEAD not in layer_roles([layers[0], layers[1], layers[3]])


def test_a_layer_the_forward_did_not_run_is_never_the_head():
    # wav2vec2-Conformer builds pos_conv_embed and never calls it: placed last, it is no head
    layers = [("encoder.fc", "Linear", 64), ("classifier", "Linear", 40), ("pos_conv_embed.conv", "Conv1d", 90)]
    assert layer_roles(layers, unplaced=["pos_conv_embed.conv"]) == [Role.WEIGHTED, Role.HEAD, Role.WEIGHTED]
    assert layer_roles(layers)[-1] == Role.HEAD
    # before any forward pass every layer is unplaced: the last is the head, as before
    assert layer_roles(layers, unplaced=[n for n, _, _ in layers])[-1] == Role.HEAD


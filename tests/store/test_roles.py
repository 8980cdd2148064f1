"""Roles of container-owned parameters: nn.MultiheadAttention's in-projection."""

from __future__ import annotations

from gradsight.store.roles import Role, layer_roles


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

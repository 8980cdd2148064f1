"""A tiny language model without attention, so the zoo has a model that takes token ids.

``TokenMLP`` embeds tokens and positions, runs residual MLP blocks on every position, and
predicts logits over the vocabulary per position::

    h_0 = embed(ids) + position(0..T-1)              (N, T) ids -> (N, T, width)
    h_l = h_{l-1} + branch_l(h_{l-1})                branch_l(h) = norm2(W_l2 act(norm1(W_l1 h)))
    logits = head(norm(h_L))                         (N, T, vocab_size)

``depth`` counts its linear layers: 2 per block and the head (2n + 1). It is a stand-in for the
shape of a transformer's residual stream (token vectors, pre-logit norm, per-token head), not a
model of attention.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from gradsight.models._checks import check_choice
from gradsight.models._registry import register_model
from gradsight.models.mlp import ACTIVATIONS, MLPBlock

__all__ = ["TokenMLP", "token_blocks"]

#: Norms that work on (N, T, width): per token.
TOKEN_NORMS: tuple[str, ...] = ("layer", "none")


def token_blocks(depth: int) -> int:
    """Blocks of a ``TokenMLP`` with ``depth`` linear layers (2n + 1); ``ValueError`` if bad."""
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 3 or depth % 2 == 0:
        raise ValueError(
            "depth counts linear layers (2 per block + the head) and must be 2n+1 (odd, >= 3), "
            f"e.g. 3, 5, 9; got {depth!r}"
        )
    return (depth - 1) // 2


class TokenMLP(nn.Module):
    """Residual MLP over token embeddings with a per-token head; see the module docstring.

    Input (N, T) integer ids in ``[0, vocab_size)`` with ``T <= context``; output logits
    (N, T, vocab_size).

    Args:
        depth: linear layers, 2n+1 (n blocks of two, and the head).
        width: embedding and hidden width.
        vocab_size: number of token ids.
        context: longest sequence (positions embedded).
        activation: inside each block's branch ('gelu', 'relu', ...).
        norm: 'layer' (LayerNorm in every branch and before the head) or 'none'.
    """

    def __init__(
        self,
        *,
        depth: int = 5,
        width: int = 64,
        vocab_size: int = 256,
        context: int = 64,
        activation: str = "gelu",
        norm: str = "layer",
    ) -> None:
        super().__init__()
        n = token_blocks(depth)
        check_choice("activation", activation, ACTIVATIONS)
        check_choice("norm", norm, TOKEN_NORMS)
        self.depth = depth
        self.embed = nn.Embedding(vocab_size, width)
        self.position = nn.Embedding(context, width)
        self.body = nn.Sequential()
        for i in range(n):
            self.body.add_module(f"block{i}", MLPBlock(width, skip=True, activation=activation, norm=norm))
        self.norm = nn.LayerNorm(width) if norm == "layer" else nn.Identity()
        self.head = nn.Linear(width, vocab_size, bias=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(ids.shape[-1], device=ids.device)
        h = self.embed(ids) + self.position(positions)
        return self.head(self.norm(self.body(h)))


def _token_depth(kwargs: dict[str, Any]) -> int:
    depth = kwargs.get("depth", 5)
    token_blocks(depth)  # ValueError naming the valid depths
    return depth


@register_model(family="token_resmlp", depth=_token_depth, input_kind="tokens", input_shape=(16,), vocab_size=256)
def token_resmlp(*, depth: int = 5, width: int = 64, **kwargs: Any) -> TokenMLP:
    """Tiny language model: token embeddings, residual MLP blocks per position, logits per token."""
    return TokenMLP(depth=depth, width=width, **kwargs)

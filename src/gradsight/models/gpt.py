"""A small GPT, written like nanoGPT, in three layouts: pre-LN, post-LN, and without skips.

Every block has the same modules (``ln_1``, ``attn``, ``ln_2``, ``mlp``) and differs only in
where the residual additions and the LayerNorms sit in its forward::

    gpt_preln    x = x + attn(ln_1(x));   x = x + mlp(ln_2(x))       GPT-2, Xiong et al. 2020
    gpt_postln   x = ln_1(x + attn(x));   x = ln_2(x + mlp(x))       Vaswani et al. 2017, GPT-1
    gpt_noskip   x = attn(ln_1(x));       x = mlp(ln_2(x))           pre-LN placement, no additions

The model around the blocks::

    x = wte(idx) + wpe(0..T-1)              (B, T) ids -> (B, T, width)
    x = block_l(x)  for l = 1..depth
    logits = lm_head(ln_f(x))               (B, T, vocab_size); post-LN has no ln_f

``attn`` is causal multi-head self-attention (``scaled_dot_product_attention(is_causal=True)``),
``mlp`` is Linear(width, 4 width) -> GELU -> Linear(4 width, width). Parameter names follow
nanoGPT (``transformer.h.3.attn.c_attn.weight``, ``transformer.h.3.mlp.c_proj.weight``).

Choices, the same for the three layouts so that they differ only in the forward:

- ``depth`` counts transformer blocks (4 linear layers each).
- Initialization is nanoGPT's: every linear and embedding weight ``N(0, 0.02**2)``, biases 0,
  LayerNorms (1, 0), and the two output projections of every block (``attn.c_proj``,
  ``mlp.c_proj``) ``N(0, (0.02 / sqrt(2 depth))**2)`` (``scaled_init=False`` drops that factor).
  The factor keeps the pre-LN residual stream, a sum of ``2 depth`` branch outputs, from growing
  with depth; post-LN normalizes after every addition and does not need it (BERT does without),
  and without skips LayerNorm removes any scale, but keeping it everywhere leaves the layouts
  one difference apart.
- The head is not tied to the token embedding (nanoGPT ties them; ``tie_weights=True`` does).
  Untied, the head's gradient and the gradient that reaches the embedding through the whole
  network are measured separately; tied, they are one parameter (one ``tied`` layer row).
- Pre-LN and no-skip GPTs end with ``ln_f``; post-LN's last block already ends with a
  LayerNorm, so it has ``2 width`` parameters fewer and otherwise the same parameters.
- Dropout 0 by default (``dropout=`` sets the embedding, attention and residual dropouts).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from gradsight.models._checks import check_choice
from gradsight.models._registry import register_model

__all__ = ["GPT", "GPTConfig", "LAYOUTS", "NoSkipBlock", "PostLNBlock", "PreLNBlock"]

#: Where a block adds and normalizes: ``preln``, ``postln``, ``noskip`` (see the module docstring).
LAYOUTS: tuple[str, ...] = ("preln", "postln", "noskip")
#: Standard deviation of nanoGPT's initialization.
INIT_STD = 0.02


@dataclass(frozen=True)
class GPTConfig:
    layout: str = "preln"  # 'preln', 'postln' or 'noskip'
    depth: int = 6  # transformer blocks
    width: int = 64  # embedding width (nanoGPT's n_embd)
    heads: int = 4  # attention heads; must divide width
    context: int = 64  # longest sequence (positions embedded)
    vocab_size: int = 256  # token ids; 256 for bytes
    dropout: float = 0.0  # embedding, attention and residual dropout
    bias: bool = True  # biases in the linear layers and LayerNorms, as in GPT-2
    tie_weights: bool = False  # lm_head.weight is transformer.wte.weight
    scaled_init: bool = True  # output projections N(0, (0.02 / sqrt(2 depth))**2)

    def __post_init__(self) -> None:
        check_choice("layout", self.layout, LAYOUTS)
        check_depth(self.depth)
        for name in ("width", "heads", "context", "vocab_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer; got {value!r}")
        if self.width % self.heads:
            raise ValueError(f"heads must divide width; got width={self.width}, heads={self.heads}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1); got {self.dropout!r}")


def check_depth(depth: int) -> int:
    """``depth`` if it is a number of blocks (an integer >= 1), else ``ValueError``."""
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
        raise ValueError(f"depth counts transformer blocks and must be an integer >= 1; got {depth!r}")
    return depth


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention where position t attends to positions <= t: (B, T, C) -> (B, T, C)."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.heads = config.heads
        self.dropout = config.dropout
        self.c_attn = nn.Linear(config.width, 3 * config.width, bias=config.bias)  # q, k, v at once
        self.c_proj = nn.Linear(config.width, config.width, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape
        q, k, v = self.c_attn(x).split(width, dim=2)
        q, k, v = (t.view(batch, length, self.heads, width // self.heads).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True)
        y = y.transpose(1, 2).contiguous().view(batch, length, width)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    """Per-token feed-forward: Linear(C, 4C) -> GELU -> Linear(4C, C), (B, T, C) -> (B, T, C)."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.width, 4 * config.width, bias=config.bias)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * config.width, config.width, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    """The modules of one transformer block; subclasses say where they add and normalize."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.width, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.width, bias=config.bias)
        self.mlp = MLP(config)


class PreLNBlock(Block):
    """``x + attn(ln_1(x))``, then ``+ mlp(ln_2(.))``: the norm inside each residual branch."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        x = x + self.mlp(self.ln_2(x))
        return x


class PostLNBlock(Block):
    """``ln_1(x + attn(x))``, then ``ln_2(. + mlp(.))``: the norm after each residual addition."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.ln_1(x + self.attn(x))
        x = self.ln_2(x + self.mlp(x))
        return x


class NoSkipBlock(Block):
    """``attn(ln_1(x))``, then ``mlp(ln_2(.))``: pre-LN's modules without the residual additions."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.attn(self.ln_1(x))
        x = self.mlp(self.ln_2(x))
        return x


BLOCKS: dict[str, type[Block]] = {"preln": PreLNBlock, "postln": PostLNBlock, "noskip": NoSkipBlock}


class GPT(nn.Module):
    """Decoder-only transformer; see the module docstring.

    Input (B, T) integer ids in ``[0, vocab_size)`` with ``T <= context``; output next-token
    logits (B, T, vocab_size) at every position (the loss is the caller's).
    """

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(config.vocab_size, config.width),
                wpe=nn.Embedding(config.context, config.width),
                drop=nn.Dropout(config.dropout),
                h=nn.ModuleList(BLOCKS[config.layout](config) for _ in range(config.depth)),
            )
        )
        if config.layout != "postln":
            self.transformer.ln_f = nn.LayerNorm(config.width, bias=config.bias)
        self.lm_head = nn.Linear(config.width, config.vocab_size, bias=False)
        self._init_weights()
        if config.tie_weights:
            self.lm_head.weight = self.transformer.wte.weight

    @torch.no_grad()
    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=INIT_STD)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
        if self.config.scaled_init:
            for name, param in self.named_parameters():
                if name.endswith("c_proj.weight"):
                    nn.init.normal_(param, mean=0.0, std=INIT_STD / math.sqrt(2 * self.config.depth))

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        length = idx.shape[-1]
        if length > self.config.context:
            raise ValueError(f"sequence of {length} tokens is longer than the context of {self.config.context}")
        positions = torch.arange(length, device=idx.device)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(positions))
        for block in self.transformer.h:
            x = block(x)
        if "ln_f" in self.transformer:
            x = self.transformer.ln_f(x)
        return self.lm_head(x)

    def extra_repr(self) -> str:
        return f"layout={self.config.layout!r}"


def _gpt_depth(kwargs: dict[str, Any]) -> int:
    return check_depth(kwargs.get("depth", GPTConfig.depth))


def _register(family: str) -> Any:
    return register_model(
        family=family,
        depth=_gpt_depth,
        input_kind="tokens",
        input_shape=(GPTConfig.context,),
        vocab_size=GPTConfig.vocab_size,
    )


@_register("gpt_preln")
def gpt_preln(**kwargs: Any) -> GPT:
    """Small pre-LN GPT (GPT-2's layout): x = x + attn(ln_1(x)); x = x + mlp(ln_2(x)); final ln_f."""
    return GPT(GPTConfig(layout="preln", **kwargs))


@_register("gpt_postln")
def gpt_postln(**kwargs: Any) -> GPT:
    """Small post-LN GPT (the original Transformer's layout): x = ln_1(x + attn(x)); x = ln_2(x + mlp(x))."""
    return GPT(GPTConfig(layout="postln", **kwargs))


@_register("gpt_noskip")
def gpt_noskip(**kwargs: Any) -> GPT:
    """Small GPT without residual additions: x = attn(ln_1(x)); x = mlp(ln_2(x)); final ln_f."""
    return GPT(GPTConfig(layout="noskip", **kwargs))

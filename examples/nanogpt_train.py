"""A tiny GPT trained nanoGPT-style (github.com/karpathy/nanoGPT, ``train.py``), watched by gradsight.

The training loop is nanoGPT's: gradient accumulation over micro-batches, a ``GradScaler``
(disabled unless the model runs in float16: on the CPU and in float32/bfloat16 it is off),
``clip_grad_norm_`` after ``scaler.unscale_``, AdamW with a cosine learning rate, an
evaluation and a checkpoint every ``--eval-interval`` steps, and ``--init-from resume``
to go on from the last checkpoint. gradsight adds the lines marked ``# gradsight``.

Runs offline on bytes of the Python standard library (``--data pystdlib``) or on any text
(``--data text:PATH``)::

    python examples/nanogpt_train.py --steps 200 --out out-gpt
    python examples/nanogpt_train.py --steps 300 --out out-gpt --init-from resume
    gradsight doctor out-gpt/gradsight; gradsight report out-gpt -o gpt.html
"""

from __future__ import annotations

import argparse
import contextlib
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

import gradsight as gs
from gradsight.data import load_dataset, token_batch


@dataclass
class GPTConfig:
    block_size: int = 64  # context length, in bytes
    vocab_size: int = 256  # one token per byte
    n_layer: int = 2
    n_head: int = 2
    n_embd: int = 64
    dropout: float = 0.0
    bias: bool = True


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.n_head, self.n_embd, self.dropout = config.n_head, config.n_embd, config.dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict({
            "wte": nn.Embedding(config.vocab_size, config.n_embd),
            "wpe": nn.Embedding(config.block_size, config.n_embd),
            "drop": nn.Dropout(config.dropout),
            "h": nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            "ln_f": nn.LayerNorm(config.n_embd, bias=config.bias),
        })
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # weight tying: one tensor, two names
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):  # scaled init of the residual projections (GPT-2)
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        pos = torch.arange(idx.size(1), device=idx.device)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
        for block in self.transformer.h:
            x = block(x)
        logits = self.lm_head(self.transformer.ln_f(x))
        loss = None if targets is None else F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1))
        return logits, loss


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--steps", type=int, default=200, help="optimizer steps to train to (max_iters)")
    parser.add_argument("--out", type=Path, default=Path("out-gpt"),
                        help="output folder: ckpt.pt and the gradsight run in OUT/gradsight")
    parser.add_argument("--data", default="pystdlib", help="pystdlib, or text:PATH (a file or a folder)")
    parser.add_argument("--limit", type=int, default=2_000_000, help="bytes of each split to read")
    parser.add_argument("--init-from", choices=["scratch", "resume"], default="scratch",
                        help="scratch: a new run (replacing one in OUT); resume: go on from OUT/ckpt.pt")
    parser.add_argument("--batch-size", type=int, default=8, help="sequences per micro-batch")
    parser.add_argument("--accum", type=int, default=2, help="gradient accumulation steps (micro-batches)")
    parser.add_argument("--lr", type=float, default=1e-3, help="peak learning rate")
    parser.add_argument("--grad-clip", type=float, default=1.0, help="clip_grad_norm_'s max norm (0: none)")
    parser.add_argument("--eval-interval", type=int, default=50, help="evaluate and save a checkpoint every N steps")
    parser.add_argument("--eval-iters", type=int, default=5, help="batches per evaluation")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seed", type=int, default=1337)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> Path:
    """Train; returns the gradsight run's folder."""
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    device_type = "cuda" if "cuda" in args.device else "cpu"
    dtype = "bfloat16" if device_type == "cuda" and torch.cuda.is_bf16_supported() else "float32"
    ctx = (contextlib.nullcontext() if device_type == "cpu"
           else torch.autocast(device_type=device_type, dtype=getattr(torch, dtype)))
    data = load_dataset(args.data, limit=args.limit)
    config = GPTConfig()
    gen = torch.Generator().manual_seed(args.seed)

    def get_batch(split: str) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = token_batch(data.train if split == "train" else data.test, config.block_size, args.batch_size,
                           generator=gen)
        return x.to(args.device), y.to(args.device)

    args.out.mkdir(parents=True, exist_ok=True)
    ckpt_path = args.out / "ckpt.pt"
    model = GPT(config).to(args.device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.1)
    iter_num, best_val_loss = 0, 1e9
    if args.init_from == "resume":
        checkpoint = torch.load(ckpt_path, map_location=args.device)
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        iter_num, best_val_loss = checkpoint["iter_num"], checkpoint["best_val_loss"]
    scaler = torch.amp.GradScaler(device_type, enabled=(dtype == "float16"))

    # gradsight: a new run replaces the one in OUT/gradsight; a resumed training continues it at
    # the checkpoint's step (what it recorded after the checkpoint is removed)
    monitor = gs.watch(model, args.out / "gradsight", optimizer=optimizer, scaler=scaler,
                       config={**asdict(config), "batch_size": args.batch_size, "accum": args.accum},
                       overwrite=args.init_from == "scratch",
                       resume=iter_num if args.init_from == "resume" else False)

    def get_lr(it: int) -> float:  # linear warmup, then cosine decay to a tenth
        warmup = max(1, args.steps // 10)
        if it < warmup:
            return args.lr * (it + 1) / warmup
        ratio = min(1.0, (it - warmup) / max(1, args.steps - warmup))
        return args.lr * (0.1 + 0.45 * (1 + math.cos(math.pi * ratio)))

    @torch.no_grad()
    def estimate_loss() -> dict[str, float]:
        model.eval()
        out = {}
        for split in ("train", "val"):
            losses = torch.zeros(args.eval_iters)
            for k in range(args.eval_iters):
                with ctx:
                    _, loss = model(*get_batch(split))
                losses[k] = loss.item()
            out[split] = losses.mean().item()
        model.train()
        return out

    X, Y = get_batch("train")
    t0 = time.time()
    with monitor:  # gradsight: closes the run when training ends (interrupted or failed if it raises)
        while iter_num < args.steps:
            lr = get_lr(iter_num)
            for group in optimizer.param_groups:
                group["lr"] = lr
            if iter_num % args.eval_interval == 0 and iter_num > 0:
                losses = estimate_loss()
                print(f"step {iter_num}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}")
                monitor.log({"val_loss": losses["val"]}, step=iter_num)  # gradsight
                best_val_loss = min(best_val_loss, losses["val"])
                monitor.flush()  # gradsight: the steps before the checkpoint are on disk
                torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                            "iter_num": iter_num, "best_val_loss": best_val_loss, "config": asdict(config)},
                           ckpt_path)
            total = 0.0
            for _ in range(args.accum):
                with ctx:
                    _, loss = model(X, Y)
                    loss = loss / args.accum
                X, Y = get_batch("train")
                scaler.scale(loss).backward()
                total += loss.detach()  # gradsight: the step's loss is the sum of the micro-batches'
            monitor.step(total, step=iter_num)  # gradsight: the gradients as accumulated, before clipping
            if args.grad_clip != 0.0:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            if iter_num % 10 == 0:
                print(f"iter {iter_num}: loss {total.item():.4f}, {1000 * (time.time() - t0):.0f} ms")
            t0 = time.time()
            iter_num += 1
    return monitor.run_dir


if __name__ == "__main__":
    main()

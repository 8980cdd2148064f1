"""An LSTM language model trained as pytorch/examples' ``word_language_model`` trains it, watched by gradsight.

The training loop is that example's: an ``nn.LSTM`` between an embedding and a decoder,
truncated backpropagation through time (the hidden state carried over and detached),
``clip_grad_norm_``, plain SGD written out as ``p.data.add_(p.grad, alpha=-lr)`` (no
optimizer object), the learning rate divided by 4 when the validation loss stops
improving, and ``torch.save(model)`` of the whole model after every epoch that improves.
gradsight adds the lines marked ``# gradsight``.

Runs offline on bytes of the Python standard library (``--data pystdlib``) or on any text
(``--data text:PATH``), one token per byte::

    python examples/lstm_lm_train.py --steps 300 --out out-lstm
    gradsight plot out-lstm/gradsight --kind flow -o lstm-flow.png
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch
from torch import nn

import gradsight as gs
from gradsight.data import load_dataset


class RNNModel(nn.Module):
    """Embedding, a stacked LSTM and a linear decoder (word_language_model's ``RNNModel``)."""

    def __init__(self, ntoken: int, ninp: int, nhid: int, nlayers: int, dropout: float = 0.2,
                 tie_weights: bool = False) -> None:
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.encoder = nn.Embedding(ntoken, ninp)
        self.rnn = nn.LSTM(ninp, nhid, nlayers, dropout=dropout)
        self.decoder = nn.Linear(nhid, ntoken)
        if tie_weights:
            if nhid != ninp:
                raise ValueError("--tied needs --emsize equal to --nhid")
            self.decoder.weight = self.encoder.weight
        self.nhid, self.nlayers = nhid, nlayers
        initrange = 0.1
        nn.init.uniform_(self.encoder.weight, -initrange, initrange)
        nn.init.zeros_(self.decoder.bias)
        nn.init.uniform_(self.decoder.weight, -initrange, initrange)

    def forward(self, input: torch.Tensor, hidden: tuple[torch.Tensor, torch.Tensor]):
        emb = self.drop(self.encoder(input))
        output, hidden = self.rnn(emb, hidden)
        decoded = self.decoder(self.drop(output)).view(-1, self.decoder.out_features)
        return torch.log_softmax(decoded, dim=1), hidden

    def init_hidden(self, bsz: int) -> tuple[torch.Tensor, torch.Tensor]:
        weight = next(self.parameters())
        return (weight.new_zeros(self.nlayers, bsz, self.nhid), weight.new_zeros(self.nlayers, bsz, self.nhid))


def batchify(data: torch.Tensor, bsz: int) -> torch.Tensor:
    """A token stream as ``bsz`` columns: [len // bsz, bsz]."""
    nbatch = data.size(0) // bsz
    return data[: nbatch * bsz].long().view(bsz, -1).t().contiguous()


def get_batch(source: torch.Tensor, i: int, bptt: int) -> tuple[torch.Tensor, torch.Tensor]:
    seq_len = min(bptt, len(source) - 1 - i)
    return source[i : i + seq_len], source[i + 1 : i + 1 + seq_len].reshape(-1)


def repackage_hidden(h):
    """Detach the hidden state from the graph of the previous batch."""
    return h.detach() if isinstance(h, torch.Tensor) else tuple(repackage_hidden(v) for v in h)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--steps", type=int, default=300, help="training batches in all (epochs of --epoch-steps)")
    parser.add_argument("--out", type=Path, default=Path("out-lstm"),
                        help="output folder: model.pt and the gradsight run in OUT/gradsight")
    parser.add_argument("--data", default="pystdlib", help="pystdlib, or text:PATH (a file or a folder)")
    parser.add_argument("--limit", type=int, default=1_000_000, help="bytes of each split to read")
    parser.add_argument("--emsize", type=int, default=64, help="size of the byte embeddings")
    parser.add_argument("--nhid", type=int, default=64, help="hidden units per layer")
    parser.add_argument("--nlayers", type=int, default=2, help="stacked LSTM layers")
    parser.add_argument("--lr", type=float, default=5.0, help="initial learning rate")
    parser.add_argument("--clip", type=float, default=0.25, help="gradient clipping")
    parser.add_argument("--epoch-steps", type=int, default=100, help="batches per epoch")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--bptt", type=int, default=35, help="sequence length")
    parser.add_argument("--dropout", type=float, default=0.2)
    parser.add_argument("--tied", action="store_true", help="tie the embedding and decoder weights")
    parser.add_argument("--seed", type=int, default=1111)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> Path:
    """Train; returns the gradsight run's folder."""
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    corpus = load_dataset(args.data, limit=args.limit)
    train_data = batchify(corpus.train, args.batch_size).to(args.device)
    val_data = batchify(corpus.test, 10).to(args.device)
    model = RNNModel(corpus.vocab_size, args.emsize, args.nhid, args.nlayers, args.dropout, args.tied)
    model = model.to(args.device)
    criterion = nn.NLLLoss()
    args.out.mkdir(parents=True, exist_ok=True)
    save = args.out / "model.pt"

    # gradsight: no optimizer object to pass; a rerun into OUT replaces its run
    monitor = gs.watch(model, args.out / "gradsight", overwrite=True, config=vars(args) | {"out": str(args.out)})

    def evaluate(data_source: torch.Tensor) -> float:
        model.eval()
        total_loss = 0.0
        hidden = model.init_hidden(10)
        with torch.no_grad():
            for i in range(0, min(data_source.size(0) - 1, 20 * args.bptt), args.bptt):
                data, targets = get_batch(data_source, i, args.bptt)
                output, hidden = model(data, hidden)
                hidden = repackage_hidden(hidden)
                total_loss += len(data) * criterion(output, targets).item()
        return total_loss / min(data_source.size(0) - 1, 20 * args.bptt)

    lr, best_val_loss, step = args.lr, None, 0
    epochs = math.ceil(args.steps / args.epoch_steps)
    with monitor:  # gradsight: closes the run when training ends (interrupted or failed if it raises)
        for epoch in range(1, epochs + 1):
            model.train()
            hidden = model.init_hidden(args.batch_size)
            start = time.time()
            for batch, i in enumerate(range(0, train_data.size(0) - 1, args.bptt)):
                if batch == args.epoch_steps or step == args.steps:
                    break
                data, targets = get_batch(train_data, i, args.bptt)
                model.zero_grad()
                hidden = repackage_hidden(hidden)
                output, hidden = model(data, hidden)
                loss = criterion(output, targets)
                loss.backward()
                monitor.step(loss)  # gradsight: the gradients before clipping
                torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
                for p in model.parameters():
                    p.data.add_(p.grad, alpha=-lr)
                step += 1
            val_loss = evaluate(val_data)
            monitor.log({"val_loss": val_loss, "lr": lr})  # gradsight
            print(f"| end of epoch {epoch:3d} | time {time.time() - start:5.2f}s | valid loss {val_loss:5.2f} | "
                  f"valid ppl {math.exp(val_loss):8.2f}")
            if best_val_loss is None or val_loss < best_val_loss:
                torch.save(model, save)  # the whole model, as word_language_model saves it
                best_val_loss = val_loss
            else:
                lr /= 4.0
    # the whole-model pickle is loaded as the original loads it (a full unpickle of this file's class)
    model = torch.load(save, weights_only=False)
    model.rnn.flatten_parameters()
    print(f"| end of training | valid loss of the saved model {evaluate(val_data):5.2f}")
    return monitor.run_dir


if __name__ == "__main__":
    main()

"""What real training scripts do around a watched model: save it whole with
``torch.save`` mid-training (the checkpoint must not need gradsight to load), and stop
with Ctrl-C (the run must not read as finished)."""

from __future__ import annotations

import copy
import io
import pickle
import pickletools
import subprocess
import sys
import textwrap

import torch

import gradsight as gs

_MODEL = textwrap.dedent('''
    import torch
    from torch import nn


    class TinyLM(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(11, 8)
            self.rnn = nn.LSTM(8, 8, num_layers=2)
            self.block = nn.Sequential(nn.Linear(8, 8), nn.LayerNorm(8))
            self.out = nn.Linear(8, 11)

        def forward(self, x):
            h, _ = self.rnn(self.emb(x))
            return self.out(h + self.block(h))
''')


def _model_module(tmp_path, monkeypatch):
    (tmp_path / "tiny_lm.py").write_text(_MODEL)
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib

    sys.modules.pop("tiny_lm", None)
    return importlib.import_module("tiny_lm")


def _opcodes(obj) -> list:
    """``obj``'s pickle as opcodes, tensor bytes left out (they name storage addresses)."""
    return [(op.name, arg) for op, arg, _ in pickletools.genops(pickle.dumps(obj)) if op.name != "BINBYTES"]


def _no_gradsight(tmp_path, code: str) -> subprocess.CompletedProcess:
    """Run ``code`` where ``import gradsight`` fails and ``tiny_lm`` imports."""
    prelude = f"import sys\nsys.modules['gradsight'] = None\nsys.path.insert(0, {str(tmp_path)!r})\n"
    return subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)], capture_output=True, text=True,
                          cwd=tmp_path, timeout=120)


def test_whole_model_checkpoint_loads_without_gradsight(tmp_path, monkeypatch):
    lm = _model_module(tmp_path, monkeypatch)
    torch.manual_seed(0)
    model = lm.TinyLM()
    plain = copy.deepcopy(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    x = torch.randint(0, 11, (6, 4))
    with gs.watch(model, tmp_path / "run", optimizer=opt, activations=True) as mon:
        for step in range(3):
            loss = model(x).logsumexp(-1).mean()
            loss.backward()
            mon.step(loss)
            opt.step()
            opt.zero_grad()
            if step == 1:  # mid-training, hooks live: what word_language_model does every epoch
                assert any(mod._forward_hooks or mod._forward_pre_hooks for mod in model.modules())
                torch.save(model, tmp_path / "model.pt")
                torch.save(model.state_dict(), tmp_path / "state.pt")
                plain.load_state_dict(model.state_dict())
                assert _opcodes(model) == _opcodes(plain)  # exactly an unwatched model's pickle
                expected = plain(x).detach()
    for name in ("model.pt", "state.pt"):
        assert b"gradsight" not in (tmp_path / name).read_bytes(), name
    torch.save((x, expected), tmp_path / "expected.pt")
    done = _no_gradsight(tmp_path, '''
        import torch
        try:
            import gradsight
        except ImportError:
            pass
        else:
            raise SystemExit("gradsight imported")
        x, expected = torch.load("expected.pt", weights_only=True)
        import tiny_lm
        state = torch.load("state.pt", weights_only=True)
        fresh = tiny_lm.TinyLM()
        fresh.load_state_dict(state)
        model = torch.load("model.pt", weights_only=False)
        assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
        with torch.serialization.safe_globals([tiny_lm.TinyLM, torch.nn.Embedding, torch.nn.LSTM, torch.nn.Linear,
                                               torch.nn.LayerNorm, torch.nn.Sequential, set]):
            strict = torch.load("model.pt", weights_only=True)
        for m in (fresh, model, strict):
            assert torch.equal(m(x), expected)
        print("OK")
    ''')
    assert done.returncode == 0 and done.stdout.strip() == "OK", done.stderr


_TRAIN = '''
import os, signal, sys
import torch
import gradsight as gs

how, run_dir = sys.argv[1], sys.argv[2]
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
opt = torch.optim.SGD(model.parameters(), lr=0.01)


def train(mon, steps=1000):
    for step in range(steps):
        loss = model(torch.randn(16, 4)).pow(2).mean()
        loss.backward()
        mon.step(loss)
        opt.step()
        opt.zero_grad()
        if step == 2 and how.startswith("sigint"):
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C after the first recorded steps


if how == "sigint-with":
    with gs.watch(model, run_dir, optimizer=opt, every=1) as mon:
        train(mon)
elif how == "sigint":
    mon = gs.watch(model, run_dir, optimizer=opt, every=1)
    train(mon)
elif how == "error":
    mon = gs.watch(model, run_dir, optimizer=opt, every=1)
    train(mon, steps=3)
    raise RuntimeError("loss went away")
elif how == "no-close":
    mon = gs.watch(model, run_dir, optimizer=opt, every=1)
    train(mon, steps=3)
else:
    mon = gs.watch(model, run_dir, optimizer=opt, every=1)
    train(mon, steps=3)
    mon.close()
'''


def _end_of(tmp_path, how: str) -> tuple[int, dict]:
    script = tmp_path / "train.py"
    script.write_text(_TRAIN)
    done = subprocess.run([sys.executable, str(script), how, str(tmp_path / how)], capture_output=True, text=True,
                          timeout=180)
    return done.returncode, gs.open_run(tmp_path / how).meta


def test_interrupted_and_unclosed_runs_do_not_read_finished(tmp_path):
    for how, status, error in [("sigint-with", "interrupted", "KeyboardInterrupt"),
                               ("sigint", "interrupted", "KeyboardInterrupt"),
                               ("error", "failed", "RuntimeError: loss went away"),
                               ("no-close", "interrupted", "the process ended without Monitor.close()"),
                               ("close", "finished", None)]:
        rc, meta = _end_of(tmp_path, how)
        assert (rc != 0) == (how not in ("no-close", "close")), how
        assert meta["status"] == status, how
        assert meta.get("error") == error, how
        assert meta["steps_recorded"] >= 3, how


def test_close_leaves_no_reducer_on_the_modules(tmp_path):
    """Regression: the instance ``__reduce_ex__`` that keeps gradsight out of pickles stayed on
    every hooked module after ``close()``; a closed monitor leaves the model as it found it,
    also when a second monitor on the model still records."""
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
    first = gs.watch(model, tmp_path / "a", activations=True)
    second = gs.watch(model, tmp_path / "b", activations=True)
    first.close()
    assert any("__reduce_ex__" in m.__dict__ for m in model.modules())  # the second still hooks them
    second.close()
    assert not any("__reduce_ex__" in m.__dict__ for m in model.modules())

"""Layer roles recorded in the store, on networks people train, and the pure role function."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

import pytest
import torch
from torch import nn

import gradsight as gs
from gradsight.store.roles import SCALAR_MAX_NUMEL, Role, as_roles, layer_roles, role_of
from gradsight.store.schema import DB_NAME
from tests.instrument.test_monitor import ReZeroBlock


def _record(model: nn.Module, run_dir: Path, *inputs, loss=lambda out: out.float().pow(2).mean()) -> gs.Run:
    with gs.watch(model, run_dir) as mon:
        loss(model(*inputs)).backward()
        mon.step()
    return gs.open_run(run_dir)


def _roles(run: gs.Run) -> dict[str, str]:
    layers = run.layers()
    return dict(zip(layers.name, layers.role))


# -- the pure function -------------------------------------------------------------------------


@pytest.mark.parametrize(("module_type", "role"), [
    ("Conv2d", Role.WEIGHTED), ("Conv1d", Role.WEIGHTED), ("ConvTranspose2d", Role.WEIGHTED),
    ("Linear", Role.WEIGHTED), ("NonDynamicallyQuantizableLinear", Role.WEIGHTED), ("Conv1D", Role.WEIGHTED),
    ("Conv2dSame", Role.WEIGHTED), ("Embedding", Role.EMBEDDING), ("EmbeddingBag", Role.EMBEDDING),
    ("BatchNorm2d", Role.NORM), ("LayerNorm", Role.NORM), ("GroupNorm", Role.NORM), ("RMSNorm", Role.NORM),
    ("InstanceNorm1d", Role.NORM), ("LlamaRMSNorm", Role.NORM), ("LayerNorm2d", Role.NORM),
    ("SyncBatchNorm", Role.NORM), ("GELU", Role.OTHER), ("Parameter", Role.OTHER),
])
def test_role_of_a_module_type(module_type, role):
    assert role_of(module_type) == role


def test_small_layers_that_are_nothing_else_are_scalars():
    assert role_of("Parameter", name="1.alpha", numel=1) == Role.SCALAR
    assert role_of("PReLU", numel=1) == Role.SCALAR
    assert role_of("Parameter", numel=SCALAR_MAX_NUMEL + 1) == Role.OTHER
    assert role_of("Linear", numel=6) == Role.WEIGHTED  # the type decides first
    assert role_of("Parameter", name="attn.in_proj_weight", numel=3072) == Role.WEIGHTED
    assert role_of("Parameter", name="attn.in_proj_bias", numel=96) == Role.OTHER


def test_layer_roles_places_the_head_and_input_side_parameters():
    layers = [("stem", "Conv2d", 100), ("cls", "Parameter", 64), ("pos", "Parameter", 640), ("ln", "LayerNorm", 64),
              ("fc", "Linear", 640), ("scale", "Parameter", 64), ("head", "Linear", 650)]
    assert layer_roles(layers) == ["weighted", "embedding", "embedding", "norm", "weighted", "other", "head"]
    assert layer_roles([("emb", "Embedding", 99), ("ln_f", "LayerNorm", 8)]) == ["embedding", "norm"]
    assert layer_roles([]) == []


def test_role_filters():
    assert as_roles(None) is None and as_roles("all") is None and as_roles(["weighted", "all"]) is None
    assert as_roles("head") == ("head",) and as_roles(Role.DEPTH) == ("weighted", "head")
    with pytest.raises(ValueError, match="unknown role 'conv'"):
        as_roles("conv")


# -- recorded networks -------------------------------------------------------------------------


def test_resnet18_convolutions_are_weighted_batchnorm_is_norm_fc_is_the_head(tmp_path):
    tv = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    run = _record(tv.models.resnet18(weights=None, num_classes=10), tmp_path / "run", torch.randn(2, 3, 32, 32))
    roles = _roles(run)
    assert roles["conv1"] == roles["layer1.0.conv1"] == roles["layer4.1.conv2"] == "weighted"
    assert roles["layer2.0.downsample.0"] == "weighted" and roles["layer2.0.downsample.1"] == "norm"
    assert roles["bn1"] == roles["layer3.1.bn2"] == "norm"
    assert roles["fc"] == "head"
    assert sorted(set(roles.values())) == ["head", "norm", "weighted"]
    assert sum(r == "weighted" for r in roles.values()) == 20 and not run.layers().tied.any()


def test_vision_transformer_tokens_are_embeddings_and_heads_head_is_the_head(tmp_path):
    tv = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = tv.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32,
                                        mlp_dim=64, num_classes=5)
    run = _record(model, tmp_path / "run", torch.randn(2, 3, 32, 32))
    roles = _roles(run)
    attention = "encoder.layers.encoder_layer_0.self_attention"
    assert roles["conv_proj"] == "weighted"
    assert roles["class_token"] == roles["encoder.pos_embedding"] == "embedding"
    assert roles[f"{attention}.in_proj_weight"] == roles[f"{attention}.out_proj"] == "weighted"
    assert roles[f"{attention}.in_proj_bias"] == "other"
    assert roles["encoder.layers.encoder_layer_0.ln_1"] == roles["encoder.ln"] == "norm"
    assert roles["encoder.layers.encoder_layer_1.mlp.0"] == "weighted"
    assert roles["heads.head"] == "head"


def test_gpt2_tied_token_embedding_has_no_head_row(tmp_path):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=100, n_positions=32)
    model = transformers.GPT2LMHeadModel(config)
    tokens = torch.randint(0, 100, (2, 16))
    run = _record(model, tmp_path / "run", tokens, loss=lambda out: out.logits.float().pow(2).mean())
    layers = run.layers().set_index("name")
    roles = layers["role"].to_dict()
    assert roles["transformer.wte"] == roles["transformer.wpe"] == "embedding"
    assert layers.loc["transformer.wte", "tied"] and not layers.loc["transformer.wpe", "tied"]
    assert layers["tied"].sum() == 1
    for name in ("ln_1", "ln_2"):
        assert roles[f"transformer.h.0.{name}"] == "norm"
    assert roles["transformer.ln_f"] == "norm"
    for name in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"):
        assert roles[f"transformer.h.1.{name}"] == "weighted"
    assert "lm_head" not in roles and "head" not in roles.values()


def test_rezero_alpha_is_a_scalar(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), ReZeroBlock(8), ReZeroBlock(8), nn.Linear(8, 2))
    run = _record(model, tmp_path / "run", torch.randn(5, 4))
    assert _roles(run) == {"0": "weighted", "1.f.0": "weighted", "1.alpha": "scalar", "2.f.0": "weighted",
                           "2.alpha": "scalar", "3": "head"}


def test_stores_without_roles_derive_the_same_roles(tmp_path):
    tv = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = tv.models.VisionTransformer(image_size=32, patch_size=8, num_layers=1, num_heads=2, hidden_dim=32,
                                        mlp_dim=64, num_classes=5)
    run_dir = tmp_path / "run"
    with _record(model, run_dir, torch.randn(2, 3, 32, 32)) as run:
        want = run.layers(kind=None)
        frame = run.frame(role="embedding")
    with closing(sqlite3.connect(run_dir / DB_NAME)) as conn:  # as schema version 2 had it
        rows = conn.execute("SELECT name, depth, module_type, kind FROM layers").fetchall()
        conn.execute("DROP TABLE layers")
        conn.execute("CREATE TABLE layers (name TEXT NOT NULL, depth INTEGER, module_type TEXT NOT NULL, "
                     "kind TEXT NOT NULL, PRIMARY KEY (name, kind))")
        conn.executemany("INSERT INTO layers VALUES (?,?,?,?)", rows)
        conn.commit()
    with gs.open_run(run_dir) as run:
        got = run.layers(kind=None)
        assert run.frame(role="embedding").equals(frame)
    assert got.equals(want)
    assert set(frame["layer"]) == {"class_token", "encoder.pos_embedding"}


def test_roles_are_written_to_the_store_not_only_derived(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(10, 4), nn.LayerNorm(4), nn.Linear(4, 4), nn.Linear(4, 10))
    model[3].weight = model[0].weight  # an output head tied to the input embedding
    _record(model, tmp_path / "run", torch.randint(0, 10, (3, 5)))
    with closing(sqlite3.connect(tmp_path / "run" / DB_NAME)) as conn:
        rows = conn.execute("SELECT name, role, tied FROM layers WHERE kind = 'layer' ORDER BY depth").fetchall()
        (version,) = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    # the tied head's bias still has a row of its own: the last layer, weighted by its type
    assert rows == [("0", "embedding", 1), ("1", "norm", 0), ("2", "weighted", 0), ("3", "head", 0)]
    assert int(version) >= 3  # roles are recorded from schema version 3 on


def test_role_filters_of_the_reader(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 8), nn.BatchNorm1d(8), nn.Linear(8, 2))
    with _record(model, tmp_path / "run", torch.randn(6, 4)) as run:
        assert list(run.series("grad_norm", role="norm").columns) == ["1", "3"]
        assert list(run.series("grad_norm", role=Role.DEPTH).columns) == ["0", "2", "4"]
        assert sorted(run.series("grad_norm", level="param", role="head").columns) == ["4.bias", "4.weight"]
        frame = run.frame(stat="grad_rms", role=["weighted"])
        assert set(frame["layer"]) == {"0", "2"} and set(frame["level"]) == {"layer", "param"}
        assert run.frame(role="all").equals(run.frame())
        summary = run.layer_summary("grad_rms", role="norm")
        assert list(summary["name"]) == ["1", "3"] and set(summary["role"]) == {"norm"}
        assert list(run.layers(role="head")["name"]) == ["4"]

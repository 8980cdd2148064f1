"""The calibration population's networks from torchvision, torch itself and gradsight's zoo.

Every builder returns a :class:`doctor_cases.Training`: a stock network, randomly initialized
as its library does it, with the optimizer its users train it with, on random batches (or on
real data for the ``real_`` networks: MNIST 5k, Fashion-MNIST, the Python standard library as
bytes), sized to stay under 0.25 s per recorded step on one CPU thread.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.nn import functional as F

import gradsight as gs
from doctor_cases import Training, _adam, _adamw, _classification, _cross_entropy, _images, _mlp
from doctor_population import Net

Batch = tuple[Tensor, Tensor]


# -- optimizers, data and losses --------------------------------------------------------

def _sgd(lr: float = 0.1, weight_decay: float = 5e-4) -> Callable[..., torch.optim.Optimizer]:
    """SGD with momentum 0.9, as ResNets and VGGs are trained."""
    return lambda params: torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)


def _token_windows(vocab: int, length: int, batch: int = 8) -> Callable[[torch.Generator], Batch]:
    """Random token ids: inputs ``ids[:, :-1]``, next-token targets ``ids[:, 1:]``."""
    def make(gen: torch.Generator) -> Batch:
        ids = torch.randint(0, vocab, (batch, length + 1), generator=gen)
        return ids[:, :-1], ids[:, 1:]

    return make


def _token_labels(vocab: int, length: int, classes: int, batch: int = 8) -> Callable[[torch.Generator], Batch]:
    def make(gen: torch.Generator) -> Batch:
        return (torch.randint(0, vocab, (batch, length), generator=gen),
                torch.randint(0, classes, (batch,), generator=gen))

    return make


def _lm_loss(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """Cross-entropy of per-position logits (B, T, V) against next tokens (B, T)."""
    logits = model(x)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))


@functools.cache
def _image_data(name: str) -> tuple[Tensor, Tensor]:
    """The training split of ``mnist5k`` or ``fashion-mnist``, normalized by its mean and std."""
    data = gs.data.load_dataset(name, download=False)
    mean, std = ((gs.data.MNIST_MEAN, gs.data.MNIST_STD) if name == "mnist5k"
                 else (gs.data.FASHION_MNIST_MEAN, gs.data.FASHION_MNIST_STD))
    return (data.train_x - mean) / std, data.train_y


def _real_images(name: str, batch: int = 8, size: int | None = None,
                 channels: int = 1) -> Callable[[torch.Generator], Batch]:
    """Random training images of ``name`` (1x28x28; resized to ``size``, repeated to ``channels``)."""
    x_all, y_all = _image_data(name)

    def make(gen: torch.Generator) -> Batch:
        index = torch.randint(0, x_all.shape[0], (batch,), generator=gen)
        x = x_all[index]
        if size is not None and size != x.shape[-1]:
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        if channels != 1:
            x = x.expand(-1, channels, -1, -1).contiguous()
        return x, y_all[index]

    return make


@functools.cache
def _pystdlib() -> Tensor:
    return gs.data.load_dataset("pystdlib", limit=2_000_000).train


def _real_text(length: int, batch: int = 8) -> Callable[[torch.Generator], Batch]:
    """Next-token windows at random offsets of the standard library's bytes (vocabulary 256)."""
    stream = _pystdlib()
    return lambda gen: gs.data.token_batch(stream, length, batch, generator=gen)


# -- torchvision ------------------------------------------------------------------------

def _tv(name: str, optimizer: Callable[..., torch.optim.Optimizer], size: int = 32, batch: int = 8,
        **kwargs) -> Callable[[], Training]:
    def build() -> Training:
        import torchvision

        model = getattr(torchvision.models, name)(weights=None, num_classes=10, **kwargs)
        return _classification(model, (3, size, size), optimizer, batch=batch)

    return build


def _vgg11_bn() -> Training:
    """torchvision's VGG-11 with BatchNorm, its classifier cut to CIFAR size (512-512-10 on 1x1 pooled
    features) as CIFAR code does: the stock 25088-4096-4096 classifier is 120M parameters."""
    import torchvision

    model = torchvision.models.vgg11_bn(weights=None, num_classes=10)
    model.avgpool = nn.AdaptiveAvgPool2d(1)
    model.classifier = nn.Sequential(nn.Linear(512, 512), nn.ReLU(True), nn.Dropout(),
                                     nn.Linear(512, 512), nn.ReLU(True), nn.Dropout(), nn.Linear(512, 10))
    for m in model.classifier.modules():  # torchvision's init of VGG's linear layers
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)
    return _classification(model, (3, 32, 32), _sgd(0.01, 5e-4), batch=8)


# -- torch modules ----------------------------------------------------------------------

class LSTMLanguageModel(nn.Module):
    def __init__(self, vocab: int, width: int = 64, layers: int = 2) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.lstm = nn.LSTM(width, width, num_layers=layers, batch_first=True)
        self.head = nn.Linear(width, vocab)

    def forward(self, ids: Tensor) -> Tensor:
        out, _ = self.lstm(self.embed(ids))
        return self.head(out)


class GRUClassifier(nn.Module):
    """Embedding, a bidirectional GRU, and a linear head on both directions' last hidden states."""

    def __init__(self, vocab: int, classes: int, width: int = 64) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.gru = nn.GRU(width, width, batch_first=True, bidirectional=True)
        self.head = nn.Linear(2 * width, classes)

    def forward(self, ids: Tensor) -> Tensor:
        _, hidden = self.gru(self.embed(ids))  # (2, B, width)
        return self.head(torch.cat([hidden[0], hidden[1]], dim=-1))


class EncoderClassifier(nn.Module):
    """Token and learned position embeddings, an ``nn.TransformerEncoder``, mean pooling, a head."""

    def __init__(self, vocab: int, classes: int, length: int, *, norm_first: bool, width: int = 64,
                 layers: int = 3) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.pos = nn.Parameter(torch.zeros(1, length, width))
        nn.init.normal_(self.pos, std=0.02)
        layer = nn.TransformerEncoderLayer(width, nhead=4, dim_feedforward=4 * width, dropout=0.1,
                                           batch_first=True, norm_first=norm_first)
        self.encoder = nn.TransformerEncoder(layer, layers, norm=nn.LayerNorm(width) if norm_first else None,
                                             enable_nested_tensor=False)
        self.head = nn.Linear(width, classes)

    def forward(self, ids: Tensor) -> Tensor:
        x = self.embed(ids) + self.pos[:, : ids.shape[1]]
        return self.head(self.encoder(x).mean(dim=1))


class PlainCNN(nn.Module):
    """Four 3x3 convolutions with ReLU, max pooling after every second, no normalization."""

    def __init__(self, in_channels: int = 3, classes: int = 10, size: int = 32) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 32, 3, padding=1), nn.ReLU(),
            nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(),
            nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.head = nn.Linear(64 * (size // 4) ** 2, classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x).flatten(1))


class PreLNBlock(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.ln = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, 4 * width)
        self.fc2 = nn.Linear(4 * width, width)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.fc2(F.relu(self.fc1(self.ln(x))))


class ResMLP(nn.Module):
    """A pre-LN residual MLP: stem, 4 blocks ``x + fc2(relu(fc1(ln(x))))``, final LayerNorm, head."""

    def __init__(self, features: int = 64, width: int = 64, blocks: int = 4, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Linear(features, width)
        self.blocks = nn.Sequential(*(PreLNBlock(width) for _ in range(blocks)))
        self.ln = nn.LayerNorm(width)
        self.head = nn.Linear(width, classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.ln(self.blocks(self.stem(x.flatten(1)))))


def _lstm_lm() -> Training:
    model = LSTMLanguageModel(vocab=64)
    return Training(model, _adam(model.parameters()), _token_windows(64, 32), _lm_loss, steps=100)


def _gru_classifier() -> Training:
    model = GRUClassifier(vocab=100, classes=5)
    return Training(model, _adam(model.parameters()), _token_labels(100, 24, 5), _cross_entropy, steps=100)


def _transformer_encoder(norm_first: bool) -> Callable[[], Training]:
    def build() -> Training:
        model = EncoderClassifier(vocab=100, classes=5, length=24, norm_first=norm_first)
        return Training(model, _adamw(model.parameters()), _token_labels(100, 24, 5), _cross_entropy, steps=100)

    return build


def _mlp_relu() -> Training:
    """Six linear layers of width 64 with ReLU, PyTorch's default init."""
    return _classification(_mlp([64] + [64] * 5 + [10], nn.ReLU), (64,), _adam, batch=16)


def _mlp_tanh() -> Training:
    """Four linear layers of width 64 with tanh, PyTorch's default init."""
    return _classification(_mlp([64] * 4 + [10], nn.Tanh), (64,), _adam, batch=16)


def _cnn_plain() -> Training:
    return _classification(PlainCNN(), (3, 32, 32), _adam, batch=8)


def _resmlp_layernorm() -> Training:
    return _classification(ResMLP(), (64,), _adam, batch=16)


# -- gradsight's zoo --------------------------------------------------------------------

def _zoo(name: str, optimizer: Callable[..., torch.optim.Optimizer], shape: tuple[int, ...] = (3, 32, 32),
         batch: int = 8, **kwargs) -> Callable[[], Training]:
    def build() -> Training:
        return _classification(gs.models.create_model(name, **kwargs), shape, optimizer, batch=batch)

    return build


# -- the population ---------------------------------------------------------------------

NETS: list[Net] = [
    Net("tv_resnet18", "resnet", "torchvision", _tv("resnet18", _sgd(0.1, 5e-4))),
    Net("tv_mobilenet_v3_small", "mobilenet", "torchvision", _tv("mobilenet_v3_small", _adam)),
    Net("tv_vgg11_bn", "vgg", "torchvision", _vgg11_bn),
    Net("mlp_relu", "mlp", "torch", _mlp_relu, note="6 ReLU layers of width 64, default init, Adam"),
    Net("mlp_tanh", "mlp", "torch", _mlp_tanh, note="4 tanh layers of width 64, default init, Adam"),
    Net("cnn_plain", "cnn", "torch", _cnn_plain, note="4 convs + ReLU + max pooling, no normalization"),
    Net("zoo_resnet20", "resnet", "gradsight", _zoo("resnet20", _sgd(0.1, 1e-4))),
    Net("zoo_plain20", "plain", "gradsight", _zoo("plain20", _sgd(0.1, 1e-4)),
        note="batch-normed plain CNN of 20 layers (healthy at this depth)"),
    Net("lstm_lm", "lstm", "torch", _lstm_lm, note="embedding, 2-layer LSTM, next-token head; random ids"),
    Net("gru_classifier", "gru", "torch", _gru_classifier, note="bidirectional GRU sequence classifier"),
    Net("torch_transformer_encoder", "transformer", "torch", _transformer_encoder(norm_first=False),
        note="nn.TransformerEncoder, 3 post-LN layers, sequence classifier"),
    Net("resmlp_layernorm", "resmlp", "torch", _resmlp_layernorm,
        note="pre-LN residual MLP, 4 blocks x + fc2(relu(fc1(ln(x))))"),
]

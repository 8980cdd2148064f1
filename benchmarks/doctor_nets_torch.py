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
from doctor_cases import Training, _adam, _adamw, _classification, _cross_entropy, _mlp
from doctor_population import Net

Batch = tuple[Tensor, Tensor]


# -- optimizers, data and losses --------------------------------------------------------

def _sgd(lr: float = 0.1, weight_decay: float = 5e-4) -> Callable[..., torch.optim.Optimizer]:
    """SGD with momentum 0.9, as ResNets and VGGs are trained."""
    return lambda params: torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)


def _sgd_scaled(batch: int, weight_decay: float = 5e-4, base: float = 0.1) -> Callable[..., torch.optim.Optimizer]:
    """:func:`_sgd` at lr ``base`` per 256 samples, scaled linearly to the batch (Goyal et al.
    2017): lr 0.1 at a batch of 4-8 made the first population's ResNets diverge (loss up
    20-7000x). ``base=0.01`` where the loss still rose more than 3x at 0.1 per 256 on random
    64-pixel images (ResNet-50, ResNeXt-50, RegNetX-400MF: 4.5-4.8x)."""
    return _sgd(base * batch / 256, weight_decay)


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


def _tv_vit() -> Training:
    """A small torchvision VisionTransformer: 32x32 images, 8x8 patches, 4 layers of width 64."""
    from torchvision.models import VisionTransformer

    model = VisionTransformer(image_size=32, patch_size=8, num_layers=4, num_heads=4, hidden_dim=64, mlp_dim=256,
                              num_classes=10)
    return _classification(model, (3, 32, 32), _adamw_wd(0.05), batch=8)


def _tv_maxvit() -> Training:
    """A small torchvision MaxViT on 32x32 images: 2 stages (32, 64 channels), partition size 4."""
    from torchvision.models import MaxVit

    model = MaxVit(input_size=(32, 32), stem_channels=16, partition_size=4, block_channels=[32, 64],
                   block_layers=[1, 1], head_dim=16, stochastic_depth_prob=0.2, num_classes=10)
    return _classification(model, (3, 32, 32), _adamw_wd(0.05), batch=8)


def _tv_convnext_small_config() -> Training:
    """torchvision ConvNeXt with convnext_tiny's layout at a quarter of its widths (24-192) and depths 1-1-3-1."""
    from torchvision.models.convnext import CNBlockConfig, ConvNeXt

    blocks = [CNBlockConfig(24, 48, 1), CNBlockConfig(48, 96, 1), CNBlockConfig(96, 192, 3),
              CNBlockConfig(192, None, 1)]
    model = ConvNeXt(blocks, stochastic_depth_prob=0.1, num_classes=10)
    return _classification(model, (3, 32, 32), _adamw_wd(0.05), batch=8)


def _tv_swin_small_config() -> Training:
    """torchvision Swin Transformer with swin_t's layout at half its width (48), depths 2-2-2-2 and
    4x4 windows, on 32x32 images."""
    from torchvision.models import SwinTransformer

    model = SwinTransformer(patch_size=[4, 4], embed_dim=48, depths=[2, 2, 2, 2], num_heads=[3, 6, 12, 24],
                            window_size=[4, 4], stochastic_depth_prob=0.2, num_classes=10)
    return _classification(model, (3, 32, 32), _adamw_wd(0.05), batch=8)


def _adamw_wd(weight_decay: float) -> Callable[..., torch.optim.Optimizer]:
    return lambda params: torch.optim.AdamW(params, lr=1e-3, weight_decay=weight_decay)


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


class RNNClassifier(nn.Module):
    """Embedding, a 2-layer ``nn.RNN`` (tanh), and a linear head on the last hidden state."""

    def __init__(self, vocab: int, classes: int, width: int = 64) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.rnn = nn.RNN(width, width, num_layers=2, nonlinearity="tanh", batch_first=True)
        self.head = nn.Linear(width, classes)

    def forward(self, ids: Tensor) -> Tensor:
        _, hidden = self.rnn(self.embed(ids))
        return self.head(hidden[-1])


class RecurrentTagger(nn.Module):
    """Embedding, a bidirectional ``nn.LSTM``, and a tag per token from both directions (a POS tagger)."""

    def __init__(self, vocab: int, tags: int, width: int = 48) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.lstm = nn.LSTM(width, width, batch_first=True, bidirectional=True)
        self.head = nn.Linear(2 * width, tags)

    def forward(self, ids: Tensor) -> Tensor:
        out, _ = self.lstm(self.embed(ids))
        return self.head(out)


class RecurrentLM(nn.Module):
    """Embedding, a stacked recurrent module (``rnn``), and a next-token head on every step."""

    def __init__(self, vocab: int, rnn: nn.RNNBase) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, rnn.input_size)
        self.rnn = rnn
        self.head = nn.Linear(rnn.proj_size or rnn.hidden_size, vocab)

    def forward(self, ids: Tensor) -> Tensor:
        out, _ = self.rnn(self.embed(ids))
        return self.head(out)


class LastStateClassifier(nn.Module):
    """Embedding, a recurrent module, and a head on the last step: ``h_n`` of the top layer
    (``read="h_n"``) or the output sequence's last step (``read="last_output"``). Time-major
    when the module is (``batch_first=False``)."""

    def __init__(self, vocab: int, classes: int, rnn: nn.RNNBase, read: str) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, rnn.input_size)
        self.rnn = rnn
        self.head = nn.Linear(rnn.proj_size or rnn.hidden_size, classes)
        self.read = read

    def forward(self, ids: Tensor) -> Tensor:
        x = self.embed(ids if self.rnn.batch_first else ids.t())
        out, state = self.rnn(x)
        if self.read == "h_n":
            h_n = state[0] if isinstance(state, tuple) else state
            return self.head(h_n[-1])
        return self.head(out[:, -1] if self.rnn.batch_first else out[-1])


class Seq2Seq(nn.Module):
    """``nn.Transformer`` (2 encoder and 2 decoder layers, width 64) with token and position embeddings."""

    def __init__(self, vocab: int, length: int, width: int = 64) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab + 1, width)  # the last id is the decoder's start token
        self.pos = nn.Embedding(length, width)
        self.transformer = nn.Transformer(width, nhead=4, num_encoder_layers=2, num_decoder_layers=2,
                                          dim_feedforward=4 * width, dropout=0.1, batch_first=True)
        self.head = nn.Linear(width, vocab)
        self.start = vocab

    def forward(self, src: Tensor, tgt: Tensor) -> Tensor:
        """Logits for ``tgt`` (B, T), teacher-forced: the decoder reads the start token and ``tgt[:, :-1]``."""
        dec_in = torch.cat([torch.full_like(tgt[:, :1], self.start), tgt[:, :-1]], dim=1)
        positions = torch.arange(src.shape[1], device=src.device)
        mask = nn.Transformer.generate_square_subsequent_mask(tgt.shape[1])
        out = self.transformer(self.embed(src) + self.pos(positions), self.embed(dec_in) + self.pos(positions),
                               tgt_mask=mask, tgt_is_causal=True)
        return self.head(out)


def _reverse_task(vocab: int, length: int, batch: int = 8) -> Callable[[torch.Generator], Batch]:
    """Random sequences and their reversals."""
    def make(gen: torch.Generator) -> Batch:
        src = torch.randint(0, vocab, (batch, length), generator=gen)
        return src, src.flip(1)

    return make


def _seq2seq_loss(model: nn.Module, src: Tensor, tgt: Tensor) -> Tensor:
    logits = model(src, tgt)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt.reshape(-1))


class CausalSelfAttention(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.c_attn = nn.Linear(width, 3 * width)
        self.c_proj = nn.Linear(width, width)
        self.heads = heads

    def forward(self, x: Tensor) -> Tensor:
        b, t, c = x.shape
        q, k, v = self.c_attn(x).split(c, dim=2)
        q, k, v = (z.view(b, t, self.heads, c // self.heads).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.c_proj(y.transpose(1, 2).contiguous().view(b, t, c))


class GPTMLP(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.c_fc = nn.Linear(width, 4 * width)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * width, width)

    def forward(self, x: Tensor) -> Tensor:
        return self.c_proj(self.gelu(self.c_fc(x)))


class GPTBlock(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = CausalSelfAttention(width, heads)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = GPTMLP(width)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class TinyGPT(nn.Module):
    """nanoGPT's model in miniature: pre-LN blocks, GELU, the token embedding tied to the LM head,
    N(0, 0.02) init with the residual projections (``c_proj``) at 0.02 / sqrt(2 n_layer)."""

    def __init__(self, vocab: int, context: int, width: int = 64, layers: int = 4, heads: int = 4) -> None:
        super().__init__()
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(vocab, width),
            wpe=nn.Embedding(context, width),
            h=nn.ModuleList(GPTBlock(width, heads) for _ in range(layers)),
            ln_f=nn.LayerNorm(width),
        ))
        self.lm_head = nn.Linear(width, vocab, bias=False)
        self.transformer.wte.weight = self.lm_head.weight
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * layers))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(self, idx: Tensor) -> Tensor:
        positions = torch.arange(idx.shape[1], device=idx.device)
        x = self.transformer.wte(idx) + self.transformer.wpe(positions)
        for block in self.transformer.h:
            x = block(x)
        return self.lm_head(self.transformer.ln_f(x))


def _nanogpt_adamw(model: nn.Module) -> torch.optim.Optimizer:
    """nanoGPT's ``configure_optimizers``: weight decay 0.1 on matrices only, betas (0.9, 0.95)."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": 0.1},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=1e-3, betas=(0.9, 0.95))


class DCGAN(nn.Module):
    """A DCGAN generator (noise 32 -> 1x28x28, transposed convs, BatchNorm, ReLU, tanh) and discriminator
    (strided convs, BatchNorm, LeakyReLU 0.2), with DCGAN's N(0, 0.02) init."""

    def __init__(self, noise: int = 32, width: int = 32) -> None:
        super().__init__()
        self.generator = nn.Sequential(
            nn.ConvTranspose2d(noise, 2 * width, 7, 1, 0, bias=False), nn.BatchNorm2d(2 * width), nn.ReLU(True),
            nn.ConvTranspose2d(2 * width, width, 4, 2, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(True),
            nn.ConvTranspose2d(width, 1, 4, 2, 1, bias=False), nn.Tanh(),
        )
        self.discriminator = nn.Sequential(
            nn.Conv2d(1, width, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, True),
            nn.Conv2d(width, 2 * width, 4, 2, 1, bias=False), nn.BatchNorm2d(2 * width), nn.LeakyReLU(0.2, True),
            nn.Conv2d(2 * width, 1, 7, 1, 0, bias=False), nn.Flatten(),
        )
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.normal_(m.weight, 0.0, 0.02)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)


def _gan_loss(model: nn.Module, real: Tensor, z: Tensor) -> Tensor:
    """The discriminator's loss plus the generator's (non-saturating), in one backward pass: the
    generator's term sees the discriminator through detached weights, the discriminator's term sees
    detached fakes, so each network gets only its own loss's gradient (simultaneous updates)."""
    gen, disc = model.generator, model.discriminator
    fake = gen(z)
    ones, zeros = torch.ones(real.shape[0], 1), torch.zeros(real.shape[0], 1)
    d_loss = (F.binary_cross_entropy_with_logits(disc(real), ones)
              + F.binary_cross_entropy_with_logits(disc(fake.detach()), zeros))
    frozen = {name: p.detach() for name, p in disc.named_parameters()}
    g_loss = F.binary_cross_entropy_with_logits(torch.func.functional_call(disc, frozen, (fake,)), ones)
    return d_loss + g_loss


def _dcgan_mnist5k() -> Training:
    model = DCGAN()
    x_all, _ = _image_data("mnist5k")
    images = x_all * gs.data.MNIST_STD + gs.data.MNIST_MEAN  # back to [0, 1], then to tanh's [-1, 1]

    def batch(gen: torch.Generator) -> Batch:
        index = torch.randint(0, images.shape[0], (16,), generator=gen)
        return images[index] * 2 - 1, torch.randn(16, 32, 1, 1, generator=gen)

    optimizer = torch.optim.Adam(model.parameters(), lr=2e-4, betas=(0.5, 0.999))
    return Training(model, optimizer, batch, _gan_loss, steps=100)


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


def _rnn_tanh() -> Training:
    model = RNNClassifier(vocab=100, classes=5)
    return Training(model, _adam(model.parameters()), _token_labels(100, 16, 5), _cross_entropy, steps=100)


def _bilstm_tagger() -> Training:
    model = RecurrentTagger(vocab=100, tags=12)

    def batch(gen: torch.Generator) -> Batch:
        return torch.randint(0, 100, (8, 20), generator=gen), torch.randint(0, 12, (8, 20), generator=gen)

    return Training(model, _adam(model.parameters()), batch, _lm_loss, steps=100)


def _gru_stacked_lm() -> Training:
    """3 GRU layers of width 48, dropout 0.2 between them (pytorch/examples' word language model)."""
    model = RecurrentLM(64, nn.GRU(48, 48, num_layers=3, dropout=0.2, batch_first=True))
    return Training(model, _adam(model.parameters()), _token_windows(64, 40), _lm_loss, steps=100)


def _lstm_proj_classifier() -> Training:
    """2 LSTM layers of 64 cells projected to 32 (``proj_size``, Sak et al. 2014), head on ``h_n``."""
    model = LastStateClassifier(100, 5, nn.LSTM(32, 64, num_layers=2, proj_size=32, batch_first=True), "h_n")
    return Training(model, _adam(model.parameters()), _token_labels(100, 28, 5), _cross_entropy, steps=100)


def _rnn_relu_classifier() -> Training:
    """A ReLU ``nn.RNN`` of width 64 (PyTorch's default init), head on the last output, 12 tokens."""
    model = LastStateClassifier(100, 5, nn.RNN(32, 64, nonlinearity="relu", batch_first=True), "last_output")
    return Training(model, _adam(model.parameters()), _token_labels(100, 12, 5), _cross_entropy, steps=100)


def _lstm_last_step_classifier() -> Training:
    """A time-major 1-layer LSTM of width 96 read at its last output step, 48 tokens."""
    model = LastStateClassifier(100, 5, nn.LSTM(32, 96), "last_output")
    return Training(model, _adam(model.parameters()), _token_labels(100, 48, 5), _cross_entropy, steps=100)


def _real_char_lstm() -> Training:
    """A 1-layer byte-level LSTM of width 192 on 64-byte windows (Karpathy's char-rnn in small)."""
    model = RecurrentLM(256, nn.LSTM(64, 192, batch_first=True))
    return Training(model, _adam(model.parameters()), _real_text(64), _lm_loss, steps=100)


def _torch_transformer() -> Training:
    """``nn.Transformer`` seq2seq, learning to reverse random sequences of 12 tokens."""
    model = Seq2Seq(vocab=32, length=12)
    return Training(model, _adamw(model.parameters()), _reverse_task(32, 12), _seq2seq_loss, steps=100)


def _tiny_gpt() -> Training:
    model = TinyGPT(vocab=64, context=32)
    return Training(model, _nanogpt_adamw(model), _token_windows(64, 32), _lm_loss, steps=100)


def _real_lstm_lm() -> Training:
    model = LSTMLanguageModel(vocab=256, width=128)
    return Training(model, _adam(model.parameters()), _real_text(32), _lm_loss, steps=100)


def _real_tiny_gpt() -> Training:
    model = TinyGPT(vocab=256, context=32)
    return Training(model, _nanogpt_adamw(model), _real_text(32), _lm_loss, steps=100)


def _real_zoo_gpt() -> Training:
    model = gs.models.create_model("gpt_preln", depth=4, context=32)
    return Training(model, _adamw(model.parameters()), _real_text(32), _lm_loss, steps=100)


def _real_cnn_plain(dataset: str) -> Callable[[], Training]:
    def build() -> Training:
        model = PlainCNN(in_channels=1, size=28)
        return Training(model, _adam(model.parameters()), _real_images(dataset), _cross_entropy, steps=100)

    return build


def _real_mlp_relu() -> Training:
    model = _mlp([784] + [64] * 5 + [10], nn.ReLU)
    return Training(model, _adam(model.parameters()), _real_images("mnist5k", batch=16),
                    lambda m, x, y: F.cross_entropy(m(x.flatten(1)), y), steps=100)


def _real_zoo(name: str, dataset: str, optimizer: Callable[..., torch.optim.Optimizer],
              **kwargs) -> Callable[[], Training]:
    def build() -> Training:
        model = gs.models.create_model(name, **kwargs)
        return Training(model, optimizer(model.parameters()), _real_images(dataset), _cross_entropy, steps=100)

    return build


def _real_tv(name: str, dataset: str, optimizer: Callable[..., torch.optim.Optimizer],
             size: int = 32) -> Callable[[], Training]:
    """A torchvision network on 1x28x28 images resized to ``size`` and repeated to 3 channels."""
    def build() -> Training:
        import torchvision

        model = getattr(torchvision.models, name)(weights=None, num_classes=10)
        return Training(model, optimizer(model.parameters()), _real_images(dataset, size=size, channels=3),
                        _cross_entropy, steps=100)

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


# -- bounded activations (tanh, sigmoid) as their users initialize them ---------------------

def _ppo_policy_tanh() -> Training:
    """CleanRL's PPO actor for an 8-dimensional observation and 4 actions: two tanh layers of
    width 64, orthogonal weights (gain sqrt(2), 0.01 for the last), zero biases, Adam 2.5e-4 with
    eps 1e-5; a cross-entropy on random observations and actions stands in for the policy loss."""
    model = nn.Sequential(nn.Linear(8, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 4))
    for layer, gain in zip(model[::2], (2 ** 0.5, 2 ** 0.5, 0.01)):
        nn.init.orthogonal_(layer.weight, gain)
        nn.init.zeros_(layer.bias)

    def batch(gen: torch.Generator) -> Batch:
        return torch.randn(64, 8, generator=gen), torch.randint(0, 4, (64,), generator=gen)

    return Training(model, torch.optim.Adam(model.parameters(), lr=2.5e-4, eps=1e-5), batch, _cross_entropy, steps=100)


class MakemoreMLP(nn.Module):
    """The makemore MLP (Karpathy, "Activations & Gradients, BatchNorm"): an embedding of a
    3-byte context, then five blocks Linear (no bias) -> BatchNorm1d -> tanh of width 100, a
    linear head; weights N(0, 1) scaled by 5/3 / sqrt(fan_in) (the tanh gain), the head x0.1."""

    def __init__(self, vocab: int = 256, context: int = 3, embed: int = 10, width: int = 100, blocks: int = 5):
        super().__init__()
        self.embed = nn.Embedding(vocab, embed)
        layers: list[nn.Module] = []
        fan_in = context * embed
        for _ in range(blocks):
            layers += [nn.Linear(fan_in, width, bias=False), nn.BatchNorm1d(width), nn.Tanh()]
            fan_in = width
        self.blocks = nn.Sequential(*layers)
        self.head = nn.Linear(width, vocab)
        with torch.no_grad():
            for m in self.blocks:
                if isinstance(m, nn.Linear):
                    m.weight.normal_().mul_(5 / 3 / m.in_features ** 0.5)
            self.head.weight.mul_(0.1)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.blocks(self.embed(x).flatten(1)))


def _real_makemore_tanh() -> Training:
    """The makemore MLP predicting the next byte of the standard library from the 3 before it,
    SGD lr 0.1 on batches of 32 (the lecture's recipe)."""
    stream = _pystdlib()

    def batch(gen: torch.Generator) -> Batch:
        start = torch.randint(0, stream.numel() - 4, (32,), generator=gen)
        window = stream[start[:, None] + torch.arange(4)].long()
        return window[:, :3], window[:, 3]

    model = MakemoreMLP()
    return Training(model, torch.optim.SGD(model.parameters(), lr=0.1), batch, _cross_entropy, steps=100)


class LeNet5(nn.Module):
    """LeCun et al. 1998's LeNet-5 as usually written: tanh after each convolution and hidden
    linear layer, average pooling, PyTorch's default init."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 6, 5, padding=2), nn.Tanh(), nn.AvgPool2d(2),
                                      nn.Conv2d(6, 16, 5), nn.Tanh(), nn.AvgPool2d(2))
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(400, 120), nn.Tanh(), nn.Linear(120, 84), nn.Tanh(),
                                        nn.Linear(84, 10))

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


def _real_lenet5_tanh() -> Training:
    model = LeNet5()
    return Training(model, _adam(model.parameters()), _real_images("mnist5k", batch=16), _cross_entropy, steps=100)


def _real_mlp_sigmoid() -> Training:
    """Two sigmoid layers of width 128 on flattened digits, PyTorch's default init, Adam."""
    model = _mlp([784, 128, 128, 10], nn.Sigmoid)
    return Training(model, _adam(model.parameters()), _real_images("mnist5k", batch=16),
                    lambda m, x, y: F.cross_entropy(m(x.flatten(1)), y), steps=100)


def _mlp_tanh_xavier() -> Training:
    """Six tanh layers of width 128, Xavier/Glorot-normal weights with the tanh gain 5/3, Adam."""
    model = _mlp([64] + [128] * 6 + [10], nn.Tanh)
    for m in model:
        if isinstance(m, nn.Linear):
            nn.init.xavier_normal_(m.weight, gain=nn.init.calculate_gain("tanh"))
            nn.init.zeros_(m.bias)
    return _classification(model, (64,), _adam, batch=16)


# -- gradsight's zoo --------------------------------------------------------------------

def _zoo(name: str, optimizer: Callable[..., torch.optim.Optimizer], shape: tuple[int, ...] = (3, 32, 32),
         batch: int = 8, **kwargs) -> Callable[[], Training]:
    def build() -> Training:
        return _classification(gs.models.create_model(name, **kwargs), shape, optimizer, batch=batch)

    return build


# -- the population ---------------------------------------------------------------------

NETS: list[Net] = [
    Net("tv_resnet18", "resnet", "torchvision", _tv("resnet18", _sgd_scaled(8, 5e-4), size=64)),
    Net("tv_mobilenet_v3_small", "mobilenet", "torchvision", _tv("mobilenet_v3_small", _adam, size=64)),
    Net("tv_vgg11_bn", "vgg", "torchvision", _vgg11_bn),
    Net("mlp_relu", "mlp", "torch", _mlp_relu, note="6 ReLU layers of width 64, default init, Adam"),
    Net("mlp_tanh", "mlp", "torch", _mlp_tanh, note="4 tanh layers of width 64, default init, Adam"),
    Net("cnn_plain", "cnn", "torch", _cnn_plain, note="4 convs + ReLU + max pooling, no normalization"),
    Net("zoo_resnet20", "resnet", "gradsight", _zoo("resnet20", _sgd_scaled(8, 1e-4))),
    Net("zoo_plain20", "plain", "gradsight", _zoo("plain20", _sgd_scaled(8, 1e-4)),
        note="batch-normed plain CNN of 20 layers (healthy at this depth)"),
    Net("lstm_lm", "lstm", "torch", _lstm_lm, note="embedding, 2-layer LSTM, next-token head; random ids"),
    Net("gru_classifier", "gru", "torch", _gru_classifier, note="bidirectional GRU sequence classifier"),
    Net("torch_transformer_encoder", "transformer", "torch", _transformer_encoder(norm_first=False),
        note="nn.TransformerEncoder, 3 post-LN layers, sequence classifier"),
    Net("resmlp_layernorm", "resmlp", "torch", _resmlp_layernorm,
        note="pre-LN residual MLP, 4 blocks x + fc2(relu(fc1(ln(x))))"),
    # torchvision
    Net("tv_resnet50", "resnet", "torchvision", _tv("resnet50", _sgd_scaled(8, 1e-4, base=0.01), size=64)),
    Net("tv_resnext50_32x4d", "resnext", "torchvision", _tv("resnext50_32x4d", _sgd_scaled(8, 1e-4, base=0.01), size=64)),
    Net("tv_mobilenet_v2", "mobilenet", "torchvision", _tv("mobilenet_v2", _adam, size=64)),
    Net("tv_efficientnet_b0", "efficientnet", "torchvision", _tv("efficientnet_b0", _adamw, size=64)),
    Net("tv_regnet_x_400mf", "regnet", "torchvision", _tv("regnet_x_400mf", _sgd_scaled(8, 5e-5, base=0.01), size=64)),
    Net("tv_regnet_y_400mf", "regnet", "torchvision", _tv("regnet_y_400mf", _sgd_scaled(8, 5e-5, base=0.01), size=64),
        note="SGD 0.01 per 256 samples, as RegNetX: at 0.1 per 256 its loss ended 2.4x its start when recorded again"),
    Net("tv_shufflenet_v2_x0_5", "shufflenet", "torchvision", _tv("shufflenet_v2_x0_5", _adam, size=64)),
    Net("tv_squeezenet1_1", "squeezenet", "torchvision",
        _tv("squeezenet1_1", lambda params: torch.optim.Adam(params, lr=1e-4), size=64),
        note="Adam 1e-4: at 1e-3 the first update (loss 2.2 -> 3.9) left 6 of its 10 class outputs, which pass "
             "through a ReLU, at zero for good, and the doctor rightly reports them (dead_units)"),
    Net("tv_googlenet", "googlenet", "torchvision",
        _tv("googlenet", _sgd_scaled(8, 1e-4), size=64, aux_logits=False, init_weights=True)),
    Net("tv_mnasnet0_5", "mnasnet", "torchvision", _tv("mnasnet0_5", _adam, size=64)),
    Net("tv_convnext_small_config", "convnext", "torchvision", _tv_convnext_small_config),
    Net("tv_swin_small_config", "swin", "torchvision", _tv_swin_small_config),
    Net("tv_vit", "vit", "torchvision", _tv_vit),
    Net("tv_maxvit", "maxvit", "torchvision", _tv_maxvit),
    # torch
    Net("torch_transformer_encoder_prenorm", "transformer", "torch", _transformer_encoder(norm_first=True),
        note="nn.TransformerEncoder, 3 pre-LN layers (norm_first) and a final LayerNorm, sequence classifier"),
    Net("torch_transformer", "transformer", "torch", _torch_transformer),
    Net("rnn_tanh", "rnn", "torch", _rnn_tanh, note="2-layer tanh nn.RNN sequence classifier, 16 tokens"),
    Net("tiny_gpt", "gpt", "torch", _tiny_gpt, note="nanoGPT-style, 4 layers of width 64, random tokens"),
    Net("bilstm_tagger", "lstm", "torch", _bilstm_tagger,
        note="bidirectional LSTM of width 48, a tag per token from both directions, 20 tokens"),
    Net("gru_stacked_lm", "gru", "torch", _gru_stacked_lm,
        note="3-layer GRU of width 48, dropout 0.2 between layers, next-token head, 40 tokens"),
    Net("lstm_proj_classifier", "lstm", "torch", _lstm_proj_classifier,
        note="2-layer LSTM, 64 cells projected to 32 (proj_size), head on h_n, 28 tokens"),
    Net("rnn_relu_classifier", "rnn", "torch", _rnn_relu_classifier,
        note="ReLU nn.RNN of width 64, head on the last output, 12 tokens"),
    Net("lstm_last_step_classifier", "lstm", "torch", _lstm_last_step_classifier,
        note="time-major LSTM of width 96, head on the last output step, 48 tokens"),
    # gradsight's zoo
    Net("zoo_resnet56", "resnet", "gradsight", _zoo("resnet56", _sgd_scaled(4, 1e-4), batch=4)),
    Net("zoo_preresnet20", "preresnet", "gradsight", _zoo("preresnet20", _sgd_scaled(8, 1e-4))),
    Net("zoo_mlp", "mlp", "gradsight", _zoo("mlp", _adam, (784,), batch=16, depth=6, width=128),
        note="the zoo's plain ReLU MLP, 6 layers of width 128, He init"),
    Net("zoo_resmlp", "resmlp", "gradsight", _zoo("resmlp", _adam, (784,), batch=16, depth=6, width=128),
        note="the zoo's residual MLP x + W2 relu(W1 x), 6 layers of width 128"),
    # real data
    Net("real_mnist5k_cnn_plain", "cnn", "torch", _real_cnn_plain("mnist5k"), data="mnist5k"),
    Net("real_mnist5k_mlp_relu", "mlp", "torch", _real_mlp_relu, data="mnist5k",
        note="6 ReLU layers of width 64 on flattened digits"),
    Net("real_mnist5k_zoo_simple_resnet", "simple_resnet", "gradsight",
        _real_zoo("simple_resnet", "mnist5k", _adam), data="mnist5k"),
    Net("real_mnist5k_dcgan", "gan", "torch", _dcgan_mnist5k, data="mnist5k",
        note="DCGAN generator and discriminator trained together on digits (one Adam, betas 0.5/0.999)"),
    Net("real_fashion_cnn_plain", "cnn", "torch", _real_cnn_plain("fashion-mnist"), data="fashion-mnist"),
    Net("real_fashion_zoo_resnet20", "resnet", "gradsight",
        _real_zoo("resnet20", "fashion-mnist", _sgd_scaled(8, 1e-4), in_channels=1), data="fashion-mnist"),
    Net("real_fashion_tv_resnet18", "resnet", "torchvision", _real_tv("resnet18", "fashion-mnist", _sgd_scaled(8, 5e-4), size=64),
        data="fashion-mnist", note="images resized to 64x64, repeated to 3 channels"),
    Net("real_fashion_tv_mobilenet_v3_small", "mobilenet", "torchvision",
        _real_tv("mobilenet_v3_small", "fashion-mnist", _adam, size=64), data="fashion-mnist",
        note="images resized to 64x64, repeated to 3 channels"),
    Net("real_pystdlib_lstm_lm", "lstm", "torch", _real_lstm_lm, data="pystdlib",
        note="byte-level, 2-layer LSTM of width 128, 32-byte windows"),
    Net("real_pystdlib_char_lstm", "lstm", "torch", _real_char_lstm, data="pystdlib",
        note="byte-level, 1-layer LSTM of width 192, 64-byte windows"),
    Net("real_pystdlib_tiny_gpt", "gpt", "torch", _real_tiny_gpt, data="pystdlib",
        note="nanoGPT-style, 4 layers of width 64, 32-byte windows"),
    Net("real_pystdlib_zoo_gpt_preln", "gpt", "gradsight", _real_zoo_gpt, data="pystdlib",
        note="the zoo's pre-LN GPT, 4 blocks of width 64, 32-byte windows"),
    # bounded activations in hidden layers, as their users initialize them
    Net("ppo_policy_tanh", "rl_policy", "torch", _ppo_policy_tanh,
        note="CleanRL's PPO actor: 2 tanh layers of width 64, orthogonal init (gain sqrt(2))"),
    Net("mlp_tanh_xavier", "mlp", "torch", _mlp_tanh_xavier,
        note="6 tanh layers of width 128, Xavier-normal init with the tanh gain 5/3"),
    Net("real_pystdlib_makemore_tanh", "makemore", "torch", _real_makemore_tanh, data="pystdlib",
        note="the makemore MLP: 5 x (Linear, BatchNorm1d, tanh) of width 100, next byte from 3, SGD 0.1"),
    Net("real_mnist5k_lenet5_tanh", "lenet", "torch", _real_lenet5_tanh, data="mnist5k",
        note="LeNet-5 with tanh and average pooling"),
    Net("real_mnist5k_mlp_sigmoid", "mlp_sigmoid", "torch", _real_mlp_sigmoid, data="mnist5k",
        note="2 sigmoid layers of width 128 on flattened digits, default init, Adam"),
]

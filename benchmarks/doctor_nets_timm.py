"""timm image classifiers for the doctor's calibration population (``doctor_population.py``).

Every network is ``timm.create_model(name, pretrained=False, num_classes=10, ...)``, default
init, trained on random 10-class images of 32 or 64 pixels (``img_size=`` for the models
whose positional embeddings or windows depend on it) with the optimizer its family is
usually trained with: SGD (momentum 0.9, lr 0.01) for classic CNNs, Adam (lr 1e-3) for
mobile CNNs, AdamW (lr 1e-3) for transformers, ConvNeXts, MLP-mixers and hybrids. A few
large-only architectures are built narrower or shallower through their constructor
arguments (the ``note`` says how; the timm model class itself where its registered variant
does not accept the override) to stay near 0.25 s per recorded step on one thread.
"""

from __future__ import annotations

import functools
import importlib

import timm
import torch
from timm.models.mlp_mixer import Affine, ResBlock

from doctor_cases import Training, _adam, _adamw, _classification
from doctor_population import Net


def _sgd(batch: int):
    """SGD momentum 0.9 at lr 0.1 per 256 samples, scaled linearly to the batch (Goyal et al.
    2017): lr 0.01 at a batch of 4 made 14 of the first population's CNNs diverge."""
    return lambda params: torch.optim.SGD(params, lr=0.1 * batch / 256, momentum=0.9)


def _adam_low(params) -> torch.optim.Optimizer:
    """Adam at 1e-4: at 1e-3 HardCoRe-NAS's loss rose 5.6x."""
    return torch.optim.Adam(params, lr=1e-4)


def _adamw_low(params) -> torch.optim.Optimizer:
    """AdamW at 1e-4: at 1e-3 without warmup these MetaFormers' loss rose 3-4x."""
    return torch.optim.AdamW(params, lr=1e-4)


_OPTIMIZERS = {"sgd": _sgd, "adam": lambda batch: _adam, "adam_low": lambda batch: _adam_low,
               "adamw": lambda batch: _adamw,
               "adamw_low": lambda batch: _adamw_low}


def _build(model_name: str, size: int, optimizer: str, batch: int, kwargs: dict) -> Training:
    if "." in model_name:  # a timm model class, built narrower than any registered variant
        module, cls = model_name.rsplit(".", 1)
        model = getattr(importlib.import_module(module), cls)(num_classes=10, **kwargs)
    else:
        model = timm.create_model(model_name, pretrained=False, num_classes=10, **kwargs)
    return _classification(model, (3, size, size), _OPTIMIZERS[optimizer](batch), batch=batch)


#: Networks whose first recipe (32 pixels, batches of 2-8) left a BatchNorm fewer than
#: doctor_population.MIN_BN_VALUES values per channel (``doctor_population.py check``), with
#: the image size they train at instead.
_FEW_BN_VALUES = {n: (64, 8) for n in (
    "resnet18", "resnet26", "resnext26ts", "seresnet18", "regnetx_002", "regnety_002", "dla34", "dla46_c",
    "densenet121", "dpn48b", "repvgg_a0", "hrnet_w18_small", "skresnet18", "cspresnet50", "darknet17",
    "ese_vovnet19b_dw", "tresnet_m", "gernet_s", "hgnetv2_b0", "efficientnet_b0", "efficientnet_lite0", "tinynet_e",
    "mobilenetv3_small_050", "mobilenetv3_small_100", "mobilenetv2_050", "mobilenetv4_conv_small", "ghostnet_050",
    "lcnet_050", "rexnet_100", "hardcorenas_a", "mnasnet_050", "fasternet_t0", "starnet_s050", "inception_next_atto",
    "fastvit_t8", "efficientvit_b0", "mobilevit_xxs", "mobilevitv2_050", "maxvit_pico_rw",
    "efficientformerv2_s0", "visformer_tiny")} | {
    # a BatchNorm on pooled features (LeViT's head, selective-kernel and squeeze-excite
    # layers) normalizes one value per sample: a batch of 32
    n: (64 if n == "levit_128s" else 32, 32) for n in ("levit_128s", "skresnet18", "mobilenetv4_conv_small", "rexnet_100")}


def _net(model_name: str, family: str, size: int, optimizer: str, batch: int = 4, note: str = "",
         name: str | None = None, **kwargs) -> Net:
    if (name or model_name) in _FEW_BN_VALUES:
        # 64-pixel images in batches of 8: BatchNorm at the 2x2 last stage normalizes 32 values
        # per channel (doctor_population.MIN_BN_VALUES); at 32 pixels and a batch of 2-4 it
        # normalized 2-4, and the gradients reached 1e4-1e6 (LeViT: a batch of 32)
        size, batch = _FEW_BN_VALUES[name or model_name]
        if "img_size" in kwargs:
            kwargs["img_size"] = size
    return Net(name=f"timm_{name or model_name}", family=family, source="timm",
               build=functools.partial(_build, model_name, size, optimizer, batch, kwargs), note=note)


NETS: list[Net] = [
    # classic CNNs: SGD momentum 0.9
    _net("resnet18", "resnet", 32, "sgd"),
    _net("resnet26", "resnet", 32, "sgd", note="bottleneck, zero_init_last"),
    _net("resnext26ts", "resnext", 32, "sgd"),
    _net("seresnet18", "senet", 32, "sgd"),
    _net("regnetx_002", "regnet", 32, "sgd", batch=8),
    _net("regnety_002", "regnet", 32, "sgd", batch=8),
    _net("nf_regnet_b0", "nfnet", 32, "sgd", note="normalizer-free RegNet (scaled WS, NF gains)"),
    _net("nf_resnet26", "nfnet", 32, "sgd", batch=2, note="normalizer-free ResNet (scaled WS, NF gains)"),
    _net("dla34", "dla", 32, "sgd"),
    _net("dla46_c", "dla", 32, "sgd", batch=8),
    _net("densenet121", "densenet", 32, "sgd", batch=2),
    _net("dpn48b", "dpn", 32, "sgd", batch=2),
    _net("repvgg_a0", "repvgg", 32, "sgd"),
    # kept out of the calibration at first (doctor_nets_unseen.py), where the doctor reported its
    # gradient growing 3.8e3x toward the input over 53 blocks (1.17 per block, Yang et al. 2019's
    # batch-normed plain network): moved here, and the exploding threshold refitted with it
    _net("mobileone_s0", "mobileone", 64, "adam", batch=8),
    _net("hrnet_w18_small", "hrnet", 32, "sgd", batch=2),
    _net("skresnet18", "sknet", 32, "sgd"),
    _net("cspresnet50", "cspnet", 32, "sgd"),
    _net("darknet17", "darknet", 32, "sgd", batch=8),
    _net("ese_vovnet19b_dw", "vovnet", 32, "sgd", batch=8),
    _net("tresnet_m", "tresnet", 32, "sgd", batch=2),
    _net("gernet_s", "byobnet", 32, "sgd"),
    _net("hgnetv2_b0", "hgnet", 32, "sgd", batch=8),
    # mobile CNNs: Adam
    _net("efficientnet_b0", "efficientnet", 32, "adam"),
    _net("efficientnet_lite0", "efficientnet", 32, "adam"),
    _net("tinynet_e", "efficientnet", 32, "adam", batch=8),
    _net("mobilenetv3_small_050", "mobilenetv3", 32, "adam", batch=8),
    _net("mobilenetv3_small_100", "mobilenetv3", 32, "adam", batch=8),
    _net("mobilenetv2_050", "mobilenetv2", 32, "adam", batch=8),
    _net("mobilenetv4_conv_small", "mobilenetv4", 32, "adam"),
    _net("ghostnet_050", "ghostnet", 32, "adam", batch=8),
    _net("lcnet_050", "lcnet", 32, "adam", batch=8),
    _net("rexnet_100", "rexnet", 32, "adam"),
    _net("hardcorenas_a", "mnasnet", 32, "adam_low"),
    _net("mnasnet_050", "mnasnet", 32, "adam", batch=8),
    _net("fasternet_t0", "fasternet", 32, "adam"),
    _net("starnet_s050", "starnet", 32, "adam", batch=8),
    # ConvNeXts and MetaFormers: AdamW
    _net("convnext_atto", "convnext", 32, "adamw"),
    _net("convnext_femto", "convnext", 32, "adamw"),
    _net("convnextv2_atto", "convnextv2", 32, "adamw", note="GRN"),
    _net("inception_next_atto", "inception_next", 64, "adamw_low"),
    _net("poolformer_s12", "poolformer", 32, "adamw_low", batch=2),
    _net("mambaout_femto", "mambaout", 32, "adamw_low"),
    _net("edgenext_xx_small", "edgenext", 64, "adamw"),
    _net("fastvit_t8", "fastvit", 32, "adamw", batch=2),
    _net("efficientvit_b0", "efficientvit", 32, "adamw"),
    _net("mobilevit_xxs", "mobilevit", 32, "adamw"),
    _net("mobilevitv2_050", "mobilevit", 32, "adamw"),
    # ViT-likes: AdamW
    _net("vit_tiny_patch16_224", "vit", 64, "adamw", name="vit_tiny_patch16", img_size=64),
    _net("deit_tiny_patch16_224", "deit", 64, "adamw", name="deit_tiny_patch16", img_size=64),
    _net("deit_tiny_distilled_patch16_224", "deit", 64, "adamw", name="deit_tiny_distilled_patch16",
         img_size=64, note="distillation token and head"),
    _net("deit3_small_patch16_224", "deit3", 64, "adamw", name="deit3_small_patch16_d6", img_size=64, depth=6,
         note="LayerScale; 6 of its 12 layers"),
    _net("cait_xxs24_224", "cait", 64, "adamw", name="cait_xxs12", img_size=64, depth=12,
         note="LayerScale, class-attention; 12 of its 24 layers"),
    _net("beit_base_patch16_224", "beit", 64, "adamw", name="beit_patch16_d6_192", img_size=64,
         embed_dim=192, depth=6, num_heads=3, note="narrowed: dim 192, 6 layers, 3 heads"),
    _net("eva02_tiny_patch14_224", "eva", 56, "adamw", name="eva02_tiny_patch14", img_size=56),
    _net("xcit_nano_12_p16_224", "xcit", 64, "adamw", name="xcit_nano_12_p16", img_size=64),
    _net("timm.models.mlp_mixer.MlpMixer", "mixer", 64, "adamw", name="mixer_s16_256d", img_size=64,
         patch_size=16, num_blocks=8, embed_dim=256, note="Mixer-S/16 narrowed to dim 256"),
    _net("timm.models.mlp_mixer.MlpMixer", "resmlp", 64, "adamw", name="resmlp_12_192d", img_size=64,
         patch_size=16, num_blocks=12, embed_dim=192, mlp_ratio=4, block_layer=ResBlock, norm_layer=Affine,
         note="ResMLP-12 narrowed to dim 192"),
    _net("timm.models.convmixer.ConvMixer", "convmixer", 32, "adamw", name="convmixer_256_8", dim=256,
         depth=8, kernel_size=7, patch_size=4, act_layer=torch.nn.ReLU,
         note="ConvMixer-768/32 narrowed to dim 256, depth 8, patch 4"),
    _net("crossvit_tiny_240", "crossvit", 120, "adamw", name="crossvit_tiny", img_size=120, batch=2),
    _net("swin_tiny_patch4_window7_224", "swin", 32, "adamw", name="swin_patch4_window4_48d", img_size=32,
         window_size=4, embed_dim=48, batch=2, note="Swin-T narrowed to dim 48, window 4"),
    _net("levit_128s", "levit", 64, "adamw", img_size=64),
    _net("pvt_v2_b0", "pvt_v2", 64, "adamw"),
    _net("coat_lite_tiny", "coat", 32, "adamw", img_size=32),
    _net("maxvit_pico_rw_256", "maxvit", 32, "adamw", name="maxvit_pico_rw", img_size=32, batch=2),
    _net("efficientformerv2_s0", "efficientformer", 32, "adamw", img_size=32, batch=2),
    _net("gcvit_xxtiny", "gcvit", 32, "adamw_low", img_size=32, batch=2),
    _net("visformer_tiny", "visformer", 32, "adamw", img_size=32, batch=2),
    _net("tnt_s_patch16_224", "tnt", 64, "adamw", name="tnt_s_patch16_d4", img_size=64, depth=4, batch=2,
         note="4 of its 12 layers"),
    _net("timm.models.volo.VOLO", "volo", 64, "adamw", name="volo_d1_shallow", img_size=64,
         layers=(2, 2, 2, 1), embed_dims=(192, 384, 384, 384), num_heads=(6, 12, 12, 12), batch=2,
         note="VOLO-D1 with layers (2, 2, 2, 1)"),
    _net("timm.models.nest.Nest", "nest", 64, "adamw", name="nest_tiny_shallow", img_size=64,
         embed_dims=(96, 192, 384), num_heads=(3, 6, 12), depths=(1, 1, 2), batch=2,
         note="NesT-T with depths (1, 1, 2)"),
    _net("pit_ti_224", "pit", 64, "adamw", name="pit_ti", img_size=64),
    _net("hiera_tiny_224", "hiera", 32, "adamw", name="hiera_tiny_48d", img_size=32, embed_dim=48, batch=2,
         note="Hiera-T narrowed to dim 48"),
]

"""Hugging Face networks for the doctor's calibration population (``doctor_population.py``).

``transformers`` models are built from their configs (never ``from_pretrained``), default
init, each family at two sizes:

* ``*_tiny``: hidden 32-64, 2 layers, 2-4 heads, vocabulary 256, batch 8;
* ``*_wide``: the family's real width and init conventions (768 for the BERT-base-like
  encoders, GPT-2, OPT, ViT-B, BEiT-B and the LLaMA-like decoders, 1024 for BLOOM-560m, 512
  for T5-small, Marian and Whisper-base, 384 for DeiT-S and DINOv2-S, 256 for ELECTRA-small),
  but one layer at width 768 and above (two below, and for ALBERT's shared layer), a
  vocabulary of 1000, batch 2. Families whose base width is over the budget of 0.25 s per
  recorded step even so (Funnel, BART, wav2vec2, HuBERT) are only tiny.

Token models see 16 random tokens: causal LMs train on next-token prediction, encoders as
``*ForSequenceClassification`` on 10 random labels, encoder-decoders on random label
sequences. Vision models are ``*ForImageClassification`` on 32- to 64-pixel images, speech
models ``*ForSequenceClassification`` (``WhisperForAudioClassification``) on 1 s of random
audio (log-mel features for Whisper); wav2vec2 and HuBERT keep their default LayerDrop of
0.1. CLIP trains on its contrastive loss.

Optimizer: AdamW, lr 1e-3 for the tiny networks and 5e-4 for the wide ones (the pretraining
peak lr at that width: 6e-4 for GPT-2 small and RoBERTa-base, 3e-4 for LLaMA, 1e-4 for
BERT-base; no warmup here). ``diffusers`` UNets train on the DDPM noise-prediction MSE with
AdamW lr 1e-4 (its training examples' default); ``peft`` LoRA adapters
(``get_peft_model``, only the adapters, and a classifier head, trainable) with AdamW lr 1e-3.
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Callable

import torch
import transformers
from torch import Tensor, nn
from torch.nn import functional as F

from doctor_cases import Batch, Training, _next_token, _tokens
from doctor_population import Net

TINY_LR, WIDE_LR = 1e-3, 5e-4
#: The wide vision transformers and ConvNeXt: at 5e-4 without warmup their loss rose 3-4x.
WIDE_VISION_LR = 1e-4
LENGTH = 16
TINY_VOCAB, WIDE_VOCAB = 256, 1000


def _adamw(model: nn.Module, lr: float) -> torch.optim.Optimizer:
    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)


# -- batches and losses -----------------------------------------------------------------

def _labelled_tokens(vocab: int, batch: int, classes: int = 10) -> Callable[[torch.Generator], Batch]:
    def make(gen: torch.Generator) -> Batch:
        return (torch.randint(0, vocab, (batch, LENGTH), generator=gen),
                torch.randint(0, classes, (batch,), generator=gen))

    return make


def _token_pairs(vocab: int, batch: int) -> Callable[[torch.Generator], Batch]:
    """Random source and target sequences of ``LENGTH`` tokens."""
    def make(gen: torch.Generator) -> Batch:
        return (torch.randint(0, vocab, (batch, LENGTH), generator=gen),
                torch.randint(0, vocab, (batch, LENGTH), generator=gen))

    return make


def _signals(shape: tuple[int, ...], batch: int, classes: int = 10) -> Callable[[torch.Generator], Batch]:
    def make(gen: torch.Generator) -> Batch:
        return torch.randn((batch, *shape), generator=gen), torch.randint(0, classes, (batch,), generator=gen)

    return make


def _ids_loss(model: nn.Module, ids: Tensor, labels: Tensor) -> Tensor:
    return model(input_ids=ids, labels=labels).loss


def _pixels_loss(model: nn.Module, pixels: Tensor, labels: Tensor) -> Tensor:
    return model(pixel_values=pixels, labels=labels).loss


def _audio_loss(model: nn.Module, audio: Tensor, labels: Tensor) -> Tensor:
    return model(input_values=audio, labels=labels).loss


def _features_loss(model: nn.Module, features: Tensor, labels: Tensor) -> Tensor:
    return model(input_features=features, labels=labels).loss


# -- transformers -----------------------------------------------------------------------

def _build(kind: str, model_class: str, config_class: str, wide: bool, batch: int, samples: int, config: dict,
           lr: float | None = None) -> Training:
    cfg = getattr(transformers, config_class)(**config)
    model = getattr(transformers, model_class)(cfg)
    lr = lr or (WIDE_LR if wide else TINY_LR)
    vocab = WIDE_VOCAB if wide else TINY_VOCAB
    if kind == "causal":
        data, loss = _tokens(vocab, LENGTH, batch), _next_token
    elif kind == "encoder":
        data, loss = _labelled_tokens(vocab, batch), _ids_loss
    elif kind == "seq2seq":
        data, loss = _token_pairs(vocab, batch), _ids_loss
    elif kind == "vision":
        size = config["image_size"]
        data, loss = _signals((3, size, size), batch), _pixels_loss
    elif kind == "audio":
        data, loss = _signals((samples,), batch), _audio_loss
    elif kind == "whisper":
        data, loss = _signals((cfg.num_mel_bins, 2 * cfg.max_source_positions), batch), _features_loss
    else:
        raise ValueError(kind)
    return Training(model, _adamw(model, lr), data, loss, steps=100)


def _net(name: str, family: str, kind: str, model_class: str, config_class: str, *, wide: bool,
         batch: int | None = None, samples: int = 16000, note: str = "", lr: float | None = None, **config) -> Net:
    if kind in ("causal", "encoder", "seq2seq"):
        config.setdefault("vocab_size", WIDE_VOCAB if wide else TINY_VOCAB)
    if kind in ("encoder", "vision", "audio", "whisper"):
        config.setdefault("num_labels", 10)
    build = functools.partial(_build, kind, model_class, config_class, wide, batch or (2 if wide else 8), samples,
                              config, lr)
    return Net(name=f"hf_{name}", family=family, source="transformers", build=build, note=note)


# tiny sizes shared by the families whose configs use the BERT names
_BERT_TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                  max_position_embeddings=64)
_LLAMA_TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, max_position_embeddings=64)
_LLAMA_WIDE = dict(hidden_size=768, intermediate_size=2048, num_hidden_layers=1, num_attention_heads=12,
                   num_key_value_heads=4)
_DEBERTA = dict(relative_attention=True, pos_att_type=["p2c", "c2p"], position_biased_input=False,
                max_relative_positions=-1, norm_rel_ebd="layer_norm", share_att_key=True, layer_norm_eps=1e-7,
                type_vocab_size=0)
_VIT_TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=32,
                 patch_size=4)
_AUDIO_TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                   conv_dim=(32,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2,
                   classifier_proj_size=32)

TRANSFORMERS_NETS: list[Net] = [
    # encoders: sequence classification, 10 random labels
    _net("bert_tiny", "bert", "encoder", "BertForSequenceClassification", "BertConfig", wide=False, **_BERT_TINY),
    _net("bert_wide", "bert", "encoder", "BertForSequenceClassification", "BertConfig", wide=True,
         num_hidden_layers=1, note="BERT-base width (768, 12 heads), 1 layer"),
    _net("roberta_tiny", "roberta", "encoder", "RobertaForSequenceClassification", "RobertaConfig", wide=False,
         **_BERT_TINY),
    _net("roberta_wide", "roberta", "encoder", "RobertaForSequenceClassification", "RobertaConfig", wide=True,
         num_hidden_layers=1, max_position_embeddings=514, type_vocab_size=1, layer_norm_eps=1e-5,
         note="RoBERTa-base width, 1 layer"),
    _net("distilbert_tiny", "distilbert", "encoder", "DistilBertForSequenceClassification", "DistilBertConfig",
         wide=False, dim=32, n_layers=2, n_heads=2, hidden_dim=64, max_position_embeddings=64),
    _net("distilbert_wide", "distilbert", "encoder", "DistilBertForSequenceClassification", "DistilBertConfig",
         wide=True, n_layers=1, note="DistilBERT-base width, 1 layer"),
    _net("albert_tiny", "albert", "encoder", "AlbertForSequenceClassification", "AlbertConfig", wide=False,
         embedding_size=16, **_BERT_TINY),
    _net("albert_wide", "albert", "encoder", "AlbertForSequenceClassification", "AlbertConfig", wide=True,
         embedding_size=128, hidden_size=768, num_attention_heads=12, intermediate_size=3072, num_hidden_layers=2,
         note="ALBERT-base-v2 width (embedding 128, hidden 768, one shared layer applied twice)"),
    _net("electra_tiny", "electra", "encoder", "ElectraForSequenceClassification", "ElectraConfig", wide=False,
         embedding_size=32, **_BERT_TINY),
    _net("electra_wide", "electra", "encoder", "ElectraForSequenceClassification", "ElectraConfig", wide=True,
         num_hidden_layers=2, note="ELECTRA-small discriminator width (embedding 128, hidden 256), 2 layers"),
    _net("deberta_v2_tiny", "deberta-v2", "encoder", "DebertaV2ForSequenceClassification", "DebertaV2Config",
         wide=False, position_buckets=32, **_DEBERTA, **_BERT_TINY),
    _net("deberta_v2_wide", "deberta-v2", "encoder", "DebertaV2ForSequenceClassification", "DebertaV2Config",
         wide=True, hidden_size=768, num_attention_heads=12, intermediate_size=3072, num_hidden_layers=1,
         position_buckets=256, **_DEBERTA, note="DeBERTa-v3-base width and attention, 1 layer"),
    _net("mobilebert_tiny", "mobilebert", "encoder", "MobileBertForSequenceClassification", "MobileBertConfig",
         wide=False, hidden_size=64, embedding_size=32, true_hidden_size=32, intra_bottleneck_size=32,
         intermediate_size=64, num_attention_heads=2, num_feedforward_networks=2, num_hidden_layers=2,
         max_position_embeddings=64),
    _net("mobilebert_wide", "mobilebert", "encoder", "MobileBertForSequenceClassification", "MobileBertConfig",
         wide=True, num_hidden_layers=2, note="MobileBERT (hidden 512, bottleneck 128, NoNorm), 2 layers"),
    _net("funnel_tiny", "funnel", "encoder", "FunnelForSequenceClassification", "FunnelConfig", wide=False,
         d_model=32, n_head=2, d_head=16, d_inner=64, block_sizes=[1, 1], max_position_embeddings=64),
    # decoders: next-token prediction
    _net("gpt2_tiny", "gpt2", "causal", "GPT2LMHeadModel", "GPT2Config", wide=False,
         n_embd=32, n_layer=2, n_head=2, n_positions=64, bos_token_id=TINY_VOCAB - 1, eos_token_id=TINY_VOCAB - 1),
    _net("gpt2_wide", "gpt2", "causal", "GPT2LMHeadModel", "GPT2Config", wide=True, n_layer=1,
         bos_token_id=WIDE_VOCAB - 1, eos_token_id=WIDE_VOCAB - 1, note="GPT-2 small width (768, 12 heads), 1 layer"),
    _net("gpt_neo_tiny", "gpt-neo", "causal", "GPTNeoForCausalLM", "GPTNeoConfig", wide=False,
         hidden_size=32, num_layers=2, num_heads=2, attention_types=[[["global", "local"], 1]],
         max_position_embeddings=64, window_size=8, bos_token_id=TINY_VOCAB - 1, eos_token_id=TINY_VOCAB - 1),
    _net("gpt_neo_wide", "gpt-neo", "causal", "GPTNeoForCausalLM", "GPTNeoConfig", wide=True,
         hidden_size=768, num_layers=1, num_heads=12, attention_types=[[["global"], 1]],
         bos_token_id=WIDE_VOCAB - 1, eos_token_id=WIDE_VOCAB - 1,
         note="GPT-Neo-125M width, 1 (global) layer"),
    _net("llama_tiny", "llama", "causal", "LlamaForCausalLM", "LlamaConfig", wide=False, **_LLAMA_TINY),
    _net("llama_wide", "llama", "causal", "LlamaForCausalLM", "LlamaConfig", wide=True, **_LLAMA_WIDE,
         note="hidden 768, GQA 12/4 heads, 1 layer"),
    _net("mistral_tiny", "mistral", "causal", "MistralForCausalLM", "MistralConfig", wide=False,
         sliding_window=8, **_LLAMA_TINY),
    _net("mistral_wide", "mistral", "causal", "MistralForCausalLM", "MistralConfig", wide=True,
         sliding_window=8, **_LLAMA_WIDE, note="hidden 768, GQA 12/4 heads, sliding window 8, 1 layer"),
    _net("qwen2_tiny", "qwen2", "causal", "Qwen2ForCausalLM", "Qwen2Config", wide=False, **_LLAMA_TINY),
    _net("qwen2_wide", "qwen2", "causal", "Qwen2ForCausalLM", "Qwen2Config", wide=True, hidden_size=768,
         intermediate_size=2048, num_hidden_layers=1, num_attention_heads=12, num_key_value_heads=2,
         tie_word_embeddings=True, note="hidden 768 (Qwen2-0.5B is 896), GQA 12/2, qkv bias, tied embeddings, 1 layer"),
    _net("phi_tiny", "phi", "causal", "PhiForCausalLM", "PhiConfig", wide=False, hidden_size=64,
         intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=64),
    _net("phi_wide", "phi", "causal", "PhiForCausalLM", "PhiConfig", wide=True, hidden_size=768,
         intermediate_size=3072, num_hidden_layers=1, num_attention_heads=12,
         note="hidden 768 (Phi-1.5 is 2048), parallel attention/MLP, partial rotary, 1 layer"),
    _net("opt_tiny", "opt", "causal", "OPTForCausalLM", "OPTConfig", wide=False, hidden_size=32, ffn_dim=64,
         num_hidden_layers=2, num_attention_heads=2, word_embed_proj_dim=32, max_position_embeddings=64),
    _net("opt_wide", "opt", "causal", "OPTForCausalLM", "OPTConfig", wide=True, num_hidden_layers=1,
         note="OPT-125m width, 1 layer"),
    _net("bloom_tiny", "bloom", "causal", "BloomForCausalLM", "BloomConfig", wide=False, hidden_size=32,
         n_layer=2, n_head=2),
    _net("bloom_wide", "bloom", "causal", "BloomForCausalLM", "BloomConfig", wide=True, hidden_size=1024,
         n_layer=1, n_head=16, batch=2, note="BLOOM-560m width (1024, ALiBi), 1 layer"),
    _net("gemma_tiny", "gemma", "causal", "GemmaForCausalLM", "GemmaConfig", wide=False, hidden_size=64,
         intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1, head_dim=16,
         max_position_embeddings=64),
    _net("gemma_wide", "gemma", "causal", "GemmaForCausalLM", "GemmaConfig", wide=True, hidden_size=768,
         intermediate_size=3072, num_hidden_layers=1, num_attention_heads=3, num_key_value_heads=1, head_dim=256,
         note="hidden 768, MQA with head_dim 256, scaled embeddings, 1 layer"),
    _net("falcon_tiny", "falcon", "causal", "FalconForCausalLM", "FalconConfig", wide=False, hidden_size=64,
         num_hidden_layers=2, num_attention_heads=4),
    _net("falcon_wide", "falcon", "causal", "FalconForCausalLM", "FalconConfig", wide=True, hidden_size=768,
         num_hidden_layers=1, num_attention_heads=12, note="hidden 768, multi-query, parallel attention, 1 layer"),
    # encoder-decoders: random target sequences
    _net("t5_tiny", "t5", "seq2seq", "T5ForConditionalGeneration", "T5Config", wide=False, d_model=32, d_ff=64,
         d_kv=16, num_heads=2, num_layers=2, num_decoder_layers=2, decoder_start_token_id=0),
    _net("t5_wide", "t5", "seq2seq", "T5ForConditionalGeneration", "T5Config", wide=True, num_layers=1,
         num_decoder_layers=1, decoder_start_token_id=0, note="T5-small width (512, 8 heads), 1+1 layers"),
    _net("bart_tiny", "bart", "seq2seq", "BartForConditionalGeneration", "BartConfig", wide=False, d_model=32,
         encoder_layers=2, decoder_layers=2, encoder_attention_heads=2, decoder_attention_heads=2,
         encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=64),
    _net("marian_tiny", "marian", "seq2seq", "MarianMTModel", "MarianConfig", wide=False, d_model=32,
         encoder_layers=2, decoder_layers=2, encoder_attention_heads=2, decoder_attention_heads=2,
         encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=64, pad_token_id=TINY_VOCAB - 1,
         decoder_start_token_id=TINY_VOCAB - 1, eos_token_id=0),
    _net("marian_wide", "marian", "seq2seq", "MarianMTModel", "MarianConfig", wide=True, d_model=512,
         encoder_layers=1, decoder_layers=1, encoder_attention_heads=8, decoder_attention_heads=8,
         encoder_ffn_dim=2048, decoder_ffn_dim=2048, max_position_embeddings=512, pad_token_id=WIDE_VOCAB - 1,
         decoder_start_token_id=WIDE_VOCAB - 1, eos_token_id=0,
         note="opus-mt width (512, swish, scaled embeddings, sinusoidal positions), 1+1 layers"),
    # vision: image classification
    _net("vit_tiny", "vit", "vision", "ViTForImageClassification", "ViTConfig", wide=False, **_VIT_TINY),
    _net("vit_wide", "vit", "vision", "ViTForImageClassification", "ViTConfig", wide=True, lr=WIDE_VISION_LR, num_hidden_layers=1,
         image_size=64, patch_size=16, note="ViT-B/16 width at 64 px, 1 layer"),
    _net("deit_tiny", "deit", "vision", "DeiTForImageClassification", "DeiTConfig", wide=False, **_VIT_TINY),
    _net("deit_wide", "deit", "vision", "DeiTForImageClassification", "DeiTConfig", wide=True, hidden_size=384,
         num_attention_heads=6, intermediate_size=1536, num_hidden_layers=2, image_size=64, patch_size=16,
         note="DeiT-S width at 64 px, 2 layers"),
    _net("beit_tiny", "beit", "vision", "BeitForImageClassification", "BeitConfig", wide=False, **_VIT_TINY),
    _net("beit_wide", "beit", "vision", "BeitForImageClassification", "BeitConfig", wide=True, lr=WIDE_VISION_LR,
         num_hidden_layers=1, image_size=64, patch_size=16,
         note="BEiT-base width (layer scale 0.1) at 64 px, 1 layer"),
    _net("dinov2_tiny", "dinov2", "vision", "Dinov2ForImageClassification", "Dinov2Config", wide=False,
         hidden_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=4),
    _net("dinov2_wide", "dinov2", "vision", "Dinov2ForImageClassification", "Dinov2Config", wide=True, lr=WIDE_VISION_LR,
         hidden_size=384, num_attention_heads=6, num_hidden_layers=2, image_size=56, patch_size=14,
         note="DINOv2-S/14 width (layer scale 1.0) at 56 px, 2 layers"),
    _net("swin_tiny", "swin", "vision", "SwinForImageClassification", "SwinConfig", wide=False, image_size=32,
         patch_size=4, embed_dim=16, depths=[2, 2], num_heads=[2, 2], window_size=4),
    _net("swin_wide", "swin", "vision", "SwinForImageClassification", "SwinConfig", wide=True, image_size=32,
         patch_size=4, embed_dim=96, depths=[2, 2], num_heads=[3, 6], window_size=4,
         note="Swin-T width (96, 192), two stages of 2 blocks, window 4, at 32 px"),
    _net("convnext_tiny", "convnext", "vision", "ConvNextForImageClassification", "ConvNextConfig", wide=False,
         image_size=32, num_stages=2, hidden_sizes=[16, 32], depths=[1, 1]),
    _net("convnext_wide", "convnext", "vision", "ConvNextForImageClassification", "ConvNextConfig", wide=True, lr=WIDE_VISION_LR,
         image_size=32, hidden_sizes=[96, 192, 384, 768], depths=[1, 1, 1, 1],
         note="ConvNeXt-T widths (layer scale 1e-6), one block per stage, at 32 px"),
    # speech: utterance classification
    _net("wav2vec2_tiny", "wav2vec2", "audio", "Wav2Vec2ForSequenceClassification", "Wav2Vec2Config",
         wide=False, batch=4, samples=16000, **_AUDIO_TINY, note="LayerDrop 0.1 (default), 1 s of audio"),
    _net("hubert_tiny", "hubert", "audio", "HubertForSequenceClassification", "HubertConfig", wide=False,
         batch=4, samples=16000, **_AUDIO_TINY, note="LayerDrop 0.1 (default), 1 s of audio"),
    _net("whisper_tiny", "whisper", "whisper", "WhisperForAudioClassification", "WhisperConfig", wide=False,
         d_model=32, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=64, decoder_layers=1,
         max_source_positions=50, classifier_proj_size=32, note="encoder on 1 s of log-mel features"),
    _net("whisper_wide", "whisper", "whisper", "WhisperForAudioClassification", "WhisperConfig", wide=True,
         d_model=512, encoder_layers=2, encoder_attention_heads=8, encoder_ffn_dim=2048, decoder_layers=1,
         max_source_positions=50, note="Whisper-base encoder width (512), 2 layers, 1 s of log-mel features"),
]


# -- CLIP: contrastive image-text loss --------------------------------------------------

def _clip(wide: bool) -> Training:
    from transformers import CLIPConfig, CLIPModel

    if wide:
        text = dict(vocab_size=WIDE_VOCAB, num_hidden_layers=1, max_position_embeddings=LENGTH)
        vision = dict(num_hidden_layers=1, image_size=64, patch_size=16)
        batch, vocab = 4, WIDE_VOCAB
    else:
        text = dict(vocab_size=TINY_VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                    num_attention_heads=2, max_position_embeddings=LENGTH)
        vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                      image_size=32, patch_size=4)
        batch, vocab = 8, TINY_VOCAB
    text.update(bos_token_id=0, eos_token_id=2)  # eos 2: pooled at the largest token id (the original CLIP's)
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=512 if wide else 32))
    size = vision["image_size"]

    def make(gen: torch.Generator) -> Batch:
        return (torch.randn(batch, 3, size, size, generator=gen),
                torch.randint(0, vocab, (batch, LENGTH), generator=gen))

    def loss(model: nn.Module, pixels: Tensor, ids: Tensor) -> Tensor:
        return model(input_ids=ids, pixel_values=pixels, return_loss=True).loss

    return Training(model, _adamw(model, WIDE_LR if wide else TINY_LR), make, loss, steps=100)


CLIP_NETS = [
    Net("hf_clip_tiny", "clip", "transformers", functools.partial(_clip, False),
        note="text and vision towers, contrastive loss on random pairs"),
    Net("hf_clip_wide", "clip", "transformers", functools.partial(_clip, True),
        note="CLIP ViT-B/16 widths (text 512, vision 768) at 64 px, 1 layer each, contrastive loss"),
]


# -- diffusers: DDPM noise prediction ---------------------------------------------------

def _denoising(channels: int, size: int, batch: int, condition: tuple[int, int] | None = None
               ) -> Callable[[torch.Generator], Batch]:
    """Noisy images (and timesteps, and text states) -> the noise, under the DDPM schedule."""
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler(num_train_timesteps=1000)

    def make(gen: torch.Generator) -> Batch:
        clean = torch.randn(batch, channels, size, size, generator=gen)
        noise = torch.randn(clean.shape, generator=gen)
        t = torch.randint(0, 1000, (batch,), generator=gen)
        inputs = [scheduler.add_noise(clean, noise, t), t]
        if condition is not None:
            inputs.append(torch.randn(batch, *condition, generator=gen))
        return tuple(inputs), noise

    return make


def _noise_loss(model: nn.Module, inputs: tuple[Tensor, ...], noise: Tensor) -> Tensor:
    return F.mse_loss(model(*inputs).sample, noise)


def _unet(wide: bool) -> Training:
    from diffusers import UNet2DModel

    channels = (64, 128) if wide else (16, 32)
    model = UNet2DModel(sample_size=16, in_channels=3, out_channels=3, layers_per_block=1,
                        block_out_channels=channels, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                        up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=8 if not wide else 32)
    return Training(model, _adamw(model, 1e-4), _denoising(3, 16, 1 if wide else 2), _noise_loss, steps=100)


def _unet_conditional() -> Training:
    from diffusers import UNet2DConditionModel

    model = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
                                 block_out_channels=(16, 32), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
                                 attention_head_dim=8, norm_num_groups=8)
    return Training(model, _adamw(model, 1e-4), _denoising(4, 8, 2, condition=(8, 32)), _noise_loss, steps=100)


def _diffusers_nets() -> list[Net]:
    if importlib.util.find_spec("diffusers") is None:
        return []
    return [
        Net("hf_diffusers_unet2d_tiny", "unet", "diffusers", functools.partial(_unet, False),
            note="UNet2DModel (16, 32) with an attention stage, 16 px, DDPM noise MSE"),
        Net("hf_diffusers_unet2d_wide", "unet", "diffusers", functools.partial(_unet, True),
            note="UNet2DModel (64, 128) with an attention stage, 16 px, batch 1, DDPM noise MSE"),
        Net("hf_diffusers_unet2d_cond_tiny", "unet", "diffusers", _unet_conditional,
            note="UNet2DConditionModel (16, 32), cross-attention to 8 random text states, 8x8 latents"),
    ]


# -- peft: LoRA adapters ----------------------------------------------------------------

def _lora(base: str) -> Training:
    from peft import LoraConfig, get_peft_model

    net = next(n for n in TRANSFORMERS_NETS if n.name == f"hf_{base}")
    training = net.build()
    if base.startswith("bert"):
        config = LoraConfig(task_type="SEQ_CLS", r=8, lora_alpha=16, lora_dropout=0.1,
                            target_modules=["query", "value"])
    elif base.startswith("gpt2"):
        config = LoraConfig(task_type="CAUSAL_LM", r=8, lora_alpha=16, lora_dropout=0.1, target_modules=["c_attn"],
                            fan_in_fan_out=True)
    else:
        config = LoraConfig(task_type="CAUSAL_LM", r=16, lora_alpha=32, lora_dropout=0.05,
                            target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
    model = get_peft_model(training.model, config)
    return Training(model, _adamw(model, 1e-3), training.batch, training.loss, steps=100)


def _peft_nets() -> list[Net]:
    if importlib.util.find_spec("peft") is None:
        return []
    return [
        Net("hf_peft_lora_gpt2_tiny", "lora", "peft", functools.partial(_lora, "gpt2_tiny"),
            note="LoRA r=8 on c_attn of hf_gpt2_tiny, only adapters trainable"),
        Net("hf_peft_lora_bert_tiny", "lora", "peft", functools.partial(_lora, "bert_tiny"),
            note="LoRA r=8 on query/value of hf_bert_tiny, adapters and classifier trainable"),
        Net("hf_peft_lora_llama_wide", "lora", "peft", functools.partial(_lora, "llama_wide"),
            note="LoRA r=16 on the attention projections of hf_llama_wide, only adapters trainable"),
    ]


NETS: list[Net] = TRANSFORMERS_NETS + CLIP_NETS + _diffusers_nets() + _peft_nets()

"""Networks kept out of the calibration: never recorded with the population, never used to
write or tune a rule (``doctor_population.py record --unseen``). They check what the issue
behind the calibration asks of networks outside it: healthy ones clean at 5, 20 and 100 steps.

Recipes follow the population's (``doctor_nets_timm``, ``doctor_nets_hf``): BatchNorm CNNs
at 64 pixels in batches of 8 (32 values per channel at a 2x2 last stage), SGD at 0.1 per 256
samples for the classic CNNs, Adam for the mobile ones, AdamW for the transformers; Hugging
Face models from tiny configs of families the population does not hold.
"""

from __future__ import annotations

import functools

from doctor_nets_hf import _AUDIO_TINY, _BERT_TINY, _LLAMA_TINY, TINY_VOCAB
from doctor_nets_hf import _net as _hf
from doctor_nets_timm import _build
from doctor_population import Net


def _timm(model_name: str, family: str, size: int, optimizer: str, batch: int = 8, **kwargs) -> Net:
    return Net(name=f"unseen_timm_{model_name}", family=family, source="timm",
               build=functools.partial(_build, model_name, size, optimizer, batch, kwargs))


def _hf_unseen(name: str, *args, **kwargs) -> Net:
    net = _hf(name, *args, **kwargs)
    return Net(name=f"unseen_{net.name}", family=net.family, source=net.source, build=net.build, note=net.note)


_SEQ2SEQ_TINY = dict(d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2,
                     decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=64)

NETS: list[Net] = [
    # classic CNNs: SGD
    _timm("resnet34", "resnet", 64, "sgd"),
    _timm("resnetv2_50", "resnetv2", 64, "sgd"),
    _timm("ecaresnet26t", "resnet", 64, "sgd"),
    _timm("res2net50_14w_8s", "res2net", 64, "sgd"),
    _timm("resnest14d", "resnest", 64, "sgd", batch=32),
    _timm("selecsls42b", "selecsls", 64, "sgd", batch=32),
    _timm("cs3darknet_s", "cspnet", 64, "sgd"),
    _timm("dla60", "dla", 64, "sgd"),
    _timm("regnetz_b16", "byobnet", 64, "sgd"),
    _timm("xception41", "xception", 64, "sgd"),
    _timm("nfnet_l0", "nfnet", 64, "sgd", batch=4),
    _timm("vovnet39a", "vovnet", 64, "sgd"),
    # mobile CNNs: Adam
    _timm("repvit_m1", "repvit", 64, "adam", batch=32),
    _timm("ghostnetv2_100", "ghostnet", 64, "adam", batch=32),
    _timm("efficientnetv2_rw_t", "efficientnet", 64, "adam"),
    _timm("mixnet_s", "efficientnet", 64, "adam"),
    _timm("semnasnet_050", "mnasnet", 64, "adam"),
    _timm("fbnetc_100", "efficientnet", 64, "adam"),
    _timm("mobilenetv2_100", "mobilenetv2", 64, "adam"),
    # vision transformers and MetaFormers: AdamW
    _timm("convit_tiny", "convit", 32, "adamw", batch=4, img_size=32, patch_size=4),
    _timm("gmlp_ti16_224", "gmlp", 64, "adamw", batch=4, img_size=64),
    _timm("pit_xs_224", "pit", 64, "adamw", batch=4, img_size=64),
    _timm("caformer_s18", "metaformer", 32, "adamw_low", batch=4),
    _timm("focalnet_tiny_srf", "focalnet", 32, "adamw", batch=4),
    _timm("davit_tiny", "davit", 64, "adamw", batch=4),
    _timm("vit_relpos_small_patch16_224", "vit", 32, "adamw", batch=4, img_size=32, patch_size=4, depth=4),
    _timm("flexivit_small", "vit", 32, "adamw", batch=4, img_size=32, patch_size=4, depth=4),
    _timm("efficientvit_m0", "efficientvit", 64, "adam", batch=32),
    _timm("tiny_vit_5m_224", "tinyvit", 64, "adamw", batch=8),
    # Hugging Face: families the population does not hold
    _hf_unseen("gpt_neox_tiny", "gpt-neox", "causal", "GPTNeoXForCausalLM", "GPTNeoXConfig", wide=False,
               hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
               max_position_embeddings=64),
    _hf_unseen("gptj_tiny", "gptj", "causal", "GPTJForCausalLM", "GPTJConfig", wide=False, n_embd=64, n_layer=2,
               n_head=4, rotary_dim=8, n_positions=64),
    _hf_unseen("codegen_tiny", "codegen", "causal", "CodeGenForCausalLM", "CodeGenConfig", wide=False, n_embd=64,
               n_layer=2, n_head=4, rotary_dim=8, n_positions=64, n_ctx=64),
    _hf_unseen("gpt_bigcode_tiny", "gpt-bigcode", "causal", "GPTBigCodeForCausalLM", "GPTBigCodeConfig",
               wide=False, n_embd=64, n_layer=2, n_head=4, n_positions=64),
    _hf_unseen("stablelm_tiny", "stablelm", "causal", "StableLmForCausalLM", "StableLmConfig", wide=False,
               **_LLAMA_TINY),
    _hf_unseen("olmo_tiny", "olmo", "causal", "OlmoForCausalLM", "OlmoConfig", wide=False, **_LLAMA_TINY),
    _hf_unseen("gemma2_tiny", "gemma2", "causal", "Gemma2ForCausalLM", "Gemma2Config", wide=False, head_dim=16,
               **_LLAMA_TINY),
    _hf_unseen("phi3_tiny", "phi3", "causal", "Phi3ForCausalLM", "Phi3Config", wide=False, pad_token_id=0,
               **_LLAMA_TINY),
    _hf_unseen("starcoder2_tiny", "starcoder2", "causal", "Starcoder2ForCausalLM", "Starcoder2Config", wide=False,
               **_LLAMA_TINY),
    _hf_unseen("mixtral_tiny", "mixtral", "causal", "MixtralForCausalLM", "MixtralConfig", wide=False,
               num_local_experts=4, num_experts_per_tok=2, **_LLAMA_TINY, note="mixture of 4 experts, top-2"),
    _hf_unseen("mamba_tiny", "mamba", "causal", "MambaForCausalLM", "MambaConfig", wide=False, hidden_size=64,
               state_size=8, num_hidden_layers=2),
    _hf_unseen("biogpt_tiny", "biogpt", "causal", "BioGptForCausalLM", "BioGptConfig", wide=False,
               **_BERT_TINY),
    _hf_unseen("squeezebert_tiny", "squeezebert", "encoder", "SqueezeBertForSequenceClassification",
               "SqueezeBertConfig", wide=False, embedding_size=32, q_groups=2, k_groups=2, v_groups=2,
               post_attention_groups=2, intermediate_groups=2, output_groups=2, **_BERT_TINY),
    _hf_unseen("convbert_tiny", "convbert", "encoder", "ConvBertForSequenceClassification", "ConvBertConfig",
               wide=False, embedding_size=32, **_BERT_TINY),
    _hf_unseen("mpnet_tiny", "mpnet", "encoder", "MPNetForSequenceClassification", "MPNetConfig", wide=False,
               **_BERT_TINY),
    _hf_unseen("fnet_tiny", "fnet", "encoder", "FNetForSequenceClassification", "FNetConfig", wide=False,
               hidden_size=32, num_hidden_layers=2, intermediate_size=64, max_position_embeddings=64),
    _hf_unseen("mbart_tiny", "mbart", "seq2seq", "MBartForConditionalGeneration", "MBartConfig", wide=False,
               **_SEQ2SEQ_TINY),
    _hf_unseen("pegasus_tiny", "pegasus", "seq2seq", "PegasusForConditionalGeneration", "PegasusConfig",
               wide=False, **_SEQ2SEQ_TINY),
    _hf_unseen("resnet_tiny", "hf-resnet", "vision", "ResNetForImageClassification", "ResNetConfig", wide=False,
               image_size=64, embedding_size=16, hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 2, 1]),
    _hf_unseen("regnet_tiny", "hf-regnet", "vision", "RegNetForImageClassification", "RegNetConfig", wide=False,
               image_size=64, embedding_size=16, hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 2, 1],
               groups_width=8),
    _hf_unseen("mobilevit_tiny", "mobilevit", "vision", "MobileViTForImageClassification", "MobileViTConfig",
               wide=False, image_size=64),
    _hf_unseen("segformer_tiny", "segformer", "vision", "SegformerForImageClassification", "SegformerConfig",
               wide=False, image_size=64, depths=[1, 1, 1, 1], hidden_sizes=[16, 32, 64, 128],
               num_attention_heads=[1, 2, 2, 4], decoder_hidden_size=64),
    _hf_unseen("levit_tiny", "levit", "vision", "LevitForImageClassification", "LevitConfig", wide=False,
               image_size=64, batch=32, hidden_sizes=[64, 96, 128], num_attention_heads=[2, 3, 4],
               depths=[1, 1, 1], key_dim=[16, 16, 16]),
    _hf_unseen("data2vec_audio_tiny", "data2vec-audio", "audio", "Data2VecAudioForSequenceClassification",
               "Data2VecAudioConfig", wide=False, batch=4, samples=16000,
               **{**_AUDIO_TINY, "num_conv_pos_embeddings": 5},
               note="5 positional convolution layers, its config's default (num_conv_pos_embeddings counts layers "
                    "here, where wav2vec2 reads it as a kernel size: 16 layers of them, a plain chain, lose 1.5e4x "
                    "of the gradient, which the doctor reported)"),
    _hf_unseen("wavlm_tiny", "wavlm", "audio", "WavLMForSequenceClassification", "WavLMConfig", wide=False,
               batch=4, samples=16000, **_AUDIO_TINY),
]

#: A second set, added after the changes the first one led to (docs/diagnosis.md): never used
#: to write or tune anything, it measures the doctor as it now stands on networks it has not seen.
SECOND: list[Net] = [
    _timm("resnet50d", "resnet", 64, "sgd"),
    _timm("regnety_004", "regnet", 64, "sgd"),
    _timm("seresnext26d_32x4d", "resnext", 64, "sgd"),
    _timm("dpn68", "dpn", 64, "sgd"),
    _timm("hgnet_tiny", "hgnet", 64, "sgd"),
    _timm("efficientnet_b1", "efficientnet", 64, "adam"),
    _timm("lcnet_100", "lcnet", 64, "adam"),
    _timm("rexnetr_100", "rexnet", 64, "adam", batch=32),
    _timm("fastvit_sa12", "fastvit", 64, "adamw"),
    _timm("convnext_pico", "convnext", 32, "adamw"),
    _timm("poolformerv2_s12", "poolformer", 32, "adamw_low", batch=4),
    _timm("convformer_s18", "metaformer", 32, "adamw_low", batch=4),
    _hf_unseen("qwen2_moe_tiny", "qwen2-moe", "causal", "Qwen2MoeForCausalLM", "Qwen2MoeConfig", wide=False,
               num_experts=4, num_experts_per_tok=2, moe_intermediate_size=64, shared_expert_intermediate_size=64,
               **_LLAMA_TINY),
    _hf_unseen("granite_tiny", "granite", "causal", "GraniteForCausalLM", "GraniteConfig", wide=False, **_LLAMA_TINY),
    _hf_unseen("olmoe_tiny", "olmoe", "causal", "OlmoeForCausalLM", "OlmoeConfig", wide=False, num_experts=4,
               num_experts_per_tok=2, **_LLAMA_TINY),
    _hf_unseen("xlnet_tiny", "xlnet", "encoder", "XLNetForSequenceClassification", "XLNetConfig", wide=False,
               d_model=32, n_layer=2, n_head=2, d_inner=64),
    _hf_unseen("mobilenet_v2_tiny", "hf-mobilenet-v2", "vision", "MobileNetV2ForImageClassification",
               "MobileNetV2Config", wide=False, image_size=64, depth_multiplier=0.35, batch=8),
    _hf_unseen("unispeech_sat_tiny", "unispeech-sat", "audio", "UniSpeechSatForSequenceClassification",
               "UniSpeechSatConfig", wide=False, batch=4, samples=16000, **_AUDIO_TINY),
]
NETS += SECOND

#: A third set, added after the faults on the unseen networks (docs/diagnosis.md) and used for
#: nothing else: families neither the population nor the first two sets hold.
THIRD: list[Net] = [
    _timm("sequencer2d_s", "sequencer", 32, "adamw", batch=8),
    _timm("mvitv2_tiny", "mvitv2", 64, "adamw", batch=4, img_size=64),
    _timm("twins_svt_small", "twins", 64, "adamw", batch=4),
    _timm("inception_v3", "inception", 96, "sgd", batch=32),  # its last stage is 1x1 at 96 pixels
    _timm("botnet26t_256", "botnet", 64, "sgd", batch=8, img_size=64),
    _timm("mobilevitv2_050", "mobilevitv2", 64, "adam", batch=8),
    _timm("efficientvit_b0", "efficientvit-b", 64, "adam", batch=8),
    _timm("nextvit_small", "nextvit", 64, "adamw", batch=8),
    _timm("coatnet_nano_rw_224", "coatnet", 64, "adamw", batch=8, img_size=64),
    _timm("hardcorenas_a", "hardcorenas", 64, "adam", batch=32),
    _timm("resnetrs50", "resnetrs", 64, "sgd", batch=8),
    _hf_unseen("cohere_tiny", "cohere", "causal", "CohereForCausalLM", "CohereConfig", wide=False, **_LLAMA_TINY),
    _hf_unseen("persimmon_tiny", "persimmon", "causal", "PersimmonForCausalLM", "PersimmonConfig", wide=False,
               hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
               max_position_embeddings=64),
    _hf_unseen("nemotron_tiny", "nemotron", "causal", "NemotronForCausalLM", "NemotronConfig", wide=False,
               **_LLAMA_TINY),
    _hf_unseen("jamba_tiny", "jamba", "causal", "JambaForCausalLM", "JambaConfig", wide=False, hidden_size=64,
               num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, intermediate_size=128,
               num_experts=4, num_experts_per_tok=2, expert_layer_period=2, expert_layer_offset=1,
               attn_layer_period=2, attn_layer_offset=1, mamba_d_state=8,
               note="hybrid: Mamba and attention layers, a mixture of 4 experts every other layer"),
    _hf_unseen("mpt_tiny", "mpt", "causal", "MptForCausalLM", "MptConfig", wide=False, d_model=64, n_layers=2,
               n_heads=4, max_seq_len=64),
    _hf_unseen("roformer_tiny", "roformer", "encoder", "RoFormerForSequenceClassification", "RoFormerConfig",
               wide=False, **_BERT_TINY),
    _hf_unseen("led_tiny", "led", "seq2seq", "LEDForConditionalGeneration", "LEDConfig", wide=False,
               **{**_SEQ2SEQ_TINY, "max_encoder_position_embeddings": 64, "max_decoder_position_embeddings": 64,
                  "attention_window": 8}),
    _hf_unseen("swinv2_tiny", "swinv2", "vision", "Swinv2ForImageClassification", "Swinv2Config", wide=False,
               image_size=64, patch_size=4, embed_dim=16, depths=[1, 1, 2, 1], num_heads=[1, 2, 2, 4],
               window_size=2),
]
NETS += THIRD

#: A fourth set, added after the third set's change (the weight growth of norm gains) and used for
#: nothing else: the doctor as it then stood, on families none of the sets before held.
FOURTH: list[Net] = [
    _timm("lambda_resnet26t", "lambdanet", 64, "sgd", batch=8, img_size=64),
    _timm("inception_v4", "inception-v4", 96, "sgd", batch=32),
    _timm("vit_medium_patch16_reg4_gap_256", "vit-registers", 32, "adamw", batch=4, img_size=32, patch_size=4,
          depth=4),
    _timm("rdnet_tiny", "rdnet", 64, "adamw", batch=8),
    _timm("repghostnet_050", "repghost", 64, "adam", batch=32),
    _timm("sebotnet33ts_256", "botnet", 64, "sgd", batch=8, img_size=64),
    _timm("swiftformer_xs", "swiftformer", 64, "adamw", batch=8),
    _timm("nf_regnet_b1", "nf-regnet", 64, "sgd", batch=8),
    _timm("gcresnext26ts", "gcnet", 64, "sgd", batch=8),
    _hf_unseen("deepseek_v3_tiny", "deepseek-v3", "causal", "DeepseekV3ForCausalLM", "DeepseekV3Config", wide=False,
               hidden_size=64, intermediate_size=128, moe_intermediate_size=32, num_hidden_layers=3,
               num_attention_heads=4, num_key_value_heads=4, n_routed_experts=4, num_experts_per_tok=2,
               n_group=1, topk_group=1, first_k_dense_replace=1, q_lora_rank=32, kv_lora_rank=16,
               qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=16, max_position_embeddings=64,
               note="multi-head latent attention, a dense first layer, then 4 routed experts top-2"),
    _hf_unseen("qwen3_tiny", "qwen3", "causal", "Qwen3ForCausalLM", "Qwen3Config", wide=False, head_dim=16,
               **_LLAMA_TINY),
    _hf_unseen("qwen3_moe_tiny", "qwen3-moe", "causal", "Qwen3MoeForCausalLM", "Qwen3MoeConfig", wide=False,
               head_dim=16, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, **_LLAMA_TINY),
    _hf_unseen("glm4_tiny", "glm4", "causal", "Glm4ForCausalLM", "Glm4Config", wide=False, head_dim=16, pad_token_id=0,
               **_LLAMA_TINY),
    _hf_unseen("helium_tiny", "helium", "causal", "HeliumForCausalLM", "HeliumConfig", wide=False, head_dim=16,
               **_LLAMA_TINY),
    _hf_unseen("smollm3_tiny", "smollm3", "causal", "SmolLM3ForCausalLM", "SmolLM3Config", wide=False,
               pad_token_id=0, **_LLAMA_TINY),
    _hf_unseen("granitemoe_tiny", "granite-moe", "causal", "GraniteMoeForCausalLM", "GraniteMoeConfig", wide=False,
               num_local_experts=4, num_experts_per_tok=2, **_LLAMA_TINY),
    _hf_unseen("jetmoe_tiny", "jetmoe", "causal", "JetMoeForCausalLM", "JetMoeConfig", wide=False, hidden_size=64,
               num_hidden_layers=2, num_key_value_heads=2, kv_channels=16, intermediate_size=128, num_local_experts=4,
               num_experts_per_tok=2, max_position_embeddings=64),
    _hf_unseen("recurrent_gemma_tiny", "recurrent-gemma", "causal", "RecurrentGemmaForCausalLM",
               "RecurrentGemmaConfig", wide=False, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
               num_attention_heads=4, num_key_value_heads=1, lru_width=64, attention_window_size=16,
               block_types=["recurrent", "recurrent", "attention"],
               note="Griffin: two real-gated linear recurrent blocks, then local attention"),
    _hf_unseen("rwkv_tiny", "rwkv", "causal", "RwkvForCausalLM", "RwkvConfig", wide=False, hidden_size=64,
               num_hidden_layers=2, attention_hidden_size=64, intermediate_size=128, context_length=64),
    _hf_unseen("ctrl_tiny", "ctrl", "causal", "CTRLLMHeadModel", "CTRLConfig", wide=False, n_embd=64, n_layer=2,
               n_head=4, dff=128, n_positions=64),
    _hf_unseen("xglm_tiny", "xglm", "causal", "XGLMForCausalLM", "XGLMConfig", wide=False, d_model=64, num_layers=2,
               attention_heads=4, ffn_dim=128, max_position_embeddings=64),
    _hf_unseen("modernbert_tiny", "modernbert", "encoder", "ModernBertForSequenceClassification", "ModernBertConfig",
               wide=False, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
               max_position_embeddings=64, global_attn_every_n_layers=2, local_attention=16, pad_token_id=0),
    _hf_unseen("rembert_tiny", "rembert", "encoder", "RemBertForSequenceClassification", "RemBertConfig", wide=False,
               input_embedding_size=16, output_embedding_size=16, **_BERT_TINY),
    _hf_unseen("megatron_bert_tiny", "megatron-bert", "encoder", "MegatronBertForSequenceClassification",
               "MegatronBertConfig", wide=False, **_BERT_TINY),
    _hf_unseen("switch_tiny", "switch-transformers", "seq2seq", "SwitchTransformersForConditionalGeneration",
               "SwitchTransformersConfig", wide=False, d_model=32, d_kv=16, d_ff=64, num_layers=2,
               num_decoder_layers=2, num_heads=2, num_experts=4, encoder_sparse_step=1, decoder_sparse_step=1,
               decoder_start_token_id=0, pad_token_id=0,
               note="a mixture of 4 experts (top-1) in every layer of a T5"),
    _hf_unseen("m2m100_tiny", "m2m-100", "seq2seq", "M2M100ForConditionalGeneration", "M2M100Config", wide=False,
               **_SEQ2SEQ_TINY),
    _hf_unseen("plbart_tiny", "plbart", "seq2seq", "PLBartForConditionalGeneration", "PLBartConfig", wide=False,
               **_SEQ2SEQ_TINY),
    _hf_unseen("wav2vec2_conformer_tiny", "wav2vec2-conformer", "audio", "Wav2Vec2ConformerForSequenceClassification",
               "Wav2Vec2ConformerConfig", wide=False, batch=4, samples=16000, **_AUDIO_TINY),
]
NETS += FOURTH

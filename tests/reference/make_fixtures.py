#!/usr/bin/env python3
"""Generate the tiny JanusFlow test checkpoint and the language-model reference outputs.

Usage (from the repository root):

    python3 tests/reference/make_fixtures.py

Outputs
-------
tests/fixtures/tiny/       a tiny *random* JanusFlow checkpoint in the exact Hugging Face layout of
                           deepseek-ai/JanusFlow-1.3B (see docs §9), plus a diffusers VAE in vae/.
tests/fixtures/tiny-ref/   float32 reference outputs of the language model on a few chat prompts.
tests/fixtures/tiny-quant/, tests/fixtures/tiny-quant-ref/
                           a second checkpoint of the same dims whose language model has a trained
                           network's per-layer scale, with its prompt-end logits: the quantization
                           fixture (see QUANT_* below).

Everything is deterministic (fixed seeds, explicit torch.Generator objects, sorted iteration) and
runs on CPU in a few seconds. The script is written from the architecture spec
(/work/shared/docs/janusflow-architecture.md §1, §2.3, §2.4, §2.7, §9); no upstream code is copied.

Only `LlamaForCausalLM` (transformers) and `AutoencoderKL` (diffusers) are library modules; the
SigLIP tower, the ShallowUViT encoder/decoder and the aligners are small nn.Module classes defined
here whose attribute names reproduce the upstream safetensors key names. They carry parameters only
(no forward methods yet); later references for SigLIP/UViT can add forwards to these classes.
"""

import hashlib
import json
import math
import os
import random
import shutil
import sys

import numpy as np
import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

# ----------------------------------------------------------------------------------------------
# Paths and constants
# ----------------------------------------------------------------------------------------------

REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
TINY_DIR = os.path.join(REPO_ROOT, "tests", "fixtures", "tiny")
REF_DIR = os.path.join(REPO_ROOT, "tests", "fixtures", "tiny-ref")
QUANT_DIR = os.path.join(REPO_ROOT, "tests", "fixtures", "tiny-quant")
QUANT_REF_DIR = os.path.join(REPO_ROOT, "tests", "fixtures", "tiny-quant-ref")

CORPUS_SEED = 1234  # tokenizer training corpus (independent of the weight seed)
SEED = int(os.environ.get("FIXTURE_SEED", "92"))  # master seed; keep the default

# Language model (DeepSeek-LLM in HF Llama layout), tiny dims.
LANG = dict(
    hidden_size=64,
    intermediate_size=160,
    max_position_embeddings=512,
    model_type="llama",
    num_attention_heads=4,
    num_hidden_layers=2,
    num_key_value_heads=4,
    torch_dtype="bfloat16",
    vocab_size=500,
)
RMS_EPS = 1e-6  # LlamaConfig default, also used by vision_gen_dec_aligner_norm and the UViT RMSNorms

# SigLIP understanding tower, tiny dims (explicit keys override the preset, docs §9.1).
SIGLIP = dict(
    image_size=64,
    model_name="siglip_tiny_a_patch16_64",
    select_feature="same",
    select_layer=-1,
    width=96,
    layers=2,
    heads=4,
    mlp_ratio=2,
    patch_size=16,
)

# ShallowUViT generation encoder / decoder, tiny dims.
GEN_ENC = dict(
    block_out_channels=[32],
    elementwize_affine=True,  # (sic) typo kept from the real config; ignored by the code
    hidden_size=64,
    input_channels=4,
    kernel_size=2,
    layers_in_middle=2,
    norm_eps=1e-06,
    num_extra_tensors=5,
    padding=0,
    stride=2,
    use_bias=True,
    use_mid_block=True,
)
GEN_DEC = dict(
    block_out_channels=[32],
    elementwise_affine=True,
    hidden_size=64,
    in_channels=32,
    layers_in_middle=2,
    norm_eps=1e-06,
    out_channels=4,
    upsamples=1,
    use_bias=True,
    use_mid_block=True,
)
GEN_IMAGE_SIZE = 32  # top-level extension (docs §9.3): 32 px / VAE factor 2 = latent 16 -> 8x8 tokens

# Tokenizer.
BPE_VOCAB = 380  # V: BPE ids 0..379 (256-byte alphabet + 124 merges)
BOS = "<｜begin▁of▁sentence｜>"  # U+FF5C full-width bars, U+2581 lower one-eighth block
EOS = "<｜end▁of▁sentence｜>"
GEN_TAG = "<｜begin▁of▁generation｜>"
IMAGE_TAG = "<image_placeholder>"
IMAGE_START_TAG = "<begin_of_image>"
IMAGE_END_TAG = "<end_of_image>"

SYSTEM_PROMPT = (
    "You are a helpful language and vision assistant. You are able to understand the visual "
    "content that the user provides, and assist the user with a variety of tasks using natural "
    "language."
)

N_GREEDY = 32  # new tokens decoded greedily per case
MIN_GAP = 1e-3  # required top1-top2 logit margin at every greedy step (we actually get far more)

# Quantization fixture. The main checkpoint's init makes every layer's update as large as the
# residual stream it is added to, so a small weight error is amplified layer after layer; and its
# prompt-end top-2 logits are as close as 0.07 (logit std 3), where any 4-bit rounding decides the
# argmax by chance. A trained 24-layer model is neither: GPT-2's scaled init (residual-branch output
# projections x 1/sqrt(2 * layers)) models its per-layer update size, with the real depth (24), and
# the seed is the first one from QUANT_SEED_BASE whose prompt-end margins are all >= QUANT_MIN_MARGIN
# (a property of the float32 reference alone: the script never quantizes anything).
REAL_LAYERS = 24  # JanusFlow-1.3B's language model depth
QUANT_RESIDUAL_SCALE = 1.0 / math.sqrt(2 * REAL_LAYERS)
QUANT_SEED_BASE = 1000
QUANT_MIN_MARGIN = 0.5  # logits; about 1/6 of the logit std


# ----------------------------------------------------------------------------------------------
# Module classes whose parameter names are the upstream safetensors keys (docs §1.1, §1.4, §1.5)
# ----------------------------------------------------------------------------------------------


class RMSNorm(nn.Module):
    """LlamaRMSNorm-style norm: a single `weight` vector (eps 1e-6)."""

    def __init__(self, dim, eps=RMS_EPS):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps


# --- SigLIP (timm-style VisionTransformer, no class token, global_pool="map") ------------------


class PatchEmbed(nn.Module):
    def __init__(self, patch, width):
        super().__init__()
        self.proj = nn.Conv2d(3, width, kernel_size=patch, stride=patch, bias=True)


class ViTAttention(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.qkv = nn.Linear(width, 3 * width, bias=True)  # rows: Q | K | V, head-major inside each
        self.proj = nn.Linear(width, width, bias=True)


class Mlp(nn.Module):
    def __init__(self, width, hidden):
        super().__init__()
        self.fc1 = nn.Linear(width, hidden, bias=True)
        self.fc2 = nn.Linear(hidden, width, bias=True)


class ViTBlock(nn.Module):
    def __init__(self, width, mlp_hidden):
        super().__init__()
        self.norm1 = nn.LayerNorm(width, eps=1e-6)
        self.attn = ViTAttention(width)
        self.norm2 = nn.LayerNorm(width, eps=1e-6)
        self.mlp = Mlp(width, mlp_hidden)


class AttentionPoolLatent(nn.Module):
    """Parameter layout of timm's AttentionPoolLatent (latent_len 1, no pos_embed, no qk-norm).

    Present in the real checkpoint but never called by JanusFlow; a loader must skip it.
    """

    def __init__(self, width, mlp_hidden):
        super().__init__()
        self.latent = nn.Parameter(torch.zeros(1, 1, width))
        self.q = nn.Linear(width, width, bias=True)
        self.kv = nn.Linear(width, 2 * width, bias=True)
        self.proj = nn.Linear(width, width, bias=True)
        self.norm = nn.LayerNorm(width, eps=1e-6)
        self.mlp = Mlp(width, mlp_hidden)


class SigLIPViT(nn.Module):
    def __init__(self, image_size, patch, width, layers, heads, mlp_ratio):
        super().__init__()
        assert width % heads == 0
        n_tok = (image_size // patch) ** 2
        mlp_hidden = int(width * mlp_ratio)
        self.patch_embed = PatchEmbed(patch, width)
        self.pos_embed = nn.Parameter(torch.zeros(1, n_tok, width))
        self.blocks = nn.ModuleList([ViTBlock(width, mlp_hidden) for _ in range(layers)])
        self.norm = nn.LayerNorm(width, eps=1e-6)
        self.attn_pool = AttentionPoolLatent(width, mlp_hidden)


class CLIPVisionTower(nn.Module):
    """Wrapper: keys are `vision_und_enc_model.vision_tower.*`."""

    def __init__(self, p):
        super().__init__()
        sel = p["select_layer"]
        n_layers = p["layers"] if sel > 0 else min(p["layers"], p["layers"] + sel + 1)
        self.vision_tower = SigLIPViT(
            p["image_size"], p["patch_size"], p["width"], n_layers, p["heads"], p["mlp_ratio"]
        )


# --- ShallowUViT (docs §3.3-3.5) -----------------------------------------------------------------


class TimestepEmbedding(nn.Module):
    """diffusers-style TimestepEmbedding: linear_2(SiLU(linear_1(sinusoid)))."""

    def __init__(self, in_dim, out_dim):
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, out_dim, bias=True)
        self.linear_2 = nn.Linear(out_dim, out_dim, bias=True)


class GRN(nn.Module):
    """ConvNeXt-V2 global response norm; gamma/beta stored as [1,1,1,C] `weight`/`bias`."""

    def __init__(self, dim):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1, 1, 1, dim))
        self.bias = nn.Parameter(torch.zeros(1, 1, 1, dim))


class ConvNeXtBlock(nn.Module):
    def __init__(self, channels, cond_dim):
        super().__init__()
        self.depthwise = nn.Conv2d(channels, channels, 7, padding=3, groups=channels, bias=True)
        self.norm = RMSNorm(channels)
        self.channelwise_linear_1 = nn.Linear(channels, 4 * channels, bias=True)
        self.channelwise_norm = GRN(4 * channels)
        self.channelwise_linear_2 = nn.Linear(4 * channels, channels, bias=True)
        self.cond_embeds_mapper = nn.Linear(cond_dim, 2 * channels, bias=True)  # FiLM scale|shift


class MidBlock(nn.Module):
    def __init__(self, channels, cond_dim, n):
        super().__init__()
        self.res_blocks = nn.ModuleList([ConvNeXtBlock(channels, cond_dim) for _ in range(n)])


class ShallowUViTEncoder(nn.Module):
    def __init__(self, p):
        super().__init__()
        c = p["block_out_channels"][0]
        self.time_embed = TimestepEmbedding(c, p["hidden_size"])  # sinusoid dim = channels
        self.in_conv = nn.Conv2d(
            p["input_channels"], c, p["kernel_size"], stride=p["stride"], padding=p["padding"]
        )
        self.mid_block = MidBlock(p["block_out_channels"][-1], p["hidden_size"], p["layers_in_middle"])


class Unpatchify(nn.Module):
    def __init__(self, channels, out_channels, factor=2):
        super().__init__()
        self.norm = RMSNorm(channels)
        self.unpatch_conv = nn.Conv2d(channels, out_channels * factor * factor, 1, bias=True)


class ShallowUViTDecoder(nn.Module):
    def __init__(self, p):
        super().__init__()
        ch = p["in_channels"] + p["block_out_channels"][-1]  # [LLM branch | skip] concat
        self.input_norm = RMSNorm(p["in_channels"])
        self.mid_block = MidBlock(ch, p["hidden_size"], p["layers_in_middle"])
        self.out_convs = nn.ModuleList([Unpatchify(ch, p["out_channels"])])


# --- Top level: MultiModalityCausalLM (docs §1.1), children in upstream build order -------------


def llama_config():
    from transformers import LlamaConfig

    cfg = LlamaConfig(
        vocab_size=LANG["vocab_size"],
        hidden_size=LANG["hidden_size"],
        intermediate_size=LANG["intermediate_size"],
        num_hidden_layers=LANG["num_hidden_layers"],
        num_attention_heads=LANG["num_attention_heads"],
        num_key_value_heads=LANG["num_key_value_heads"],
        max_position_embeddings=LANG["max_position_embeddings"],
        rms_norm_eps=RMS_EPS,
        rope_theta=10000.0,
        hidden_act="silu",
        attention_bias=False,
        mlp_bias=False,
        tie_word_embeddings=False,
    )
    cfg._attn_implementation = "eager"  # plain softmax attention, the simplest reference
    return cfg


class MultiModalityCausalLM(nn.Module):
    def __init__(self):
        super().__init__()
        from transformers import LlamaForCausalLM

        hid = LANG["hidden_size"]
        self.vision_und_enc_model = CLIPVisionTower(SIGLIP)
        self.vision_und_enc_aligner = nn.Linear(SIGLIP["width"], hid, bias=True)
        self.beg_of_und_embed = nn.Parameter(torch.zeros(1, hid))
        self.vision_gen_enc_model = ShallowUViTEncoder(GEN_ENC)
        self.vision_gen_enc_aligner = nn.Linear(GEN_ENC["block_out_channels"][-1], hid, bias=True)
        self.vision_gen_dec_model = ShallowUViTDecoder(GEN_DEC)
        self.language_model = LlamaForCausalLM(llama_config())
        self.vision_gen_dec_aligner_norm = RMSNorm(hid)
        self.vision_gen_dec_aligner = nn.Linear(hid, GEN_DEC["in_channels"], bias=True)


# ----------------------------------------------------------------------------------------------
# Deterministic random initialisation
# ----------------------------------------------------------------------------------------------

LM_HEAD_GAIN = 3.0  # lm_head std = gain/sqrt(hidden): logits of O(3) -> well-separated argmax


def init_param_(name, p, gen, residual_scale=1.0):
    """Fill one parameter in place. Rules (by name, then by rank):

    * token embeddings, beg_of_und_embed, attn_pool latent: N(0, 1)
    * SigLIP pos_embed: N(0, 0.5^2)
    * GRN gamma/beta (`channelwise_norm.*`): N(0, 0.5^2) (upstream inits them to 0 -> would be a no-op)
    * norm weights (RMSNorm / LayerNorm / GroupNorm): 1 + 0.1 N(0,1); norm biases: 0.1 N(0,1)
    * other weights (rank >= 2): N(0, 1/fan_in), fan_in = prod(shape[1:]); lm_head x LM_HEAD_GAIN;
      the language model's o_proj / down_proj (the residual-branch outputs) x residual_scale
    * other biases: 0.05 N(0,1)
    """
    shape = p.shape

    def randn(std, mean=0.0):
        return torch.randn(shape, generator=gen, dtype=torch.float32) * std + mean

    last = name.split(".")[-1]
    if name.endswith("embed_tokens.weight") or name in ("beg_of_und_embed",) or name.endswith(
        "attn_pool.latent"
    ):
        val = randn(1.0)
    elif name.endswith("pos_embed"):
        val = randn(0.5)
    elif ".channelwise_norm." in name:
        val = randn(0.5)
    elif p.dim() == 1 and ("norm" in name.split(".")[-2] or "layernorm" in name) and last == "weight":
        val = randn(0.1, 1.0)
    elif p.dim() == 1 and "norm" in name.split(".")[-2] and last == "bias":
        val = randn(0.1)
    elif p.dim() >= 2:
        fan_in = int(np.prod(shape[1:]))
        std = 1.0 / math.sqrt(fan_in)
        if name.endswith("lm_head.weight"):
            std *= LM_HEAD_GAIN
        if name.startswith("language_model.") and name.endswith(("self_attn.o_proj.weight", "mlp.down_proj.weight")):
            std *= residual_scale
        val = randn(std)
    elif last == "bias":
        val = randn(0.05)
    else:
        raise ValueError(f"no init rule for {name} {tuple(shape)}")
    with torch.no_grad():
        p.copy_(val)


def randomize_(module, gen, residual_scale=1.0):
    for name, p in sorted(module.named_parameters(), key=lambda kv: kv[0]):
        init_param_(name, p, gen, residual_scale)


# ----------------------------------------------------------------------------------------------
# Expected key list (docs §1.3-1.5 with tiny dims): checked against the built module
# ----------------------------------------------------------------------------------------------


def expected_shapes():
    H, I, V = LANG["hidden_size"], LANG["intermediate_size"], LANG["vocab_size"]
    W, P, S = SIGLIP["width"], SIGLIP["patch_size"], SIGLIP["image_size"]
    M = int(W * SIGLIP["mlp_ratio"])
    N = (S // P) ** 2
    E = GEN_ENC["block_out_channels"][0]
    D = GEN_DEC["in_channels"] + GEN_DEC["block_out_channels"][-1]
    Din = GEN_DEC["in_channels"]
    ex = {}
    lm = "language_model.model."
    ex[lm + "embed_tokens.weight"] = [V, H]
    for i in range(LANG["num_hidden_layers"]):
        b = f"{lm}layers.{i}."
        ex[b + "input_layernorm.weight"] = [H]
        for n in ("q", "k", "v", "o"):
            ex[b + f"self_attn.{n}_proj.weight"] = [H, H]
        ex[b + "post_attention_layernorm.weight"] = [H]
        ex[b + "mlp.gate_proj.weight"] = [I, H]
        ex[b + "mlp.up_proj.weight"] = [I, H]
        ex[b + "mlp.down_proj.weight"] = [H, I]
    ex[lm + "norm.weight"] = [H]
    ex["language_model.lm_head.weight"] = [V, H]

    vt = "vision_und_enc_model.vision_tower."
    ex[vt + "patch_embed.proj.weight"] = [W, 3, P, P]
    ex[vt + "patch_embed.proj.bias"] = [W]
    ex[vt + "pos_embed"] = [1, N, W]
    for i in range(SIGLIP["layers"]):
        b = f"{vt}blocks.{i}."
        for n in ("norm1", "norm2"):
            ex[b + n + ".weight"] = [W]
            ex[b + n + ".bias"] = [W]
        ex[b + "attn.qkv.weight"] = [3 * W, W]
        ex[b + "attn.qkv.bias"] = [3 * W]
        ex[b + "attn.proj.weight"] = [W, W]
        ex[b + "attn.proj.bias"] = [W]
        ex[b + "mlp.fc1.weight"] = [M, W]
        ex[b + "mlp.fc1.bias"] = [M]
        ex[b + "mlp.fc2.weight"] = [W, M]
        ex[b + "mlp.fc2.bias"] = [W]
    ex[vt + "norm.weight"] = [W]
    ex[vt + "norm.bias"] = [W]
    ap = vt + "attn_pool."
    ex[ap + "latent"] = [1, 1, W]
    ex[ap + "q.weight"], ex[ap + "q.bias"] = [W, W], [W]
    ex[ap + "kv.weight"], ex[ap + "kv.bias"] = [2 * W, W], [2 * W]
    ex[ap + "proj.weight"], ex[ap + "proj.bias"] = [W, W], [W]
    ex[ap + "norm.weight"], ex[ap + "norm.bias"] = [W], [W]
    ex[ap + "mlp.fc1.weight"], ex[ap + "mlp.fc1.bias"] = [M, W], [M]
    ex[ap + "mlp.fc2.weight"], ex[ap + "mlp.fc2.bias"] = [W, M], [W]

    ex["vision_und_enc_aligner.weight"] = [H, W]
    ex["vision_und_enc_aligner.bias"] = [H]
    ex["beg_of_und_embed"] = [1, H]

    def convnext(prefix, C):
        ex[prefix + "depthwise.weight"] = [C, 1, 7, 7]
        ex[prefix + "depthwise.bias"] = [C]
        ex[prefix + "norm.weight"] = [C]
        ex[prefix + "channelwise_linear_1.weight"] = [4 * C, C]
        ex[prefix + "channelwise_linear_1.bias"] = [4 * C]
        ex[prefix + "channelwise_norm.weight"] = [1, 1, 1, 4 * C]
        ex[prefix + "channelwise_norm.bias"] = [1, 1, 1, 4 * C]
        ex[prefix + "channelwise_linear_2.weight"] = [C, 4 * C]
        ex[prefix + "channelwise_linear_2.bias"] = [C]
        ex[prefix + "cond_embeds_mapper.weight"] = [2 * C, H]
        ex[prefix + "cond_embeds_mapper.bias"] = [2 * C]

    ge = "vision_gen_enc_model."
    ex[ge + "time_embed.linear_1.weight"] = [H, E]
    ex[ge + "time_embed.linear_1.bias"] = [H]
    ex[ge + "time_embed.linear_2.weight"] = [H, H]
    ex[ge + "time_embed.linear_2.bias"] = [H]
    ex[ge + "in_conv.weight"] = [E, GEN_ENC["input_channels"], 2, 2]
    ex[ge + "in_conv.bias"] = [E]
    for j in range(GEN_ENC["layers_in_middle"]):
        convnext(f"{ge}mid_block.res_blocks.{j}.", E)
    ex["vision_gen_enc_aligner.weight"] = [H, E]
    ex["vision_gen_enc_aligner.bias"] = [H]

    gd = "vision_gen_dec_model."
    ex[gd + "input_norm.weight"] = [Din]
    for j in range(GEN_DEC["layers_in_middle"]):
        convnext(f"{gd}mid_block.res_blocks.{j}.", D)
    ex[gd + "out_convs.0.norm.weight"] = [D]
    ex[gd + "out_convs.0.unpatch_conv.weight"] = [GEN_DEC["out_channels"] * 4, D, 1, 1]
    ex[gd + "out_convs.0.unpatch_conv.bias"] = [GEN_DEC["out_channels"] * 4]
    ex["vision_gen_dec_aligner_norm.weight"] = [H]
    ex["vision_gen_dec_aligner.weight"] = [Din, H]
    ex["vision_gen_dec_aligner.bias"] = [Din]
    return ex


# ----------------------------------------------------------------------------------------------
# JSON config files
# ----------------------------------------------------------------------------------------------


def write_json(path, obj):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, ensure_ascii=False, sort_keys=True)
        f.write("\n")


def write_configs(out):
    config = {
        "architectures": ["MultiModalityCausalLM"],
        "gen_image_size": GEN_IMAGE_SIZE,
        "language_config": dict(LANG),
        "model_type": "multi_modality",
        "torch_dtype": "bfloat16",
        "transformers_version": "4.38.1",
        "vision_gen_dec_config": {
            "cls": "ShallowUViTDecoder",
            "model_type": "vision_gen_dec",
            "params": dict(GEN_DEC),
        },
        "vision_gen_enc_config": {
            "cls": "ShallowUViTEncoder",
            "model_type": "vision_gen_enc",
            "params": dict(GEN_ENC),
        },
        "vision_und_enc_config": {
            "cls": "CLIPVisionTower",
            "model_type": "vision_und_enc",
            "params": dict(SIGLIP),
        },
    }
    write_json(os.path.join(out, "config.json"), config)
    write_json(
        os.path.join(out, "preprocessor_config.json"),
        {
            "background_color": [127, 127, 127],
            "do_normalize": True,
            "image_mean": [0.5, 0.5, 0.5],
            "image_processor_type": "VLMImageProcessor",
            "image_size": SIGLIP["image_size"],
            "image_std": [0.5, 0.5, 0.5],
            "min_size": 14,
            "processor_class": "VLChatProcessor",
            "rescale_factor": 0.00392156862745098,
        },
    )
    write_json(
        os.path.join(out, "processor_config.json"),
        {
            "add_special_token": False,
            "ignore_id": -100,
            "image_end_tag": IMAGE_END_TAG,
            "image_gen_tag": GEN_TAG,
            "image_start_tag": IMAGE_START_TAG,
            "image_tag": IMAGE_TAG,
            "mask_prompt": True,
            "num_image_tokens": (SIGLIP["image_size"] // SIGLIP["patch_size"]) ** 2,
            "processor_class": "VLChatProcessor",
            "sft_format": "deepseek",
        },
    )


# ----------------------------------------------------------------------------------------------
# Tokenizer (docs §2.4, §9.5)
# ----------------------------------------------------------------------------------------------


def make_corpus():
    """A deterministic English corpus (~3k sentences) with digits, punctuation, accents, emoji."""
    rng = random.Random(CORPUS_SEED)
    subjects = ["The model", "A user", "The assistant", "My friend", "The image", "This picture",
                "The cat", "A small dog", "The teacher", "Our team", "The vision encoder",
                "The language model", "She", "He", "They", "We", "You", "It"]
    verbs = ["shows", "describes", "contains", "understands", "generates", "explains", "sees",
             "answers", "provides", "asks about", "writes", "draws", "finds", "helps with"]
    objects = ["a red apple on the table", "the visual content", "a variety of tasks",
               "natural language", "three birds in the sky", "the answer to the question",
               "a beautiful sunset over the sea", "the city at night", "an old wooden house",
               "the number of people", "a helpful description", "the main idea of the text",
               "a café in Paris", "the résumé of a naïve señor", "a crème brûlée",
               "the Zürich train station", "a piñata at the fiesta", "the façade of the hôtel"]
    extras = ["", "", " today", " again", " very quickly", " in detail", " with care",
              " for the user", " in 2024", " at 10:30", " on page 42", " for $3.99"]
    ends = [".", ".", ".", "!", "?", "...", ";"]
    lines = []
    for _ in range(3000):
        s = f"{rng.choice(subjects)} {rng.choice(verbs)} {rng.choice(objects)}{rng.choice(extras)}"
        s += rng.choice(ends)
        r = rng.random()
        if r < 0.15:
            s += f" It costs {rng.randint(0, 99999)} euros, or {rng.randint(1, 999)}.{rng.randint(0, 99):02d}%."
        elif r < 0.25:
            s = f"Q: {s} A: yes, {rng.randint(1, 12)} of {rng.randint(12, 2000)}!"
        elif r < 0.3:
            s += " (see \"notes\", item #" + str(rng.randint(1, 500)) + ") 🙂"
        lines.append(s)
    lines.append(SYSTEM_PROMPT)
    lines.append("User: Hello!\n\nAssistant: Hi, how can I help you?")
    return lines


def build_tokenizer():
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.normalizer = None
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(r"\p{N}{1,3}"), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=BPE_VOCAB,
        min_frequency=2,
        show_progress=False,
        special_tokens=[],  # added afterwards so that they get ids V, V+1, V+2
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(make_corpus(), trainer=trainer)
    assert tok.get_vocab_size() == BPE_VOCAB, tok.get_vocab_size()
    specials = [BOS, EOS, GEN_TAG]
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    for i, t in enumerate(specials):
        assert tok.token_to_id(t) == BPE_VOCAB + i, (t, tok.token_to_id(t))
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A",
        pair=f"{BOS} $A {BOS}:1 $B:1",
        special_tokens=[(BOS, BPE_VOCAB)],
    )
    return tok


def write_tokenizer(out):
    tok = build_tokenizer()
    tok.save(os.path.join(out, "tokenizer.json"))

    def added(content):
        return {"content": content, "lstrip": False, "normalized": False, "rstrip": False,
                "single_word": False, "special": True}

    tok_cfg = {
        "add_bos_token": True,
        "add_eos_token": False,
        "added_tokens_decoder": {
            str(BPE_VOCAB + i): added(t) for i, t in enumerate([BOS, EOS, GEN_TAG])
        },
        "additional_special_tokens": [GEN_TAG],
        "bos_token": BOS,
        "clean_up_tokenization_spaces": False,
        "eos_token": EOS,
        "legacy": True,
        "model_max_length": 16384,
        "pad_token": None,
        "sp_model_kwargs": {},
        "tokenizer_class": "LlamaTokenizerFast",
        "unk_token": None,
        "use_default_system_prompt": False,
    }
    write_json(os.path.join(out, "tokenizer_config.json"), tok_cfg)

    def stm(content):
        d = added(content)
        del d["special"]
        return d

    write_json(
        os.path.join(out, "special_tokens_map.json"),
        {"additional_special_tokens": [stm(GEN_TAG)], "bos_token": stm(BOS), "eos_token": stm(EOS)},
    )


def load_tokenizer_with_image_tags(path):
    """Load tokenizer.json and append the processor's tags like upstream does at runtime (§2.4)."""
    from tokenizers import AddedToken, Tokenizer

    tok = Tokenizer.from_file(path)
    ids = {}
    for tag in (IMAGE_TAG, GEN_TAG, IMAGE_START_TAG, IMAGE_END_TAG):
        if tok.token_to_id(tag) is None:
            tok.add_special_tokens([AddedToken(tag, special=True, normalized=False)])
        ids[tag] = tok.token_to_id(tag)
    return tok, ids


# ----------------------------------------------------------------------------------------------
# Chat prompt builder: "deepseek" SFT format (docs §2.3, §2.7.1)
# ----------------------------------------------------------------------------------------------


def build_prompt(messages, system=SYSTEM_PROMPT):
    """messages: list of {"role": "User"|"Assistant", "content": str}; the last one is a User turn.

    {system}\\n\\n  User: {msg}\\n\\n  Assistant: {reply}<｜end▁of▁sentence｜>  ...  User: {msg}\\n\\nAssistant:
    Every message is stripped; the whole prompt is stripped.
    """
    seps = ["\n\n", EOS]  # after a User message / after an Assistant message
    out = system + seps[0] if system else ""
    roles = ["User", "Assistant"]
    for i, m in enumerate(messages):
        assert m["role"] == roles[i % 2], "messages must alternate User/Assistant, starting with User"
        out += m["role"] + ": " + m["content"].strip() + seps[i % 2]
    assert messages[-1]["role"] == "User"
    out += "Assistant:"  # the open turn: no trailing space
    return out.strip()


CASES = [
    {
        "name": "short",
        "messages": [{"role": "User", "content": "What is in the picture?"}],
    },
    {
        "name": "multi_turn",
        "messages": [
            {"role": "User", "content": "Hello! Who are you?"},
            {"role": "Assistant", "content": "I am a helpful assistant. How can I help you today?"},
            {"role": "User", "content": "  Describe a red apple on the table.  "},
            {"role": "Assistant", "content": "The apple is red, round and shiny; it sits on an old wooden table."},
            {"role": "User", "content": "And how many apples are there?"},
        ],
    },
    {
        "name": "unicode",
        "messages": [
            {
                "role": "User",
                "content": "Señor Müller paid 1234567 € (or 3.99%) for 12 crêpes at the café in Zürich on "
                "2024-11-25 at 10:30 — naïve? Ça va! 🙂🍓 日本",
            }
        ],
    },
    {
        "name": "long",
        "messages": [
            {
                "role": "User",
                "content": "Look at this description and answer. The image shows a small town by a lake in "
                "the late afternoon: about 25 houses with red roofs, an old church with a tall tower, and "
                "a wooden pier where three boats are tied. What time of the day is it, and how many boats "
                "are there?",
            }
        ],
    },
    {
        # Generation-style prompt: empty system prompt (docs §3.1 / pitfall 12).
        "name": "no_system",
        "system": "",
        "messages": [{"role": "User", "content": "A photo of a cat sitting on a red chair."}],
    },
]


# ----------------------------------------------------------------------------------------------
# Independent Llama forward (cross-check of the transformers reference against docs §1.3)
# ----------------------------------------------------------------------------------------------


def manual_llama(sd, ids):
    """Float32 Llama forward written from the spec: pre-norm, rotate-half RoPE, SwiGLU, causal."""
    H, nh = LANG["hidden_size"], LANG["num_attention_heads"]
    hd = H // nh
    T = len(ids)

    def rms(x, w):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + RMS_EPS) * w

    inv = 1.0 / (10000.0 ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd))
    ang = torch.arange(T, dtype=torch.float32)[:, None] * inv[None, :]
    cos = torch.cat([ang.cos(), ang.cos()], -1)
    sin = torch.cat([ang.sin(), ang.sin()], -1)

    def rope(x):  # x [nh, T, hd]
        x1, x2 = x[..., : hd // 2], x[..., hd // 2:]
        return x * cos + torch.cat([-x2, x1], -1) * sin

    p = "model."
    x = sd[p + "embed_tokens.weight"][torch.tensor(ids)]
    hs = [x]
    mask = torch.full((T, T), float("-inf")).triu(1)
    for i in range(LANG["num_hidden_layers"]):
        b = f"{p}layers.{i}."
        h = rms(x, sd[b + "input_layernorm.weight"])
        q = (h @ sd[b + "self_attn.q_proj.weight"].T).view(T, nh, hd).transpose(0, 1)
        k = (h @ sd[b + "self_attn.k_proj.weight"].T).view(T, nh, hd).transpose(0, 1)
        v = (h @ sd[b + "self_attn.v_proj.weight"].T).view(T, nh, hd).transpose(0, 1)
        q, k = rope(q), rope(k)
        a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(hd) + mask, -1) @ v
        x = x + a.transpose(0, 1).reshape(T, H) @ sd[b + "self_attn.o_proj.weight"].T
        h = rms(x, sd[b + "post_attention_layernorm.weight"])
        g = torch.nn.functional.silu(h @ sd[b + "mlp.gate_proj.weight"].T)
        u = h @ sd[b + "mlp.up_proj.weight"].T
        x = x + (g * u) @ sd[b + "mlp.down_proj.weight"].T
        hs.append(x)
    xn = rms(x, sd[p + "norm.weight"])
    return hs, xn, xn @ sd["lm_head.weight"].T


# ----------------------------------------------------------------------------------------------
# VAE (diffusers AutoencoderKL, tiny)
# ----------------------------------------------------------------------------------------------


def write_vae(out, gen):
    from diffusers import AutoencoderKL

    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(32, 64),
        layers_per_block=2,
        act_fn="silu",
        latent_channels=4,
        norm_num_groups=32,
        sample_size=32,
        scaling_factor=0.13025,
    )
    # Re-initialise every tensor from our own generator (independent of diffusers' init code);
    # GroupNorm affine params are perturbed so that they are actually exercised.
    with torch.no_grad():
        for name, p in sorted(vae.named_parameters(), key=lambda kv: kv[0]):
            is_norm = "norm" in name.split(".")[-2]
            if is_norm and name.endswith("weight"):
                v = 1.0 + 0.1 * torch.randn(p.shape, generator=gen)
            elif is_norm and name.endswith("bias"):
                v = 0.1 * torch.randn(p.shape, generator=gen)
            elif p.dim() >= 2:
                v = torch.randn(p.shape, generator=gen) / math.sqrt(int(np.prod(p.shape[1:])))
            else:
                v = 0.05 * torch.randn(p.shape, generator=gen)
            p.copy_(v)
    vae_dir = os.path.join(out, "vae")
    vae.save_pretrained(vae_dir, safe_serialization=True)
    # Sanity: reload and decode a latent (16x16 -> 32x32).
    vae2 = AutoencoderKL.from_pretrained(vae_dir)
    z = torch.randn(1, 4, GEN_IMAGE_SIZE // 2, GEN_IMAGE_SIZE // 2, generator=gen)
    with torch.no_grad():
        img = vae2.decode(z / 0.13025).sample
    assert img.shape == (1, 3, GEN_IMAGE_SIZE, GEN_IMAGE_SIZE), img.shape
    assert torch.isfinite(img).all()


# ----------------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------------


def write_quant_fixture(tok):
    """tests/fixtures/tiny-quant/ (checkpoint, no VAE) and tiny-quant-ref/ (prompt-end logits)."""
    from transformers import LlamaForCausalLM

    for d in (QUANT_DIR, QUANT_REF_DIR):
        if os.path.isdir(d):
            shutil.rmtree(d)
        os.makedirs(d)
    for fn in ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
               "preprocessor_config.json", "processor_config.json"):
        shutil.copyfile(os.path.join(TINY_DIR, fn), os.path.join(QUANT_DIR, fn))

    prompts = []
    for case in CASES:
        system = case.get("system", SYSTEM_PROMPT)
        prompts.append((case, system, tok.encode(build_prompt(case["messages"], system)).ids))

    seed = QUANT_SEED_BASE
    while True:
        model = MultiModalityCausalLM()
        randomize_(model, torch.Generator().manual_seed(seed), QUANT_RESIDUAL_SCALE)
        sd = {k: v.detach().to(torch.bfloat16).contiguous() for k, v in model.state_dict().items()}
        lm_sd = {k[len("language_model."):]: v.float() for k, v in sd.items() if k.startswith("language_model.")}
        lm = LlamaForCausalLM(llama_config()).float().eval()
        lm.load_state_dict(lm_sd, strict=True)
        last, margins = [], []
        for case, _, ids in prompts:
            with torch.no_grad():
                logits = lm(input_ids=torch.tensor([ids]), use_cache=False).logits[0, -1]
            m_logits = manual_llama(lm_sd, ids)[2][-1]
            assert (m_logits - logits).abs().max().item() < 1e-3
            top2 = torch.topk(logits, 2).values
            last.append(logits.clone())
            margins.append((top2[0] - top2[1]).item())
        print(f"[quant] seed {seed}: prompt-end margins {[round(m, 3) for m in margins]}")
        if min(margins) >= QUANT_MIN_MARGIN:
            break
        seed += 1

    save_file(sd, os.path.join(QUANT_DIR, "model.safetensors"), metadata={"format": "pt"})
    cases_out = []
    for (case, system, ids), logits, margin in zip(prompts, last, margins):
        np.save(os.path.join(QUANT_REF_DIR, f"logits_{case['name']}.npy"), logits.numpy().astype(np.float32))
        cases_out.append({"name": case["name"], "system": system, "messages": case["messages"], "ids": ids,
                          "top2_margin": round(margin, 6)})
    with open(os.path.join(QUANT_REF_DIR, "cases.json"), "w", encoding="utf-8") as f:
        json.dump(
            {
                "checkpoint": "tests/fixtures/tiny-quant",
                "dtype": "float32 (bf16 checkpoint upcast)",
                "seed": seed,
                "residual_scale": QUANT_RESIDUAL_SCALE,
                "min_margin": QUANT_MIN_MARGIN,
                "cases": cases_out,
            },
            f,
            indent=1,
            ensure_ascii=False,
        )
        f.write("\n")


def sha(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()[:16]


def main():
    torch.manual_seed(SEED)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)  # bit-stable float32 sums across machines with different core counts

    for d in (TINY_DIR, REF_DIR):
        if os.path.isdir(d):
            shutil.rmtree(d)
        os.makedirs(d)

    # ---------------------------------------------------------------- A) checkpoint
    write_configs(TINY_DIR)
    write_tokenizer(TINY_DIR)

    model = MultiModalityCausalLM()
    gen = torch.Generator().manual_seed(SEED)
    randomize_(model, gen)
    sd = {k: v.detach().to(torch.bfloat16).contiguous() for k, v in model.state_dict().items()}

    exp = expected_shapes()
    got = {k: list(v.shape) for k, v in sd.items()}
    if got != exp:
        missing = sorted(set(exp) - set(got))
        extra = sorted(set(got) - set(exp))
        wrong = sorted(k for k in set(exp) & set(got) if exp[k] != got[k])
        sys.exit(f"state dict mismatch: missing={missing} extra={extra} wrong_shape={wrong}")
    n_attn_pool = sum(1 for k in sd if ".attn_pool." in k)
    print(f"model.safetensors: {len(sd)} tensors ({n_attn_pool} attn_pool), "
          f"{sum(v.numel() for v in sd.values())} parameters, bf16")
    save_file(sd, os.path.join(TINY_DIR, "model.safetensors"), metadata={"format": "pt"})

    write_vae(TINY_DIR, torch.Generator().manual_seed(SEED + 1))

    # ---------------------------------------------------------------- tokenizer checks
    tok, tag_ids = load_tokenizer_with_image_tags(os.path.join(TINY_DIR, "tokenizer.json"))
    V = BPE_VOCAB
    assert tok.token_to_id(BOS) == V and tok.token_to_id(EOS) == V + 1
    assert tag_ids[GEN_TAG] == V + 2
    assert tag_ids[IMAGE_TAG] == V + 3, tag_ids
    assert tag_ids[IMAGE_START_TAG] == V + 4, tag_ids
    assert tag_ids[IMAGE_END_TAG] == V + 5, tag_ids
    print("special ids:", {BOS: V, EOS: V + 1, **tag_ids})
    # Round trip and digit splitting sanity checks.
    enc = tok.encode("abc 1234567 x")
    assert enc.ids[0] == V and tok.decode(enc.ids, skip_special_tokens=True) == "abc 1234567 x"
    pieces = [w for w, _ in tok.pre_tokenizer.pre_tokenize_str("abc 1234567 x")]
    assert pieces == ["abc", "Ġ", "123", "456", "7", "Ġx"], pieces  # digits isolated in groups of 3

    # ---------------------------------------------------------------- B) LM references (float32)
    from transformers import LlamaForCausalLM

    loaded = load_file(os.path.join(TINY_DIR, "model.safetensors"))
    lm_sd = {k[len("language_model."):]: v.float() for k, v in loaded.items() if k.startswith("language_model.")}
    lm = LlamaForCausalLM(llama_config()).float().eval()
    lm.load_state_dict(lm_sd, strict=True)

    def forward(ids):
        with torch.no_grad():
            o = lm(input_ids=torch.tensor([ids]), output_hidden_states=True, use_cache=False)
        return o.logits[0], [h[0] for h in o.hidden_states]

    cases_out = []
    global_min_gap = float("inf")
    for case in CASES:
        name = case["name"]
        system = case.get("system", SYSTEM_PROMPT)
        prompt = build_prompt(case["messages"], system)
        ids = tok.encode(prompt).ids
        assert ids[0] == V and ids.count(V) == 1, "exactly one BOS expected"
        assert all(i < tag_ids[IMAGE_TAG] for i in ids), "no image-tag ids in text prompts"
        assert len(ids) + N_GREEDY <= LANG["max_position_embeddings"]

        logits, hidden = forward(ids)
        last_logits = logits[-1].clone()

        # Cross-check against the independent implementation.
        m_hs, m_norm, m_logits = manual_llama(lm_sd, ids)
        d_logit = (m_logits[-1] - last_logits).abs().max().item()
        d_hid = max((a - b).abs().max().item() for a, b in zip(m_hs[:-1], hidden[:-1]))
        d_norm = (m_norm - hidden[-1]).abs().max().item()
        assert d_logit < 1e-3 and d_hid < 1e-3 and d_norm < 1e-3, (d_logit, d_hid, d_norm)

        # Greedy decoding by full-sequence recomputation; record the top1-top2 margin each step.
        seq = list(ids)
        greedy, gaps = [], []
        step_logits = last_logits
        for _ in range(N_GREEDY):
            top2 = torch.topk(step_logits, 2).values
            gaps.append((top2[0] - top2[1]).item())
            nxt = int(torch.argmax(step_logits))
            greedy.append(nxt)
            seq.append(nxt)
            step_logits = forward(seq)[0][-1]
        min_gap = min(gaps)
        global_min_gap = min(global_min_gap, min_gap)
        first_eos = greedy.index(V + 1) if (V + 1) in greedy else None
        print(f"[{name}] T={len(ids)} min_gap={min_gap:.4f} first_eos={first_eos} "
              f"greedy={greedy}")

        np.save(os.path.join(REF_DIR, f"logits_{name}.npy"), last_logits.numpy().astype(np.float32))
        if case is CASES[0]:
            np.save(os.path.join(REF_DIR, f"hidden_{name}.npy"),
                    torch.stack(hidden).numpy().astype(np.float32))
            np.save(os.path.join(REF_DIR, f"hidden_prenorm_last_{name}.npy"),
                    m_hs[-1].numpy().astype(np.float32))
        entry = {
            "name": name,
            "system": system,
            "messages": case["messages"],
            "prompt_text": prompt,
            "ids": ids,
            "greedy_ids": greedy,
            "greedy_min_gap": round(min_gap, 6),
        }
        cases_out.append(entry)

    with open(os.path.join(REF_DIR, "cases.json"), "w", encoding="utf-8") as f:
        json.dump(
            {
                "checkpoint": "tests/fixtures/tiny",
                "dtype": "float32 (bf16 checkpoint upcast)",
                "bos_id": V,
                "eos_id": V + 1,
                "special_ids": {BOS: V, EOS: V + 1, **tag_ids},
                "n_greedy": N_GREEDY,
                "cases": cases_out,
            },
            f,
            indent=1,
            ensure_ascii=False,
        )
        f.write("\n")

    print(f"min top1-top2 logit gap over all greedy steps: {global_min_gap:.4f}")
    if global_min_gap < MIN_GAP:
        sys.exit(f"greedy margin {global_min_gap} < {MIN_GAP}; change SEED or the cases")

    # ---------------------------------------------------------------- C) quantization fixture
    write_quant_fixture(tok)

    for d in (TINY_DIR, REF_DIR, QUANT_DIR, QUANT_REF_DIR):
        for root, _, files in sorted(os.walk(d)):
            for fn in sorted(files):
                p = os.path.join(root, fn)
                print(f"  {os.path.relpath(p, REPO_ROOT):60s} {os.path.getsize(p):>9d}  {sha(p)}")


if __name__ == "__main__":
    main()

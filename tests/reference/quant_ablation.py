#!/usr/bin/env python3
"""4-bit quantization candidates measured on the trained fixture (issue 16), numpy only.

Usage (from the repository root, after tests/reference/make_trained_fixture.py):

    python3 tests/reference/quant_ablation.py [--fixture DIR] [--out FILE] [--only NAME,NAME…]
        [--models fixture,jittered] [--budget-mib 890]

Needs numpy and the `tokenizers` package (pip install --user tokenizers). Default run: both model
variants (the fixture's weights, and the same with their quantization grid broken up, see
`jittered`), about 11 minutes on one core; writes benchmarks/quant-ablation-trained-2026-11-28.md.

Every language-model matrix of the trained fixture (SmolLM2-135M-Instruct in the JanusFlow
layout: all linear layers, `embed_tokens` and `lm_head`, the set `src/weights/preset.rs` gives the
preset) is quantized and dequantized by a candidate format, then a float32 numpy Llama forward
(the semantics of make_trained_fixture.py's `reference_logits`) runs over the text of
tests/fixtures/trained/text.txt, tokenized as tests/trained.rs does (the model's tokenizer,
`smollm2-tokenizer.json`, no special tokens added; needs the `tokenizers` Python package). Against
the f32 forward: top-1 agreement, mean KL(f32 ‖ candidate) and perplexity over the 431 positions,
as tests/trained.rs computes them. Sizes are the real JanusFlow-1.3B language model's (24 layers,
hidden 2048, MLP 5632, vocab 102400, plain multi-head attention): bytes read per decoded token
(every layer matrix, lm_head and the norm vectors; one row of embed_tokens) and resident size.

Formats (each a quantize → dequantize function of a [rows, cols] float32 matrix):
  q4      the engine's q4 (src/weights/quant.rs `quantize_q4`): symmetric groups of 32, f16 scale,
          21 candidate scales each refitted by least squares, levels re-rounded with the f16 scale;
  q4a     the engine's q4a (`quantize_q4a_row`): x ≈ q·(d·sc) − dmin·m, q in 0..15, 8-bit (sc, m)
          per group of 32 under one f16 (d, dmin) per row; per group a weighted least-squares fit
          (weights |x| + the row's RMS) over 11 candidate scales, then the best of the 3×3 codes
          around the nearest, levels re-rounded against the stored values;
  Q4_0, Q8_0  llama.cpp's reference rules (from make_trained_fixture.py);
  q8      the engine's q8 (max|x|/127 as f16, levels round(x/d));
  q6      symmetric 6-bit groups of 32 with an f16 scale, fitted like q4 (levels −32..31);
  +o      the group's largest-magnitude weight kept exactly (f16 value + 5-bit index, 21 bits per
          group, 0.66 bits per weight more); the other 31 are quantized by the base format without it;
  nl32    non-uniform 16-level grid (llama.cpp's kvalues_iq4nl) × one f16 scale per group of 32,
          fitted like llama.cpp's IQ4_NL (15 candidate scales, weighted least squares, weights
          |x| + row RMS here), levels re-rounded with the f16 scale: 4.5 bits per weight;
  nlrow   the same grid with q4a's layout: one f16 per row and a signed 8-bit sub-scale per group
          (the best of the 3 codes around the nearest): 4.25 bits per weight + one word per row;
  nlrow+o nlrow with the outlier of each group kept as in +o;
  q4k     Q4_K-like: super-blocks of 256 (8 groups of 32), the q4a fit and 3×3 code search with
          6-bit scale and min codes under an f16 (d, dmin) per super-block, weights |x| + the
          super-block's RMS (llama.cpp's av_x): 4.5 bits per weight. Super-blocks are 256
          consecutive elements of the matrix (the fixture's 576-wide rows are not a multiple of 256;
          the real model's 2048 and 5632 are).

Caveat: the fixture's weights are themselves llama.cpp Q4_1 (layers: asymmetric 4-bit groups of
32 with f16 scale and min) and Q8_0 (the tied embedding / lm_head), so asymmetric 4-bit formats that
can land on the Q4_1 grid have an advantage here that they would not have on bf16 weights.
"""

import argparse
import datetime
import importlib.util
import json
import math
import os
import struct
import sys
import time

# One BLAS thread: the matrices are small, and on a shared 2-core machine OpenBLAS's threads waiting
# for each other made every product ~10× slower.
for _v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import numpy as np  # noqa: E402 (after the thread settings)

REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
F16 = np.float16
F32 = np.float32
GROUP = 32
CHUNK = 1 << 20  # elements per vectorized pass (keeps temporaries near the caches)

_spec = importlib.util.spec_from_file_location("make_trained_fixture", os.path.join(os.path.dirname(__file__), "make_trained_fixture.py"))
fixture = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fixture)


def f16r(x):
    """Round to f16 and back (what a stored f16 holds)."""
    return np.asarray(x, F32).astype(F16).astype(F32)


def rnd(v):
    """round_level: round half away from zero (truncation of v ± 0.5), in float32."""
    return np.trunc(v + np.copysign(F32(0.5), v)).astype(F32)


def chunked(fn, w, unit):
    """Applies fn to w (2-D, float32) in slices of whole `unit`-element pieces of the flattened matrix."""
    flat = np.ascontiguousarray(w, F32).reshape(-1)
    out = np.empty_like(flat)
    step = max(unit, CHUNK // unit * unit)
    for a in range(0, flat.size, step):
        out[a:a + step] = fn(flat[a:a + step].reshape(-1, unit)).reshape(-1)
    return out.reshape(w.shape)


def group_outlier(g):
    """(index of each group's largest |x|, a one-hot mask of it)."""
    idx = np.argmax(np.abs(g), axis=1)
    mask = np.zeros(g.shape, bool)
    mask[np.arange(len(g)), idx] = True
    return idx, mask


# ------------------------------------------------------------------------------------------------
# Symmetric formats (q4, q6, q8)
# ------------------------------------------------------------------------------------------------

def sym_groups(g, bits, outlier=False):
    """The engine's quantize_q4 generalised to `bits` (levels −half..half−1), on groups [N, 32]."""
    half = 1 << (bits - 1)
    if outlier:
        _, mask = group_outlier(g)
        keep = f16r(g)
        g = np.where(mask, F32(0), g)  # a zero costs nothing and does not move the fit
    ia = np.argmax(np.abs(g), axis=1)
    mx = g[np.arange(len(g)), ia]
    nz = mx != 0
    mxs = np.where(nz, mx, F32(1))
    best_err = np.full(len(g), np.inf, F32)
    best_d = np.zeros(len(g), F32)
    for step in range(-10, 11):
        iscale = -(F32(half) + F32(step) * F32(0.1 * half / 8)) / mxs
        l = np.clip(rnd(g * iscale[:, None]), -half, half - 1)
        sqq = np.sum(l * l, axis=1)
        sxq = np.sum(g * l, axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            d = f16r(np.where(sqq > 0, sxq / np.where(sqq > 0, sqq, 1), 0))
            ok = (sqq > 0) & (d != 0) & nz
            inv_safe = np.where(d != 0, d, F32(1))
        l = np.clip(rnd(g / inv_safe[:, None]), -half, half - 1)
        r = g - l * d[:, None]
        err = np.where(ok, np.sum(r * r, axis=1), np.inf)
        better = err < best_err
        best_err = np.where(better, err, best_err)
        best_d = np.where(better, d, best_d)
    ds = np.where(best_d != 0, best_d, F32(1))
    out = np.clip(rnd(g / ds[:, None]), -half, half - 1) * best_d[:, None]
    if outlier:
        out = np.where(mask, keep, out)
    return out.astype(F32)


def q8_groups(g):
    """The engine's q8: d = f16(max|x| / 127), levels round(x / d)."""
    d = f16r(np.max(np.abs(g), axis=1) / F32(127))
    ds = np.where(d != 0, d, F32(1))
    return (np.clip(rnd(g / ds[:, None]), -127, 127) * d[:, None]).astype(F32)


# ------------------------------------------------------------------------------------------------
# Asymmetric formats (q4a, Q4_K-like)
# ------------------------------------------------------------------------------------------------

def asym_fit(g, w):
    """fit_q4a_group on groups [N, 32] with weights w: (scale, min), x ≈ scale·l − min."""
    lo = np.minimum(g.min(axis=1), 0).astype(F32)
    hi = g.max(axis=1)
    sw, swx, swxx = w.sum(1), (w * g).sum(1), (w * g * g).sum(1)
    flat = hi == lo
    rng = np.where(flat, F32(1), hi - lo)
    best = np.full(len(g), np.inf, F32)
    best_s, best_m = ((hi - lo) / F32(15)).astype(F32), (-lo).astype(F32)
    gl = g - lo[:, None]
    for step in range(11):
        iscale = (F32(14) + F32(0.2) * F32(step)) / rng
        l = np.minimum(np.floor(gl * iscale[:, None] + F32(0.5)), F32(15))  # gl ≥ 0
        wl = w * l
        sl, sl2, sxl = wl.sum(1), (wl * l).sum(1), (wl * g).sum(1)
        det = sw * sl2 - sl * sl
        with np.errstate(divide="ignore", invalid="ignore"):
            dets = np.where(det > 0, det, F32(1))
            scale = (sw * sxl - swx * sl) / dets
            offset = (sl2 * swx - sl * sxl) / dets
            clamp = offset > 0
            scale = np.where(clamp, sxl / np.where(sl2 > 0, sl2, F32(1)), scale)
            offset = np.where(clamp, F32(0), offset)
        ok = (det > 0) & (scale > 0) & ~flat
        e = scale * scale * sl2 + 2 * scale * offset * sl - 2 * scale * sxl + offset * offset * sw - 2 * offset * swx + swxx
        better = ok & (e < best)
        best = np.where(better, e, best)
        best_s = np.where(better, scale, best_s)
        best_m = np.where(better, -offset, best_m)
    best_s = np.where(flat, F32(0), best_s)
    return best_s.astype(F32), best_m.astype(F32)


def asym_blocks(x, codemax, outlier=False, rms=None):
    """quantize_q4a_row on blocks x [R, L] (L a multiple of 32): per-group fit, (sc, m) codes in
    0..codemax under an f16 (d, dmin) per block, 3×3 code search; `rms` [R] overrides the block's
    own RMS for the importance weights. Returns the dequantized blocks."""
    R, L = x.shape
    ng = L // GROUP
    g = x.reshape(R * ng, GROUP)
    if rms is None:
        rms = np.sqrt(np.sum(x * x, axis=1) / F32(L)).astype(F32)
    w = (np.repeat(rms, ng)[:, None] + np.abs(g)).astype(F32)
    if outlier:
        _, mask = group_outlier(g)
        keep = f16r(g)
        others = (g.sum(1) - g[mask]) / F32(GROUP - 1)  # inside the other values' range
        g = np.where(mask, others[:, None], g).astype(F32)
        w = np.where(mask, F32(0), w)
    s, m = asym_fit(g, w)
    smax = s.reshape(R, ng).max(1)
    mmax = m.reshape(R, ng).max(1)
    df = np.repeat(f16r(smax / F32(codemax)), ng)
    dminf = np.repeat(f16r(mmax / F32(codemax)), ng)
    with np.errstate(divide="ignore", invalid="ignore"):
        cs = np.where(df > 0, np.clip(rnd(s / np.where(df > 0, df, 1)), 0, codemax), 0)
        cm = np.where(dminf > 0, np.clip(rnd(m / np.where(dminf > 0, dminf, 1)), 0, codemax), 0)
    best = np.full(len(g), np.inf, F32)
    bse = np.zeros(len(g), F32)
    bme = np.zeros(len(g), F32)
    for a in (-1, 0, 1):
        sc = cs + a
        se = (df * sc).astype(F32)
        inv = np.where(se > 0, F32(1) / np.where(se > 0, se, 1), F32(0)).astype(F32)
        for b in (-1, 0, 1):
            mc = cm + b
            me = (dminf * mc).astype(F32)
            lv = np.clip(np.floor((g + me[:, None]) * inv[:, None] + F32(0.5)), 0, 15)
            r = lv * se[:, None] - me[:, None] - g
            e = np.sum(w * r * r, axis=1)
            valid = (sc >= 0) & (sc <= codemax) & (mc >= 0) & (mc <= codemax)
            better = valid & (e < best)
            best = np.where(better, e, best)
            bse = np.where(better, se, bse)
            bme = np.where(better, me, bme)
    inv = np.where(bse > 0, F32(1) / np.where(bse > 0, bse, 1), F32(0)).astype(F32)
    lv = np.clip(np.floor((g + bme[:, None]) * inv[:, None] + F32(0.5)), 0, 15)
    out = lv * bse[:, None] - bme[:, None]
    if outlier:
        out = np.where(mask, keep, out)
    return out.reshape(R, L).astype(F32)


# ------------------------------------------------------------------------------------------------
# Non-uniform grid (IQ4_NL-like)
# ------------------------------------------------------------------------------------------------

KV = np.array([-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113], F32)
KV_MID = (KV[1:] + KV[:-1]) / 2


def nl_index(y):
    return np.searchsorted(KV_MID, y)


def nl_fit(g, w, ntry=7):
    """llama.cpp's IQ4_NL scale search (quantize_row_iq4_nl_impl) on groups [N, 32]: the group's
    largest-magnitude value `max` mapped onto the grid by 127/max and (itry − 127)/max for itry in
    −ntry..ntry, each assignment refitted by weighted least squares, the best kept. Returns d (f32)."""
    ia = np.argmax(np.abs(g), axis=1)
    mx = g[np.arange(len(g)), ia]
    nz = mx != 0
    mxs = np.where(nz, mx, F32(1))
    best = np.full(len(g), -np.inf, F32)
    bd = np.zeros(len(g), F32)
    for ids in [F32(127) / mxs] + [(F32(itry) + KV[0]) / mxs for itry in range(-ntry, ntry + 1)]:
        q = KV[nl_index(g * ids[:, None])]
        wq = w * q
        sumqx, sumq2 = (wq * g).sum(1), (wq * q).sum(1)
        with np.errstate(divide="ignore", invalid="ignore"):
            d = np.where(sumq2 > 0, sumqx / np.where(sumq2 > 0, sumq2, 1), F32(0))
        score = d * sumqx
        better = (sumq2 > 0) & (score > best)
        best = np.where(better, score, best)
        bd = np.where(better, d, bd)
    return np.where(nz, bd, F32(0)).astype(F32)


def nl_apply(g, d):
    ds = np.where(d != 0, d, F32(1))
    return np.where(d[:, None] != 0, KV[nl_index(g / ds[:, None])] * d[:, None], F32(0)).astype(F32)


def nl32_rows(x):
    """Groups of 32 with one f16 scale each."""
    R, L = x.shape
    g = x.reshape(-1, GROUP)
    rms = np.sqrt(np.sum(x * x, axis=1) / F32(L)).astype(F32)
    w = np.repeat(rms, L // GROUP)[:, None] + np.abs(g)
    return nl_apply(g, f16r(nl_fit(g, w))).reshape(R, L)


def nlrow_rows(x, outlier=False):
    """One f16 per row × a signed 8-bit sub-scale per group (best of the 3 codes around the nearest)."""
    R, L = x.shape
    ng = L // GROUP
    g = x.reshape(-1, GROUP)
    rms = np.sqrt(np.sum(x * x, axis=1) / F32(L)).astype(F32)
    w = np.repeat(rms, ng)[:, None] + np.abs(g)
    if outlier:
        _, mask = group_outlier(g)
        keep = f16r(g)
        g = np.where(mask, F32(0), g)
        w = np.where(mask, F32(0), w)
    d = nl_fit(g, w)
    D = np.repeat(f16r(np.abs(d).reshape(R, ng).max(1) / F32(127)), ng)
    c = np.where(D > 0, np.clip(rnd(d / np.where(D > 0, D, 1)), -127, 127), 0)
    best = np.full(len(g), np.inf, F32)
    bd = np.zeros(len(g), F32)
    for a in (-1, 0, 1):
        cc = np.clip(c + a, -127, 127)
        s = (D * cc).astype(F32)
        r = nl_apply(g, s) - g
        e = np.sum(w * r * r, axis=1)
        better = e < best
        best = np.where(better, e, best)
        bd = np.where(better, s, bd)
    out = nl_apply(g, bd)
    if outlier:
        out = np.where(mask, keep, out)
    return out.reshape(R, L)


# ------------------------------------------------------------------------------------------------
# Formats: quantize-dequantize of a matrix, and byte sizes
# ------------------------------------------------------------------------------------------------

def pad4(n):
    return (n + 3) // 4 * 4


def q4a_row_bytes(cols):
    return 4 * (1 + (cols // GROUP + 1) // 2)


FORMATS = {
    # name: (quantize-dequantize of a [rows, cols] matrix, bytes of a rows × cols matrix)
    "f32": (lambda w: w, lambda r, c: 4 * r * c),
    "q8": (lambda w: chunked(q8_groups, w, GROUP), lambda r, c: pad4(r * c + r * c // GROUP * 2)),
    "Q8_0": (fixture.q8_0, lambda r, c: r * c // GROUP * 34),
    "q6": (lambda w: chunked(lambda g: sym_groups(g, 6), w, GROUP), lambda r, c: pad4(r * c * 6 // 8 + r * c // GROUP * 2)),
    "q4": (lambda w: chunked(lambda g: sym_groups(g, 4), w, GROUP), lambda r, c: pad4(r * c // 2 + r * c // GROUP * 2)),
    "Q4_0": (fixture.q4_0, lambda r, c: r * c // GROUP * 18),
    "q4a": (lambda w: chunked(lambda x: asym_blocks(x, 255), w, w.shape[1]), lambda r, c: r * c // 2 + r * q4a_row_bytes(c)),
    "q4+o": (lambda w: chunked(lambda g: sym_groups(g, 4, outlier=True), w, GROUP),
             lambda r, c: pad4(r * c // 2 + r * c // GROUP * 2) + (r * c // GROUP * 21 + 7) // 8),
    "q4a+o": (lambda w: chunked(lambda x: asym_blocks(x, 255, outlier=True), w, w.shape[1]),
              lambda r, c: r * c // 2 + r * q4a_row_bytes(c) + (r * c // GROUP * 21 + 7) // 8),
    "nl32": (lambda w: chunked(nl32_rows, w, w.shape[1]), lambda r, c: pad4(r * c // 2 + r * c // GROUP * 2)),
    "nlrow": (lambda w: chunked(nlrow_rows, w, w.shape[1]), lambda r, c: r * c // 2 + r * pad4(2 + c // GROUP)),
    "nlrow+o": (lambda w: chunked(lambda x: nlrow_rows(x, outlier=True), w, w.shape[1]),
                lambda r, c: r * c // 2 + r * pad4(2 + c // GROUP) + (r * c // GROUP * 21 + 7) // 8),
    "q4k": (lambda w: chunked(lambda x: asym_blocks(x, 63), w, 256), lambda r, c: r * c // 256 * 144),
}


# ------------------------------------------------------------------------------------------------
# Model, forward and metrics
# ------------------------------------------------------------------------------------------------

def load_lm(folder):
    raw = fixture.read_safetensors_raw(os.path.join(folder, "lm.safetensors"))
    out = {}
    for k, (dtype, shape, b) in raw.items():
        assert dtype == "F32", (k, dtype)
        out[k] = np.frombuffer(b, F32).reshape(shape)
    return out


def forward(cfg, lm, ids):
    """float32 Llama forward (reference_logits' semantics); logits [T, V]."""
    h, nh = cfg["hidden_size"], cfg["num_attention_heads"]
    hd, eps, theta = h // nh, F32(cfg["rms_norm_eps"]), cfg["rope_theta"]
    T = len(ids)
    x = lm["language_model.model.embed_tokens.weight"][ids].astype(F32)
    inv = 1.0 / theta ** (np.arange(0, hd, 2, dtype=np.float64) / hd)
    ang = np.arange(T, dtype=np.float64)[:, None] * inv[None, :]
    cos = np.cos(np.concatenate([ang, ang], 1)).astype(F32)[:, None, :]
    sin = np.sin(np.concatenate([ang, ang], 1)).astype(F32)[:, None, :]

    def rms(v, w):
        return v / np.sqrt(np.mean(v * v, axis=-1, keepdims=True) + eps) * w

    def rope(q):
        rot = np.concatenate([-q[..., hd // 2:], q[..., :hd // 2]], -1)
        return q * cos + rot * sin

    mask = np.triu(np.full((T, T), -np.inf, F32), 1)
    scale = F32(1 / math.sqrt(hd))
    for i in range(cfg["num_hidden_layers"]):
        p = f"language_model.model.layers.{i}."
        W = lambda k: lm[p + k]
        a = rms(x, W("input_layernorm.weight"))
        q = rope((a @ W("self_attn.q_proj.weight").T).reshape(T, nh, hd)).transpose(1, 0, 2)
        k = rope((a @ W("self_attn.k_proj.weight").T).reshape(T, nh, hd)).transpose(1, 0, 2)
        v = (a @ W("self_attn.v_proj.weight").T).reshape(T, nh, hd).transpose(1, 0, 2)
        s = q @ k.transpose(0, 2, 1) * scale + mask
        s = np.exp(s - s.max(-1, keepdims=True))
        s /= s.sum(-1, keepdims=True)
        o = (s @ v).transpose(1, 0, 2).reshape(T, h)
        x = x + o @ W("self_attn.o_proj.weight").T
        a = rms(x, W("post_attention_layernorm.weight"))
        g, u = a @ W("mlp.gate_proj.weight").T, a @ W("mlp.up_proj.weight").T
        x = x + (g / (1 + np.exp(-g)) * u) @ W("mlp.down_proj.weight").T
    x = rms(x, lm["language_model.model.norm.weight"])
    return x @ lm["language_model.lm_head.weight"].T


def log_softmax(z):
    z = z.astype(np.float64)
    m = z.max(-1, keepdims=True)
    return z - (np.log(np.exp(z - m).sum(-1, keepdims=True)) + m)


def quality(base_lp, logits, ids):
    """tests/trained.rs's `quality`: row i predicts ids[i + 1]."""
    n = len(ids) - 1
    lq = log_softmax(logits[:n])
    lp = base_lp[:n]
    top1 = np.mean(np.argmax(lp, -1) == np.argmax(lq, -1))
    kl = np.mean(np.sum(np.exp(lp) * (lp - lq), -1))
    ppl = math.exp(-np.mean(lq[np.arange(n), ids[1:n + 1]]))
    return top1, kl, ppl


# The real JanusFlow-1.3B language model (DeepSeek-LLM 1.3B): 24 layers, hidden 2048, MLP 5632,
# vocab 102400, 16 heads with plain multi-head attention (k/v as wide as q).
REAL = dict(layers=24, hidden=2048, inter=5632, vocab=102400)


def real_sizes(layers_fmt, head_fmt, embed_fmt):
    """(bytes read per decoded token, resident bytes) of the real model's language model."""
    L, H, I, V = REAL["layers"], REAL["hidden"], REAL["inter"], REAL["vocab"]
    lb = lambda f, r, c: FORMATS[f][1](r, c)
    layer = 4 * lb(layers_fmt, H, H) + 2 * lb(layers_fmt, I, H) + lb(layers_fmt, H, I)
    norms = (2 * L + 1) * H * 4
    head = lb(head_fmt, V, H)
    embed = lb(embed_fmt, V, H)
    per_token = L * layer + head + embed // V + norms
    return per_token, L * layer + head + embed + norms


def bpw(fmt):
    """Bits per weight at the real model's layer shapes."""
    H, I = REAL["hidden"], REAL["inter"]
    n = 4 * H * H + 3 * I * H
    b = 4 * FORMATS[fmt][1](H, H) + 2 * FORMATS[fmt][1](I, H) + FORMATS[fmt][1](H, I)
    return 8 * b / n


# ------------------------------------------------------------------------------------------------

def candidates():
    """(name, group, layers format, lm_head format, embed_tokens format)."""
    c = [
        ("f32", "", "f32", "f32", "f32"),
        ("llama.cpp Q8_0", "ref", "Q8_0", "Q8_0", "Q8_0"),
        ("q8", "ref", "q8", "q8", "q8"),
        ("llama.cpp Q4_0", "b", "Q4_0", "Q4_0", "Q4_0"),
        ("q4", "a", "q4", "q4", "q4"),
        ("q4a", "a", "q4a", "q4a", "q4a"),
        ("q4 + outlier", "c", "q4+o", "q4+o", "q4+o"),
        ("q4a + outlier", "c", "q4a+o", "q4a+o", "q4a+o"),
        ("IQ4_NL-like, f16 scale / 32", "d", "nl32", "nl32", "nl32"),
        ("IQ4_NL-like, row f16 × int8 / 32", "d", "nlrow", "nlrow", "nlrow"),
        ("Q4_K-like (256, 6-bit sc/m)", "e", "q4k", "q4k", "q4k"),
        ("IQ4_NL-like row + outlier", "c+d", "nlrow+o", "nlrow+o", "nlrow+o"),
        ("q4a, lm_head q8", "f", "q4a", "q8", "q4a"),
        ("q4a, lm_head q6", "f", "q4a", "q6", "q4a"),
        ("q4a, embed q8", "f", "q4a", "q4a", "q8"),
        ("q4a, lm_head q8, embed q8", "f", "q4a", "q8", "q8"),
        ("q4a, lm_head q6, embed q8", "f", "q4a", "q6", "q8"),
        ("q4, lm_head q6", "f", "q4", "q6", "q4"),
    ]
    return c


def jittered(lm, seed=16):
    """The fixture with its quantization grid broken up: each layer matrix's values lie exactly on a
    Q4_1 grid (per group of 32: min + q·d, d = (max − min)/15) and the tied embedding's on a Q8_0 grid
    (q·max|x|/127); adding uniform noise in ±d/2 per element gives continuous weights with the same
    group structure (scales, outliers), standing in for the bf16 parent that was quantized."""
    rng = np.random.default_rng(seed)
    out = dict(lm)
    HEAD, EMBED = "language_model.lm_head.weight", "language_model.model.embed_tokens.weight"
    for k, v in lm.items():
        if v.ndim != 2 or k == EMBED:
            continue
        g = v.reshape(-1, GROUP)
        if k == HEAD:
            d = np.abs(g).max(1) / F32(127)
        else:
            d = (g.max(1) - g.min(1)) / F32(15)
        noise = (rng.random(g.shape, dtype=F32) - F32(0.5)) * d[:, None]
        out[k] = (g + noise).astype(F32).reshape(v.shape)
    if np.array_equal(lm[HEAD], lm[EMBED]):
        out[EMBED] = out[HEAD]
    else:
        g = lm[EMBED].reshape(-1, GROUP)
        d = np.abs(g).max(1) / F32(127)
        out[EMBED] = (g + (rng.random(g.shape, dtype=F32) - F32(0.5)) * d[:, None]).astype(F32).reshape(lm[EMBED].shape)
    return out


def ablation(cfg, lm, ids, label, only, budget_mib):
    """Runs every candidate on `lm`; returns (markdown table, notes dict)."""
    matrices = [k for k, v in lm.items() if v.ndim == 2]
    HEAD, EMBED = "language_model.lm_head.weight", "language_model.model.embed_tokens.weight"
    layer_mats = [k for k in matrices if k not in (HEAD, EMBED)]
    tied = np.array_equal(lm[HEAD], lm[EMBED])

    t0 = time.time()
    base = forward(cfg, lm, ids)
    base_lp = log_softmax(base)
    t_fwd = time.time() - t0
    f32_ppl = quality(base_lp, base, ids)[2]
    print(f"== {label}: f32 perplexity {f32_ppl:.3f} (forward {t_fwd:.1f} s)", flush=True)

    quant_time, big_cache, err_stats, results = {}, {}, {}, {}

    def quant_big(fmt, key):
        ck = (fmt, "tied" if tied else key)
        if ck not in big_cache:
            t = time.time()
            big_cache[ck] = FORMATS[fmt][0](lm[key])
            quant_time[fmt] = quant_time.get(fmt, 0) + time.time() - t
            w = lm[key]
            err_stats[(fmt, "head")] = float(np.sqrt(np.sum((big_cache[ck] - w) ** 2) / np.sum(w * w)))
        return big_cache[ck]

    def evaluate(cands, layer_cache):
        for name, grp, lf, hf, ef in cands:
            model = dict(lm)
            for k in layer_mats:
                model[k] = layer_cache[k]
            model[HEAD] = quant_big(hf, HEAD)
            model[EMBED] = quant_big(ef, EMBED)
            logits = forward(cfg, model, ids)
            q = quality(base_lp, logits, ids) if name != "f32" else (1.0, 0.0, f32_ppl)
            per_tok, resident = real_sizes(lf, hf, ef)
            results[name] = dict(group=grp, layers=lf, head=hf, embed=ef, top1=q[0], kl=q[1], ppl=q[2],
                                 per_token=per_tok, resident=resident, bpw=bpw(lf))
            print(f"  {name}: top-1 {q[0] * 100:.1f} %, KL {q[1]:.5f}, ppl {q[2]:.3f}, "
                  f"{per_tok / 2**20:.1f} MiB/token, resident {resident / 2**20:.1f} MiB", flush=True)

    def run_group(cands):
        by_layers = {}
        for c in cands:
            by_layers.setdefault(c[2], []).append(c)
        for lf, cs in by_layers.items():
            t = time.time()
            layer_cache = {k: FORMATS[lf][0](lm[k]) for k in layer_mats}
            dt = time.time() - t
            quant_time[lf] = quant_time.get(lf, 0) + dt
            num = sum(float(np.sum((layer_cache[k] - lm[k]).astype(np.float64) ** 2)) for k in layer_mats)
            den = sum(float(np.sum(lm[k].astype(np.float64) ** 2)) for k in layer_mats)
            err_stats[(lf, "layers")] = math.sqrt(num / den)
            print(f"[{lf}] layers quantized in {dt:.1f} s; relative RMS error {err_stats[(lf, 'layers')]:.4f}", flush=True)
            evaluate(cs, layer_cache)
            del layer_cache

    cands = candidates()
    if only:
        cands = [c for c in cands if c[0] in only or c[0] == "f32"]
    run_group(cands)

    # g: the best of c/d/e (lowest KL) combined with f's lm_head / embed choices; also the best
    # whose lm_head-q6 variant fits the budget, when that is another one.
    budget = budget_mib * 2**20
    cde = [(r["kl"], n) for n, r in results.items() if r["group"] in ("c", "d", "e", "c+d")]
    picks = []
    if cde:
        picks.append(min(cde)[1])
        fits = [(kl, n) for kl, n in cde if real_sizes(results[n]["layers"], "q6", results[n]["layers"])[0] <= budget]
        if fits and min(fits)[1] not in picks:
            picks.append(min(fits)[1])
    combos = []
    for n in picks:
        lf = results[n]["layers"]
        for hf, ef in (("q6", lf), ("q8", lf), ("q6", "q8"), ("q8", "q8")):
            combos.append((f"{n}, lm_head {hf}" + (", embed q8" if ef == "q8" else ""), "g", lf, hf, ef))
    if combos:
        print("combinations (g):", ", ".join(c[0] for c in combos), flush=True)
        run_group(combos)

    q4_tok = real_sizes("q4", "q4", "q4")[0]
    lines = [
        "| # | candidate | layers | lm_head | embed | bpw (layers) | top-1 = f32 | mean KL(f32 ‖ cand) | perplexity | rel. RMS err layers / lm_head | MiB read per token (1.3B) | × q4 | resident MiB (1.3B LM) | ≤ budget |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        le = err_stats.get((r["layers"], "layers"), 0.0)
        he = err_stats.get((r["head"], "head"), 0.0)
        lines.append(
            f"| {r['group']} | {name} | {r['layers']} | {r['head']} | {r['embed']} | {r['bpw']:.3f} | {r['top1'] * 100:.1f} % | "
            f"{r['kl']:.4f} | {r['ppl']:.2f} | {le:.4f} / {he:.4f} | {r['per_token'] / 2**20:.1f} | {r['per_token'] / q4_tok:.3f} | "
            f"{r['resident'] / 2**20:.1f} | {'yes' if r['per_token'] <= budget else 'no'} |")
    table = "\n".join(lines)
    print()
    print(table, flush=True)
    qt = ", ".join(f"{k} {v:.0f} s" for k, v in quant_time.items() if k != "f32")
    return table, dict(f32_ppl=f32_ppl, t_fwd=t_fwd, quant_time=qt)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--fixture", default=os.path.join(REPO_ROOT, "target", "trained-fixture"))
    ap.add_argument("--out", default=os.path.join(REPO_ROOT, "benchmarks", "quant-ablation-trained-2026-11-28.md"))
    ap.add_argument("--only", default="", help="comma-separated candidate names to run (f32 always runs)")
    ap.add_argument("--models", default="fixture,jittered",
                    help="fixture: the fixture's weights as they are; jittered: with their Q4_1/Q8_0 grid broken up (see `jittered`)")
    ap.add_argument("--budget-mib", type=float, default=890.0, help="bytes-per-token budget (1.15× q4's 774 MiB)")
    args = ap.parse_args()
    t_wall, t_cpu = time.time(), time.process_time()
    from tokenizers import Tokenizer
    import tokenizers

    fx = args.fixture
    cfg = json.load(open(os.path.join(fx, "f32", "config.json")))["language_config"]
    lm = load_lm(os.path.join(fx, "f32"))
    tok = Tokenizer.from_file(os.path.join(fx, "smollm2-tokenizer.json"))
    text = open(os.path.join(REPO_ROOT, "tests", "fixtures", "trained", "text.txt"), encoding="utf-8").read()
    ids = np.array(tok.encode(text, add_special_tokens=False).ids)
    print(f"{len(ids)} tokens ({len(ids) - 1} positions); numpy {np.__version__}", flush=True)

    # The float32 forward against the fixture's float64 reference (48 fixed ids).
    ref_ids = json.load(open(os.path.join(fx, "ref_ids.json")))
    ref = np.load(os.path.join(fx, "ref_logits.npy"))
    got = forward(cfg, lm, np.array(ref_ids))
    ref_rel = float(np.max(np.abs(got - ref)) / np.max(np.abs(ref)))
    print(f"float32 forward vs the fixture's float64 reference: max |diff| / max |ref| = {ref_rel:.2e}", flush=True)
    assert ref_rel < 1e-4, ref_rel

    only = set(filter(None, args.only.split(",")))
    sections = []
    for model in args.models.split(","):
        if model == "fixture":
            sections.append((model, *ablation(cfg, lm, ids, "fixture weights", only, args.budget_mib)))
        elif model == "jittered":
            sections.append((model, *ablation(cfg, jittered(lm), ids, "jittered weights", only, args.budget_mib)))
        else:
            sys.exit(f"unknown model variant {model}")
    wall, cpu = time.time() - t_wall, time.process_time() - t_cpu

    q4_tok = real_sizes("q4", "q4", "q4")[0]
    q4a_tok = real_sizes("q4a", "q4a", "q4a")[0]
    cmd = " ".join(["python3", os.path.relpath(os.path.abspath(sys.argv[0]), REPO_ROOT)] + sys.argv[1:])
    doc = f"""# 4-bit quantization candidates on the trained fixture (issue 16)

Command: `{cmd}` (from the repository root)

Date: {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}; numpy {np.__version__},
tokenizers {tokenizers.__version__}, Python {sys.version.split()[0]}, {os.cpu_count()} CPU cores.
Run time: {wall:.0f} s wall, {cpu:.0f} s process CPU (all sections).

Model: SmolLM2-135M-Instruct from `target/trained-fixture/f32` (tests/reference/make_trained_fixture.py),
{len(ids)} tokens of `tests/fixtures/trained/text.txt` tokenized as tests/trained.rs does
(`smollm2-tokenizer.json`, no special tokens added, Python `tokenizers`), {len(ids) - 1} positions. Every
language-model matrix (the 7 linear layers of each of the 30 layers, `embed_tokens`, `lm_head`: the
set the presets quantize) is quantized and dequantized by the candidate, then a float32 numpy forward
(reference_logits' semantics; max relative difference to the fixture's float64 reference on its 48
ids: {ref_rel:.1e}) is compared with the f32 one: top-1 agreement, mean KL(f32 ‖ candidate),
perplexity. `rel. RMS err` is ‖W − Ŵ‖ / ‖W‖ over all layer matrices, and over lm_head (=
embed_tokens: the model ties them).

Sizes are the real JanusFlow-1.3B language model's (24 layers, hidden 2048, MLP 5632, vocab 102400,
multi-head attention): MiB read per decoded token = every layer matrix + lm_head + the norm vectors
+ one row of embed_tokens; resident = the same with the whole embed_tokens. bpw: at the real model's
layer shapes. Budget: 1.15× q4's {q4_tok / 2**20:.0f} MiB per token = {args.budget_mib:.0f} MiB (q4a:
{q4a_tok / 2**20:.1f} MiB). Groups: a = the engine's formats re-implemented, b = llama.cpp baseline,
c = the largest-magnitude weight of each group kept exactly (f16 value + 5-bit index, 21 bits per
group, counted packed), d = IQ4_NL-like non-uniform grid, c+d = both, e = Q4_K-like super-blocks, f = other
lm_head / embed_tokens formats under q4a, g = the best of c/d/e/c+d by KL (and the best whose lm_head-q6
variant fits the budget, when another) combined with f's choices; ref = 8-bit references. Formats:
the script's docstring.

Caveat: this model's layers are llama.cpp Q4_1 (asymmetric 4-bit groups of 32) and its tied
embedding / lm_head Q8_0, so the "f32" weights lie on a 4-bit asymmetric grid: formats that can land
on it (q4a, Q4_K-like) are favoured beyond what they would be on bf16 weights, symmetric and
non-uniform grids are penalised, and an 8-bit lm_head holds the Q8_0 matrix almost exactly. The
second table ("jittered") breaks the grid: uniform noise of ±half a grid step per element (d/2 with
d = (max − min)/15 per group of 32 in the layers, max|x|/127 in the embedding), a stand-in for
continuous bf16 weights with the same group structure; its f32 is the jittered model itself.
"""
    titles = {"fixture": "Fixture weights (the grid of Q4_1 / Q8_0, as tests/trained.rs measures)",
              "jittered": "Jittered weights (the Q4_1 / Q8_0 grid broken up, seed 16)"}
    for model, table, notes in sections:
        doc += f"\n## {titles[model]}\n\nf32 perplexity {notes['f32_ppl']:.2f}; one forward {notes['t_fwd']:.1f} s; quantization time: {notes['quant_time']}.\n\n{table}\n"
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        f.write(doc)
    print(f"\nwritten to {args.out}; {wall:.0f} s wall, {cpu:.0f} s process CPU")


if __name__ == "__main__":
    main()

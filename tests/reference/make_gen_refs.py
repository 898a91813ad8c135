#!/usr/bin/env python3
"""Float32 references for the JanusFlow text-to-image path on the tiny checkpoint.

Usage (from the repository root, after `make_fixtures.py` has built tests/fixtures/tiny/):

    python3 tests/reference/make_gen_refs.py

Reads  tests/fixtures/tiny/ (model.safetensors bf16 -> float32, tokenizer.json, vae/)
Writes tests/fixtures/tiny-ref-gen/ (deleted and rewritten): see tests/reference/README.md.

Everything runs in float32 on CPU with one thread and fixed generators. The gen encoder / decoder /
aligner forwards are written here from the spec (/work/shared/docs/janusflow-architecture.md §3.3-3.5)
and checked against upstream `janus/janusflow/models/uvit.py` (deepseek-ai/Janus @ 1daa72f) by
reading; the flow loop follows `demo/app_janusflow.py` but in float32 (no bf16 mimicry).
Library modules used: transformers `LlamaForCausalLM` (the LLM), diffusers `AutoencoderKL`
(the VAE) and, only as cross-checks of our own code, diffusers `Timesteps`/`TimestepEmbedding`,
transformers `LlamaRMSNorm` and `torch.nn.functional.pixel_shuffle`.

The unconditional CFG row is computed in three ways and the script aborts unless they agree:
  masked   the upstream form: uncond ids 1..L-1 = pad (= EOS), attention mask 0 at 1..L-1, positions
           0..L+64 for both rows, full sequence recomputed every step (this is what is saved);
  compact  uncond sequence = [BOS, t_emb, 64 tokens] with position_ids [0, L, L+1, ..., L+64];
  cached   the prefix K/V (cond: L ids; uncond: BOS only) computed once, every step runs just the
           65 new tokens at positions L..L+64 on a copy of that cache.
"""

import copy
import hashlib
import json
import math
import os
import shutil
import sys

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_fixtures import (  # noqa: E402
    EOS,
    GEN_TAG,
    RMS_EPS,
    build_prompt,
    llama_config,
    load_tokenizer_with_image_tags,
)

REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
TINY_DIR = os.path.join(REPO_ROOT, "tests", "fixtures", "tiny")
OUT_DIR = os.path.join(REPO_ROOT, "tests", "fixtures", "tiny-ref-gen")

NOISE_SEED = 20241113  # torch.Generator seed of noise.npy
FORM_TOL = 1e-5  # masked vs compact vs cached agreement (v and LLM outputs), absolute
GRN_EPS = 1e-6

PROMPT1 = "a red fox in snow"
PROMPT2 = "A watercolor painting of a lighthouse at dusk, 4k"
CASES = [
    dict(name="s3_cfg2", prompt=PROMPT1, steps=3, cfg=2.0),
    dict(name="s5_cfg1", prompt=PROMPT1, steps=5, cfg=1.0),
    dict(name="s4_cfg5", prompt=PROMPT1, steps=4, cfg=5.0),
    dict(name="s30_cfg2", prompt=PROMPT1, steps=30, cfg=2.0),
    dict(name="p2_s3_cfg2", prompt=PROMPT2, steps=3, cfg=2.0),
]

F32 = torch.float32


def f32(x):
    return torch.tensor(x, dtype=F32)


def tau_of(k, n):
    """Network timestep for step k of n: upstream `k / n * 1000.` (Python double) cast to float32.

    Equals the single correctly rounded float32 division f32(1000*k) / f32(n) for every k < n <= 50
    here; NOT the same as f32(k/n) * 1000 in float32 (differs by 1 ulp at e.g. k=1, 29 of 30).
    """
    return f32(k / n * 1000.0)


# ----------------------------------------------------------------------------------------------
# Forwards (float32, unbatched: feature maps are [C, H, W])
# ----------------------------------------------------------------------------------------------


def rms_norm(x, w, eps=RMS_EPS):
    """LlamaRMSNorm over the last dim: x * rsqrt(mean(x^2) + eps), then * weight (all f32 here)."""
    var = x.pow(2).mean(-1, keepdim=True)
    return w * (x * torch.rsqrt(var + eps))


def rms_norm_channels(x, w):
    """RMSNorm over the channel dim of a [C, H, W] map (upstream permutes to channels-last)."""
    return rms_norm(x.permute(1, 2, 0), w).permute(2, 0, 1)


def time_proj(tau, dim):
    """diffusers Timesteps(dim, flip_sin_to_cos=True, downscale_freq_shift=0), float32 ops.

    exponent_i = f32(-ln(10000) * i) / half; f_i = exp(exponent_i); a_i = tau * f_i;
    out = [cos(a_0..a_{half-1}), sin(a_0..a_{half-1})].
    """
    half = dim // 2
    exponent = -math.log(10000.0) * torch.arange(half, dtype=F32)
    exponent = exponent / half
    arg = tau.to(F32) * torch.exp(exponent)
    return torch.cat([torch.cos(arg), torch.sin(arg)])


def linear(x, sd, prefix):
    return x @ sd[prefix + ".weight"].T + sd[prefix + ".bias"]


def time_embed(tau, sd, dim):
    e = time_proj(tau, dim)
    p = "vision_gen_enc_model.time_embed."
    return linear(F.silu(linear(e, sd, p + "linear_1")), sd, p + "linear_2")


def grn(y, gamma, beta):
    """ConvNeXt-V2 GRN on channels-last y [H, W, C4] (upstream GlobalResponseNorm):
    g = ||y||_2 over (H, W) per channel; n = g / (mean_c g + 1e-6); out = beta + (gamma*n + 1) * y.
    """
    g = torch.sqrt(y.pow(2).sum(dim=(0, 1)))  # [C4]
    n = g / (g.mean() + GRN_EPS)
    return beta + (gamma * n + 1.0) * y


def convnext_block(x, t_emb, sd, p):
    C = x.shape[0]
    r = x
    y = F.conv2d(x[None], sd[p + "depthwise.weight"], sd[p + "depthwise.bias"], padding=3, groups=C)[0]
    y = y.permute(1, 2, 0)  # [H, W, C]
    y = rms_norm(y, sd[p + "norm.weight"])
    y = linear(y, sd, p + "channelwise_linear_1")
    y = F.gelu(y)  # exact (erf) GELU
    y = grn(y, sd[p + "channelwise_norm.weight"].reshape(-1), sd[p + "channelwise_norm.bias"].reshape(-1))
    y = linear(y, sd, p + "channelwise_linear_2")
    x = y.permute(2, 0, 1) + r  # residual before FiLM
    ss = linear(F.silu(t_emb), sd, p + "cond_embeds_mapper")
    scale, shift = ss[:C], ss[C:]
    return x * (1.0 + scale)[:, None, None] + shift[:, None, None]


def mid_block(x, t_emb, sd, prefix, n_layers):
    for j in range(n_layers):
        x = convnext_block(x, t_emb, sd, f"{prefix}mid_block.res_blocks.{j}.")
    return x


def gen_encoder(z, tau, sd, cfg):
    """z [4, S, S] -> x_emb [C, S/2, S/2], t_emb [hidden]."""
    C = cfg["block_out_channels"][0]
    p = "vision_gen_enc_model."
    t_emb = time_embed(tau, sd, C)
    x = F.conv2d(z[None], sd[p + "in_conv.weight"], sd[p + "in_conv.bias"],
                 stride=cfg["stride"], padding=cfg["padding"])[0]
    x = mid_block(x, t_emb, sd, p, cfg["layers_in_middle"])
    return x, t_emb


def pixel_shuffle2(x):
    """[4*c, h, w] -> [c, 2h, 2w] with out[c, 2h+i, 2w+j] = in[4c + 2i + j, h, w]."""
    c4, h, w = x.shape
    c = c4 // 4
    return x.reshape(c, 2, 2, h, w).permute(0, 3, 1, 4, 2).reshape(c, 2 * h, 2 * w)


def gen_decoder(a, skip, t_emb, sd, cfg):
    """a: LLM branch [Cin, g, g]; skip: encoder x_emb [Cenc, g, g] -> v [4, 2g, 2g]."""
    p = "vision_gen_dec_model."
    a = rms_norm_channels(a, sd[p + "input_norm.weight"])
    x = torch.cat([a, skip], 0)  # [LLM branch | skip]
    x = mid_block(x, t_emb, sd, p, cfg["layers_in_middle"])
    u = p + "out_convs.0."
    x = rms_norm_channels(x, sd[u + "norm.weight"])
    x = F.conv2d(x[None], sd[u + "unpatch_conv.weight"], sd[u + "unpatch_conv.bias"])[0]
    return pixel_shuffle2(x)


def enc_tokens(x_emb, sd):
    """[C, g, g] -> row-major tokens [g*g, C] -> vision_gen_enc_aligner -> [g*g, hidden]."""
    C = x_emb.shape[0]
    return linear(x_emb.reshape(C, -1).T, sd, "vision_gen_enc_aligner")


def dec_branch(h, sd, g):
    """LLM output rows [g*g, hidden] -> aligner norm -> aligner -> [Cin, g, g] (row-major)."""
    a = linear(rms_norm(h, sd["vision_gen_dec_aligner_norm.weight"]), sd, "vision_gen_dec_aligner")
    return a.reshape(g, g, -1).permute(2, 0, 1)


# ----------------------------------------------------------------------------------------------
# Flow loop
# ----------------------------------------------------------------------------------------------


class Gen:
    def __init__(self, sd, lm, enc_cfg, dec_cfg, n_tok, grid, pad_id):
        self.sd, self.lm, self.enc_cfg, self.dec_cfg = sd, lm, enc_cfg, dec_cfg
        self.n_tok, self.g, self.pad = n_tok, grid, pad_id
        self.E = sd["language_model.model.embed_tokens.weight"]

    def llm(self, **kw):
        with torch.no_grad():
            return self.lm.model(**kw)

    def step_inputs(self, z, tau):
        x_emb, t_emb = gen_encoder(z, tau, self.sd, self.enc_cfg)
        toks = enc_tokens(x_emb, self.sd)
        return x_emb, t_emb, toks

    def velocities(self, h_cond, h_unc, x_emb, t_emb):
        vs = []
        for h in (h_cond, h_unc):
            a = dec_branch(h, self.sd, self.g)
            vs.append(gen_decoder(a, x_emb, t_emb, self.sd, self.dec_cfg))
        return vs

    def run_masked(self, ids, z, tau):
        """Upstream form: batch [cond; uncond], uncond ids 1..L-1 = pad, mask 0 at 1..L-1."""
        L = len(ids)
        x_emb, t_emb, toks = self.step_inputs(z, tau)
        unc_ids = [ids[0]] + [self.pad] * (L - 1)
        rows = []
        for rid in (ids, unc_ids):
            rows.append(torch.cat([self.E[torch.tensor(rid)], t_emb[None], toks], 0))
        seq = torch.stack(rows)
        mask = torch.ones(2, L + 1 + self.n_tok, dtype=torch.long)
        mask[1, 1:L] = 0
        out = self.llm(inputs_embeds=seq, attention_mask=mask, use_cache=False).last_hidden_state
        h = out[:, -self.n_tok:]
        v_c, v_u = self.velocities(h[0], h[1], x_emb, t_emb)
        return dict(x_emb=x_emb, t_emb=t_emb, toks=toks, h_cond=h[0], h_unc=h[1], v_cond=v_c, v_unc=v_u)

    def run_compact(self, ids, z, tau):
        L = len(ids)
        x_emb, t_emb, toks = self.step_inputs(z, tau)
        img = torch.cat([t_emb[None], toks], 0)
        cond = torch.cat([self.E[torch.tensor(ids)], img], 0)
        h_c = self.llm(inputs_embeds=cond[None], use_cache=False).last_hidden_state[0, -self.n_tok:]
        unc = torch.cat([self.E[torch.tensor(ids[:1])], img], 0)
        pos = torch.tensor([[0] + list(range(L, L + 1 + self.n_tok))])
        # An explicit all-ones mask is required: with attention_mask=None, transformers (5.24) reads the
        # position jump 0 -> L as a packed-sequence boundary and would hide BOS from the other tokens.
        ones = torch.ones(1, unc.shape[0], dtype=torch.long)
        h_u = self.llm(inputs_embeds=unc[None], position_ids=pos, attention_mask=ones,
                       use_cache=False).last_hidden_state[0, -self.n_tok:]
        v_c, v_u = self.velocities(h_c, h_u, x_emb, t_emb)
        return dict(h_cond=h_c, h_unc=h_u, v_cond=v_c, v_unc=v_u)

    def prefix_caches(self, ids):
        c = self.llm(inputs_embeds=self.E[torch.tensor(ids)][None], use_cache=True).past_key_values
        u = self.llm(inputs_embeds=self.E[torch.tensor(ids[:1])][None], use_cache=True).past_key_values
        return c, u

    def run_cached(self, ids, caches, z, tau):
        L = len(ids)
        x_emb, t_emb, toks = self.step_inputs(z, tau)
        img = torch.cat([t_emb[None], toks], 0)[None]
        pos = torch.arange(L, L + 1 + self.n_tok)[None]
        hs = []
        for cache in caches:
            kv = copy.deepcopy(cache)  # the prefix cache must not grow across steps
            n_past = kv.get_seq_length()
            out = self.llm(inputs_embeds=img, position_ids=pos, past_key_values=kv, use_cache=True,
                           attention_mask=torch.ones(1, n_past + img.shape[1], dtype=torch.long))
            hs.append(out.last_hidden_state[0, -self.n_tok:])
        v_c, v_u = self.velocities(hs[0], hs[1], x_emb, t_emb)
        return dict(h_cond=hs[0], h_unc=hs[1], v_cond=v_c, v_unc=v_u)


def maxdiff(a, b):
    return (a - b).abs().max().item()


def assert_finite(name, t):
    if not torch.isfinite(t).all():
        sys.exit(f"non-finite values in {name}")


# ----------------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------------


def sha(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()[:16]


def main():
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)

    with open(os.path.join(TINY_DIR, "config.json")) as f:
        config = json.load(f)
    enc_cfg = config["vision_gen_enc_config"]["params"]
    dec_cfg = config["vision_gen_dec_config"]["params"]
    with open(os.path.join(TINY_DIR, "vae", "config.json")) as f:
        vae_cfg = json.load(f)
    sf = float(vae_cfg["scaling_factor"])
    factor = 2 ** (len(vae_cfg["block_out_channels"]) - 1)
    image_size = config.get("gen_image_size", 384)
    latent = image_size // factor
    grid = latent // 2
    n_tok = grid * grid
    hidden = config["language_config"]["hidden_size"]
    C_enc = enc_cfg["block_out_channels"][0]
    C_dec = dec_cfg["in_channels"]
    assert (latent, n_tok, hidden, C_enc, C_dec) == (16, 64, 64, 32, 32), (latent, n_tok, hidden)

    if os.path.isdir(OUT_DIR):
        shutil.rmtree(OUT_DIR)
    os.makedirs(OUT_DIR)

    def save(name, arr, dtype=np.float32):
        a = arr.detach().numpy() if isinstance(arr, torch.Tensor) else arr
        a = np.ascontiguousarray(a.astype(dtype))
        np.save(os.path.join(OUT_DIR, name), a)
        return name

    # --------------------------------------------------------------- weights (bf16 -> f32)
    sd = {k: v.float() for k, v in load_file(os.path.join(TINY_DIR, "model.safetensors")).items()}
    from transformers import LlamaForCausalLM

    lm = LlamaForCausalLM(llama_config()).float().eval()
    lm.load_state_dict({k[len("language_model."):]: v for k, v in sd.items()
                        if k.startswith("language_model.")}, strict=True)

    tok, tag_ids = load_tokenizer_with_image_tags(os.path.join(TINY_DIR, "tokenizer.json"))
    bos_id = tok.token_to_id("<｜begin▁of▁sentence｜>")
    pad_id = tok.token_to_id(EOS)  # no <｜▁pad▁｜> in the vocabulary -> pad = EOS (§9.5)
    gen_id = tag_ids[GEN_TAG]
    assert (bos_id, pad_id, gen_id) == (380, 381, 382), (bos_id, pad_id, gen_id)

    # --------------------------------------------------------------- unit cross-checks
    from diffusers.models.embeddings import TimestepEmbedding, Timesteps
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    checks = {}
    ts_lib = Timesteps(C_enc, flip_sin_to_cos=True, downscale_freq_shift=0)
    te_lib = TimestepEmbedding(C_enc, hidden, sample_proj_bias=True).float().eval()
    te_lib.load_state_dict({k[len("vision_gen_enc_model.time_embed."):]: v for k, v in sd.items()
                            if k.startswith("vision_gen_enc_model.time_embed.")}, strict=True)
    d_proj = d_emb = 0.0
    for tau in [f32(0.0), f32(500.0), tau_of(29, 30), tau_of(1, 30), f32(999.0)]:
        with torch.no_grad():
            lib_p = ts_lib(tau.reshape(1))[0]
            lib_e = te_lib(lib_p[None])[0]
        d_proj = max(d_proj, maxdiff(lib_p, time_proj(tau, C_enc)))
        d_emb = max(d_emb, maxdiff(lib_e, time_embed(tau, sd, C_enc)))
    assert d_proj == 0.0 and d_emb < 1e-6, (d_proj, d_emb)
    checks["time_proj_vs_diffusers_Timesteps"] = d_proj
    checks["t_emb_vs_diffusers_TimestepEmbedding"] = d_emb

    gx = torch.randn(2 * C_dec * 4, grid, grid, generator=torch.Generator().manual_seed(5))
    d_ps = maxdiff(pixel_shuffle2(gx), F.pixel_shuffle(gx[None], 2)[0])
    assert d_ps == 0.0
    checks["pixel_shuffle_vs_torch"] = d_ps

    ref_norm = LlamaRMSNorm(hidden, eps=RMS_EPS)
    with torch.no_grad():
        ref_norm.weight.copy_(sd["vision_gen_dec_aligner_norm.weight"])
        hx = 5.0 * torch.randn(7, hidden, generator=torch.Generator().manual_seed(6))
        d_rms = maxdiff(ref_norm(hx), rms_norm(hx, sd["vision_gen_dec_aligner_norm.weight"]))
    assert d_rms < 1e-6, d_rms
    checks["rms_norm_vs_LlamaRMSNorm"] = d_rms

    # Time embeddings.
    for name, tau in [("tau0", f32(0.0)), ("tau500", f32(500.0)), ("tau966", tau_of(29, 30))]:
        save(f"t_emb_{name}.npy", time_embed(tau, sd, C_enc))
    save("t_proj_tau500.npy", time_proj(f32(500.0), C_enc))

    # --------------------------------------------------------------- noise, encoder at t = 0
    noise = torch.randn(4, latent, latent, generator=torch.Generator().manual_seed(NOISE_SEED), dtype=F32)
    save("noise.npy", noise)
    x_emb0, t_emb0 = gen_encoder(noise, f32(0.0), sd, enc_cfg)
    toks0 = enc_tokens(x_emb0, sd)
    assert_finite("x_emb0", x_emb0)
    assert_finite("enc_tokens0", toks0)
    save("x_emb_step0.npy", x_emb0)
    save("enc_tokens_step0.npy", toks0)

    # --------------------------------------------------------------- VAE
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(os.path.join(TINY_DIR, "vae")).float().eval()
    vae_keys = {k: list(v.shape) for k, v in vae.state_dict().items()
                if k.startswith("decoder.") or k.startswith("post_quant_conv.")}

    def vae_decode(z):
        with torch.no_grad():
            return vae.decode((z / f32(sf))[None]).sample[0]

    vdn = vae_decode(noise)
    assert vdn.shape == (3, image_size, image_size) and torch.isfinite(vdn).all()
    save("vae_decoded_noise.npy", vdn)

    # --------------------------------------------------------------- cases
    gen = Gen(sd, lm, enc_cfg, dec_cfg, n_tok, grid, pad_id)
    cases_out = []
    agree = {"v_masked_vs_compact": 0.0, "v_masked_vs_cached": 0.0,
             "llm_masked_vs_compact": 0.0, "llm_masked_vs_cached": 0.0, "z_final_masked_vs_cached": 0.0}
    for case in CASES:
        name, N = case["name"], case["steps"]
        text = build_prompt([{"role": "User", "content": case["prompt"]}], system="") + GEN_TAG
        full_ids = tok.encode(text).ids
        assert full_ids[0] == bos_id and full_ids.count(bos_id) == 1 and full_ids[-1] == gen_id, full_ids
        ids = full_ids[:-1]
        L = len(ids)
        w = f32(case["cfg"])
        w1 = w - 1.0
        dt = f32(1.0 / N)
        caches = gen.prefix_caches(ids)

        z = noise.clone()
        z_alt = noise.clone()  # trajectory of the cached form, integrated independently
        taus = []
        max_v = 0.0
        for k in range(N):
            tau = tau_of(k, N)
            taus.append(float(tau))
            m = gen.run_masked(ids, z, tau)
            c = gen.run_compact(ids, z, tau)
            kc = gen.run_cached(ids, caches, z, tau)
            for key, lab in (("v_cond", "v"), ("v_unc", "v"), ("h_cond", "llm"), ("h_unc", "llm")):
                for other, form in ((c, "compact"), (kc, "cached")):
                    d = maxdiff(m[key], other[key])
                    agree[f"{lab}_masked_vs_{form}"] = max(agree[f"{lab}_masked_vs_{form}"], d)
                    if d > FORM_TOL:
                        sys.exit(f"[{name}] step {k}: {key} masked vs {form} differ by {d}")
            for key in ("x_emb", "t_emb", "toks", "h_cond", "h_unc", "v_cond", "v_unc"):
                assert_finite(f"{name} step {k} {key}", m[key])
            if k == 0:
                assert maxdiff(m["x_emb"], x_emb0) == 0.0 and maxdiff(m["toks"], toks0) == 0.0
                save(f"v_cond_step0_{name}.npy", m["v_cond"])
                save(f"v_uncond_step0_{name}.npy", m["v_unc"])
                save(f"llm_out_cond_step0_{name}.npy", m["h_cond"])
            v = w * m["v_cond"] - w1 * m["v_unc"]
            if case["cfg"] == 1.0:
                assert torch.equal(v, m["v_cond"]), "cfg 1 must give v = v_cond exactly"
            max_v = max(max_v, v.abs().max().item())
            z = z + dt * v
            z_alt = z_alt + dt * (w * kc["v_cond"] - w1 * kc["v_unc"])
            assert_finite(f"{name} z step {k}", z)
        dz = maxdiff(z, z_alt)
        agree["z_final_masked_vs_cached"] = max(agree["z_final_masked_vs_cached"], dz)
        assert dz < 1e-4, dz

        dec = vae_decode(z)
        assert_finite(f"{name} decoded", dec)
        img = ((dec.clamp(-1.0, 1.0).permute(1, 2, 0).numpy() + 1.0) / 2.0 * 255.0).astype(np.uint8)
        files = {
            "v_cond_step0": f"v_cond_step0_{name}.npy",
            "v_uncond_step0": f"v_uncond_step0_{name}.npy",
            "llm_out_cond_step0": f"llm_out_cond_step0_{name}.npy",
            "z_final": save(f"z_final_{name}.npy", z),
            "decoded": save(f"decoded_{name}.npy", dec),
            "image": save(f"image_{name}.npy", img, np.uint8),
        }
        print(f"[{name}] L={L} steps={N} cfg={case['cfg']} max|v|={max_v:.4f} "
              f"max|z|={z.abs().max().item():.4f} decoded range [{dec.min().item():.3f}, "
              f"{dec.max().item():.3f}] z masked-vs-cached {dz:.2e}")
        cases_out.append({
            "name": name,
            "prompt": case["prompt"],
            "prompt_text": text,
            "steps": N,
            "cfg": case["cfg"],
            "prefix_ids": ids,
            "L": L,
            "taus": taus,
            "files": files,
        })

    meta = {
        "checkpoint": "tests/fixtures/tiny",
        "dtype": "float32 (bf16 checkpoint upcast; VAE f32)",
        "latent": [4, latent, latent],
        "gen_tokens": n_tok,
        "image_size": image_size,
        "scaling_factor": sf,
        "pad_id": pad_id,
        "bos_id": bos_id,
        "gen_tag_id": gen_id,
        "noise": {"file": "noise.npy", "generator_seed": NOISE_SEED},
        "schedule": "t_k = k/N, tau_k = f32(k/N*1000 in f64) = f32(1000k)/f32(N), dt = f32(1/N); "
                    "v = w*v_cond - (w-1)*v_uncond; z += dt*v (all float32)",
        "files": {
            "t_emb_tau0.npy": "t_emb at tau 0 [hidden]",
            "t_emb_tau500.npy": "t_emb at tau 500 [hidden]",
            "t_emb_tau966.npy": f"t_emb at tau f32(29/30*1000) = {float(tau_of(29, 30))!r} [hidden]",
            "t_proj_tau500.npy": "raw sinusoid at tau 500 [enc channels], cos half first",
            "x_emb_step0.npy": "gen encoder output map for noise at tau 0 [C, g, g]",
            "enc_tokens_step0.npy": "x_emb_step0 row-major tokens after vision_gen_enc_aligner [g*g, hidden]",
            "vae_decoded_noise.npy": "AutoencoderKL.decode(noise / scaling_factor).sample [3, H, W]",
        },
        "cross_checks": {**checks, **agree},
        "vae_decoder_keys": vae_keys,
        "cases": cases_out,
    }
    with open(os.path.join(OUT_DIR, "cases.json"), "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=1, ensure_ascii=False)
        f.write("\n")

    print("cross-checks:", json.dumps({**checks, **agree}))
    for fn in sorted(os.listdir(OUT_DIR)):
        p = os.path.join(OUT_DIR, fn)
        extra = ""
        if fn.endswith(".npy"):
            a = np.load(p)
            extra = f"{a.dtype} {list(a.shape)}"
        print(f"  {os.path.relpath(p, REPO_ROOT):58s} {os.path.getsize(p):>7d}  {sha(p)}  {extra}")


if __name__ == "__main__":
    main()

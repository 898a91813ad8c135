#!/usr/bin/env python3
"""Test images, preprocessing references and image-understanding references for the tiny checkpoint.

Usage (from the repository root, after `make_fixtures.py` has built `tests/fixtures/tiny/`):

    python3 tests/reference/make_und_refs.py

Outputs (all deterministic; the script deletes and rewrites these two folders only)
-------------------------------------------------------------------------------------
tests/fixtures/images/          11 small test images in various formats / modes (numpy + PIL)
tests/fixtures/tiny-ref-und/    pre/: preprocessing references (docs §2.1) for sizes 64 and 384;
                                SigLIP / aligner / spliced-embedding / LLM references (float32) for
                                five image-chat cases on the committed tiny checkpoint.

Written from the architecture spec (/work/shared/docs/janusflow-architecture.md §1.4, §2.1-2.3,
§2.7, §6, §9); the upstream code (deepseek-ai/Janus, janus/janusflow/...) was read only to confirm
semantics. The SigLIP tower, aligner and splice are this script's own functions; the SigLIP forward
is cross-checked against `transformers.SiglipVisionModel` with mapped weights. The language model is
`transformers.LlamaForCausalLM` (as in make_fixtures.py) fed with `inputs_embeds`.
"""

import io
import json
import math
import os
import shutil
import struct
import sys
import zlib

import numpy as np
import PIL
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps
from safetensors.torch import load_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_fixtures as mf  # noqa: E402  (module classes, tokenizer helpers, prompt builder)

REPO_ROOT = mf.REPO_ROOT
TINY_DIR = mf.TINY_DIR
IMG_DIR = os.path.join(REPO_ROOT, "tests", "fixtures", "images")
OUT_DIR = os.path.join(REPO_ROOT, "tests", "fixtures", "tiny-ref-und")
PRE_DIR = os.path.join(OUT_DIR, "pre")

TARGET_SIZES = (64, 384)  # tiny model, real model
N_GREEDY = 32
MIN_GAP = 1e-3
IMAGE_SEED = 20241126

# ----------------------------------------------------------------------------------------------
# A) Test images
# ----------------------------------------------------------------------------------------------


def pattern(w, h, seed, noise=10.0):
    """Float RGB image [h, w, 3] in 0..255: gradients, rings, a hard-edged disc, stripes, noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    u, v = x / max(w - 1, 1), y / max(h - 1, 1)
    cx, cy = 0.37 * w, 0.58 * h
    r = np.hypot(x - cx, y - cy)
    img = np.zeros((h, w, 3))
    img[..., 0] = 30 + 200 * u  # horizontal gradient
    img[..., 1] = 220 - 180 * v  # vertical gradient
    img[..., 2] = 128 + 90 * np.cos(r / max(w, h) * 6 * math.pi)  # concentric rings
    disc = np.hypot(x - 0.72 * w, y - 0.3 * h) < 0.18 * min(w, h)  # hard edge
    img[disc] = [250, 230, 20]
    stripes = (v > 0.8) & (np.floor(x / 2) % 2 == 0)  # 2-px vertical stripes at the bottom
    img[stripes] = img[stripes] * 0.3
    checker = (u < 0.2) & (v < 0.2) & ((x.astype(int) + y.astype(int)) % 2 == 0)  # 1-px checkerboard
    img[checker] = 255 - img[checker]
    img += rng.normal(0.0, noise, size=img.shape)
    return np.clip(img, 0, 255)


def u8(a):
    return np.clip(np.rint(a), 0, 255).astype(np.uint8)


def write_png16_rgb(path, arr16):
    """Minimal PNG writer: colour type 2 (RGB), bit depth 16, one IDAT, filter 0 on every row."""
    h, w, c = arr16.shape
    assert c == 3 and arr16.dtype == np.uint16
    raw = b"".join(b"\x00" + arr16[row].astype(">u2").tobytes() for row in range(h))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    png = b"\x89PNG\r\n\x1a\n"
    png += chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(raw, 9))
    png += chunk(b"IEND", b"")
    with open(path, "wb") as f:
        f.write(png)


def png_ihdr(path):
    with open(path, "rb") as f:
        head = f.read(33)
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR"
    w, h, depth, ctype = struct.unpack(">IIBB", head[16:26])
    return dict(width=w, height=h, bit_depth=depth, color_type=ctype)


def make_images():
    if os.path.isdir(IMG_DIR):
        shutil.rmtree(IMG_DIR)
    os.makedirs(IMG_DIR)
    p = lambda n: os.path.join(IMG_DIR, n)  # noqa: E731
    s = IMAGE_SEED

    Image.fromarray(u8(pattern(80, 80, s + 1)), "RGB").save(p("square_80.png"))
    Image.fromarray(u8(pattern(101, 70, s + 2)), "RGB").save(p("wide_101x70.png"))
    # tall: different colour balance so that the two images of case two_images differ clearly
    t = pattern(33, 40, s + 3)[..., ::-1]
    Image.fromarray(u8(t), "RGB").save(p("tall_33x40.png"))

    g = pattern(50, 64, s + 4)
    Image.fromarray(u8(g @ np.array([0.299, 0.587, 0.114])), "L").save(p("gray_50x64.png"))

    # RGBA: alpha ramps 0..255 left to right, a fully transparent block (with vivid magenta RGB
    # underneath, so compositing vs. dropping alpha is obvious) and a partial-alpha band.
    rgb = u8(pattern(64, 48, s + 5))
    alpha = np.tile(np.linspace(0, 255, 64).round().astype(np.uint8), (48, 1))
    rgb[4:20, 40:60] = [255, 0, 255]
    alpha[4:20, 40:60] = 0
    alpha[30:40, :] = 128
    Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(p("rgba_64x48.png"))

    # 16-bit RGB: full 16-bit values (low bytes >= 0x80 occur, so truncation != rounding).
    rng = np.random.default_rng(s + 6)
    a16 = pattern(40, 30, s + 6) * 257.0 + rng.uniform(0, 256, size=(30, 40, 3))
    write_png16_rgb(p("rgb16_40x30.png"), np.clip(a16, 0, 65535).astype(np.uint16))
    ih = png_ihdr(p("rgb16_40x30.png"))
    assert ih["bit_depth"] == 16 and ih["color_type"] == 2, ih

    # JPEGs (Pillow defaults: 4:2:0 chroma subsampling at quality 90, baseline)
    photo = pattern(640, 480, s + 7, noise=4.0)
    yy, xx = np.mgrid[0:480, 0:640]
    hills = yy > 330 + 40 * np.sin(xx / 640 * 5 * math.pi)
    photo[hills] = photo[hills] * [0.3, 0.8, 0.3]
    Image.fromarray(u8(photo), "RGB").save(p("photo_640x480.jpg"), quality=90)

    # EXIF orientation 6: stored 60x40; displayed rotated 90° clockwise -> 40x60. Asymmetric
    # content (red block top-left of the stored image, blue bar along the stored bottom edge).
    e = pattern(60, 40, s + 8, noise=3.0)
    e[2:12, 2:18] = [230, 20, 20]
    e[34:39, :] = [20, 20, 230]
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(u8(e), "RGB").save(p("exif_rot6.jpg"), quality=90, exif=exif)

    # Animated GIF: two different 48x48 frames (second frame = inverted other pattern).
    f0 = Image.fromarray(u8(pattern(48, 48, s + 9, noise=0.0)), "RGB")
    f1 = Image.fromarray(255 - u8(pattern(48, 48, s + 10, noise=0.0))[::-1], "RGB")
    q0 = f0.quantize(colors=64, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    q1 = f1.quantize(colors=64, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    q0.save(p("anim.gif"), save_all=True, append_images=[q1], duration=200, loop=0)

    Image.fromarray(u8(pattern(70, 50, s + 11)), "RGB").save(p("pic.webp"), lossless=True)
    Image.fromarray(u8(pattern(45, 37, s + 12)), "RGB").save(p("pic.bmp"))

    # Checks on what was written.
    with Image.open(p("anim.gif")) as im:
        assert im.n_frames == 2
        im.seek(0)
        a0 = np.asarray(im.convert("RGB")).copy()
        im.seek(1)
        a1 = np.asarray(im.convert("RGB")).copy()
        assert np.abs(a0.astype(int) - a1.astype(int)).mean() > 20, "GIF frames must differ"
    with Image.open(p("exif_rot6.jpg")) as im:
        assert im.getexif().get(0x0112) == 6
    with open(p("pic.bmp"), "rb") as f:
        bmp = f.read(30)
    assert bmp[:2] == b"BM" and struct.unpack("<H", bmp[28:30])[0] == 24, "24-bit BMP expected"
    with open(p("pic.webp"), "rb") as f:
        webp = f.read(16)
    assert webp[:4] == b"RIFF" and webp[8:12] == b"WEBP" and webp[12:16] == b"VP8L", "lossless WebP expected"


IMAGE_FILES = [
    "square_80.png",
    "wide_101x70.png",
    "tall_33x40.png",
    "gray_50x64.png",
    "rgba_64x48.png",
    "rgb16_40x30.png",
    "photo_640x480.jpg",
    "exif_rot6.jpg",
    "anim.gif",
    "pic.webp",
    "pic.bmp",
]

# ----------------------------------------------------------------------------------------------
# B) Preprocessing (docs §2.1)
# ----------------------------------------------------------------------------------------------


def load_rgb(path):
    """Open, honour EXIF orientation (our engine does; upstream does not), convert to RGB.

    Returns the RGB image and facts about the file as PIL saw it."""
    with Image.open(path) as im:
        info = {
            "format": im.format,
            "mode": im.mode,
            "size": list(im.size),
            "n_frames": getattr(im, "n_frames", 1),
            "exif_orientation": im.getexif().get(0x0112),
        }
        if im.format == "PNG":
            info["png_ihdr"] = png_ihdr(path)
        if im.format == "JPEG":
            from PIL import JpegImagePlugin

            info["jpeg_subsampling"] = ["4:4:4", "4:2:2", "4:2:0"][JpegImagePlugin.get_sampling(im)]
        im.load()  # first frame for multi-frame files
        up = ImageOps.exif_transpose(im)  # no-op copy unless an Orientation tag != 1 is present
        info["size_after_exif"] = list(up.size)
        rgb = up.convert("RGB")
    return rgb, info


def preprocess(rgb, S, min_size, background):
    """Resize (PIL BICUBIC, = torchvision resize on a PIL image) and pad centred on an SxS canvas."""
    W, H = rgb.size
    m = max(W, H)
    w2 = max(int(W / m * S), min_size)
    h2 = max(int(H / m * S), min_size)
    resized = rgb.resize((w2, h2), Image.BICUBIC)
    off = ((S - w2) // 2, (S - h2) // 2)
    canvas = Image.new("RGB", (S, S), tuple(background))
    canvas.paste(resized, off)
    return np.asarray(canvas, dtype=np.uint8).copy(), (w2, h2), off


# Bit-exact replica of Pillow's BICUBIC resize for 8-bit images (libImaging/Resample.c), used as an
# independent check of the references and as the recipe an engine has to follow:
#  * kernel: Keys cubic with a = -0.5, support 2; when downscaling (scale = in/out > 1) the kernel is
#    stretched by `scale` (antialiasing), support 2*scale;
#  * output sample i has centre c = (i + 0.5)*scale; taps x = xmin .. xmax-1 with
#    xmin = max(int(c - support + 0.5), 0), xmax = min(int(c + support + 0.5), in);
#    weights w = cubic((x - c + 0.5)/max(scale, 1)), divided by their sum (float64);
#  * weights to fixed point: k = int(w*2^22 + 0.5) (w >= 0) or int(w*2^22 - 0.5) (w < 0);
#  * acc = 2^21 + sum(pixel*k) (integer), out = clamp(acc >> 22, 0, 255);
#  * horizontal pass first (into a uint8 intermediate), then the vertical pass; an axis whose size
#    does not change is not resampled at all.
PIL_PREC = 22


def _cubic(x, a=-0.5):
    x = abs(x)
    if x < 1.0:
        return ((a + 2.0) * x - (a + 3.0)) * x * x + 1
    if x < 2.0:
        return (((x - 5) * x + 8) * x - 4) * a
    return 0.0


def _pil_coeffs(n_in, n_out):
    scale = n_in / n_out
    fs = max(scale, 1.0)
    support = 2.0 * fs
    out = []
    for i in range(n_out):
        c = (i + 0.5) * scale
        xmin = max(int(c - support + 0.5), 0)
        xmax = min(int(c + support + 0.5), n_in)
        w = [_cubic((x + xmin - c + 0.5) / fs) for x in range(xmax - xmin)]
        tot = sum(w)
        if tot != 0.0:
            w = [v / tot for v in w]
        k = [int(v * (1 << PIL_PREC) - 0.5) if v < 0 else int(v * (1 << PIL_PREC) + 0.5) for v in w]
        out.append((xmin, k))
    return out


def _pil_pass(a, n_out, axis):
    a = np.moveaxis(a, axis, 0)
    res = np.empty((n_out,) + a.shape[1:], dtype=np.int64)
    for i, (xmin, k) in enumerate(_pil_coeffs(a.shape[0], n_out)):
        acc = np.full(a.shape[1:], 1 << (PIL_PREC - 1), dtype=np.int64)
        for j, kj in enumerate(k):
            acc += a[xmin + j] * kj
        res[i] = np.clip(acc >> PIL_PREC, 0, 255)
    return np.moveaxis(res, 0, axis)


def pil_bicubic_resize(arr, w2, h2):
    """uint8 [H, W, C] -> uint8 [h2, w2, C], identical to PIL Image.resize((w2, h2), BICUBIC)."""
    x = arr.astype(np.int64)
    if w2 != arr.shape[1]:
        x = _pil_pass(x, w2, 1)
    if h2 != arr.shape[0]:
        x = _pil_pass(x, h2, 0)
    return x.astype(np.uint8)


def upstream_style(rgb, S, min_size, background):
    """Second formulation mirroring upstream: resize then expand2square to max(w', h')."""
    W, H = rgb.size
    m = max(W, H)
    size_hw = [max(int(H / m * S), min_size), max(int(W / m * S), min_size)]
    r = rgb.resize(tuple(size_hw[::-1]), Image.BICUBIC)
    w, h = r.size
    if w != h:
        side = max(w, h)
        sq = Image.new(r.mode, (side, side), tuple(background))
        sq.paste(r, (0, (w - h) // 2) if w > h else ((h - w) // 2, 0))
        r = sq
    return np.asarray(r, dtype=np.uint8)


def normalise(u8img, pp):
    x = u8img.astype(np.float64).transpose(2, 0, 1) * pp["rescale_factor"]
    if pp["do_normalize"]:
        mean = np.array(pp["image_mean"], dtype=np.float64)[:, None, None]
        std = np.array(pp["image_std"], dtype=np.float64)[:, None, None]
        x = (x - mean) / std
    return x.astype(np.float32)


# ----------------------------------------------------------------------------------------------
# C) Model: SigLIP tower, aligner, splice (docs §1.4, §2.2, §9)
# ----------------------------------------------------------------------------------------------


def siglip_forward(sd, pixels, p, prefix="vision_und_enc_model.vision_tower."):
    """pixels [3, S, S] float32 -> (output after final LN [N, W], residual streams after each block)."""
    P, W, nh = p["patch_size"], p["width"], p["heads"]
    S = pixels.shape[-1]
    g = S // P
    hd = W // nh
    # Patch embedding as a matmul: token (row, col) row-major, features ordered (c, ky, kx).
    patches = pixels.reshape(3, g, P, g, P).permute(1, 3, 0, 2, 4).reshape(g * g, 3 * P * P)
    x = patches @ sd[prefix + "patch_embed.proj.weight"].reshape(W, -1).T + sd[prefix + "patch_embed.proj.bias"]
    x = x + sd[prefix + "pos_embed"][0]
    n_tok = x.shape[0]
    streams = []
    i = 0
    while f"{prefix}blocks.{i}.norm1.weight" in sd:
        b = f"{prefix}blocks.{i}."
        h = F.layer_norm(x, (W,), sd[b + "norm1.weight"], sd[b + "norm1.bias"], eps=1e-6)
        qkv = h @ sd[b + "attn.qkv.weight"].T + sd[b + "attn.qkv.bias"]
        q, k, v = (t.reshape(n_tok, nh, hd).transpose(0, 1) for t in qkv.split(W, dim=-1))
        a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(hd), dim=-1) @ v
        x = x + a.transpose(0, 1).reshape(n_tok, W) @ sd[b + "attn.proj.weight"].T + sd[b + "attn.proj.bias"]
        h = F.layer_norm(x, (W,), sd[b + "norm2.weight"], sd[b + "norm2.bias"], eps=1e-6)
        h = F.gelu(h @ sd[b + "mlp.fc1.weight"].T + sd[b + "mlp.fc1.bias"], approximate="none")
        x = x + h @ sd[b + "mlp.fc2.weight"].T + sd[b + "mlp.fc2.bias"]
        streams.append(x)
        i += 1
    out = F.layer_norm(x, (W,), sd[prefix + "norm.weight"], sd[prefix + "norm.bias"], eps=1e-6)
    return out, streams


def siglip_hf(sd, p, image_size, n_layers, prefix="vision_und_enc_model.vision_tower."):
    """Independent formulation: transformers' SiglipVisionModel (conv patchify, split q/k/v)."""
    from transformers import SiglipVisionConfig, SiglipVisionModel

    W = p["width"]
    cfg = SiglipVisionConfig(
        hidden_size=W,
        intermediate_size=int(W * p["mlp_ratio"]),
        num_hidden_layers=n_layers,
        num_attention_heads=p["heads"],
        num_channels=3,
        image_size=image_size,
        patch_size=p["patch_size"],
        hidden_act="gelu",  # exact erf GELU (the HF SigLIP default is the tanh approximation)
        layer_norm_eps=1e-6,
        vision_use_head=False,
    )
    cfg._attn_implementation = "eager"
    model = SiglipVisionModel(cfg).float().eval()
    # transformers < 5 nests everything under `vision_model.`; 5.x does not.
    vm = "vision_model." if any(k.startswith("vision_model.") for k in model.state_dict()) else ""
    hf = {
        vm + "embeddings.patch_embedding.weight": sd[prefix + "patch_embed.proj.weight"],
        vm + "embeddings.patch_embedding.bias": sd[prefix + "patch_embed.proj.bias"],
        vm + "embeddings.position_embedding.weight": sd[prefix + "pos_embed"][0],
        vm + "post_layernorm.weight": sd[prefix + "norm.weight"],
        vm + "post_layernorm.bias": sd[prefix + "norm.bias"],
    }
    for i in range(n_layers):
        b, o = f"{prefix}blocks.{i}.", f"{vm}encoder.layers.{i}."
        for n_src, n_dst in (("norm1", "layer_norm1"), ("norm2", "layer_norm2"), ("mlp.fc1", "mlp.fc1"),
                             ("mlp.fc2", "mlp.fc2"), ("attn.proj", "self_attn.out_proj")):
            hf[o + n_dst + ".weight"] = sd[b + n_src + ".weight"]
            hf[o + n_dst + ".bias"] = sd[b + n_src + ".bias"]
        wq, wk, wv = sd[b + "attn.qkv.weight"].split(W, dim=0)
        bq, bk, bv = sd[b + "attn.qkv.bias"].split(W, dim=0)
        for n, w_, b_ in (("q", wq, bq), ("k", wk, bk), ("v", wv, bv)):
            hf[o + f"self_attn.{n}_proj.weight"] = w_
            hf[o + f"self_attn.{n}_proj.bias"] = b_
    missing, unexpected = model.load_state_dict(hf, strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    assert not missing and not unexpected, (missing, unexpected)
    return model


def expand_ids(ids, image_id, start_id, end_id, n):
    out = []
    for t in ids:
        out.extend([start_id] + [image_id] * n + [end_id] if t == image_id else [t])
    return out


def splice(expanded, embed, beg, feats, image_id, start_id):
    """Token embeddings; the begin/placeholder slots take [beg, feats_0, beg, feats_1, ...] in order."""
    x = embed[torch.tensor(expanded)].clone()
    slots = [i for i, t in enumerate(expanded) if t in (image_id, start_id)]
    vecs = torch.cat([torch.cat([beg.reshape(1, -1), f], 0) for f in feats], 0) if feats else x[:0]
    assert len(slots) == vecs.shape[0], (len(slots), vecs.shape)
    if slots:
        x[torch.tensor(slots)] = vecs
    return x


CASES = [
    {
        "name": "one_image",
        "messages": [{"role": "User", "content": "<image_placeholder>\nWhat is in this picture?",
                      "images": ["square_80.png"]}],
    },
    {
        "name": "two_images",
        "messages": [{"role": "User",
                      "content": "<image_placeholder>\n<image_placeholder>\nCompare these two pictures.",
                      "images": ["wide_101x70.png", "tall_33x40.png"]}],
    },
    {
        "name": "wide",
        "messages": [{"role": "User", "content": "<image_placeholder>\nDescribe the image.",
                      "images": ["wide_101x70.png"]}],
    },
    {
        "name": "tall",
        "messages": [{"role": "User", "content": "<image_placeholder>\nWhat color is it?",
                      "images": ["tall_33x40.png"]}],
    },
    {
        "name": "multi_turn",
        "messages": [
            {"role": "User", "content": "<image_placeholder>\nWhat is this?", "images": ["square_80.png"]},
            {"role": "Assistant", "content": "A small test pattern.", "images": []},
            {"role": "User", "content": "<image_placeholder>\nAnd this one?", "images": ["gray_50x64.png"]},
        ],
    },
]


def stem(fn):
    """File key used in output names: the stem, or stem_ext where two test files share a stem."""
    base, ext = os.path.splitext(fn)
    if sum(1 for g in IMAGE_FILES if os.path.splitext(g)[0] == base) > 1:
        return f"{base}_{ext[1:]}"
    return base


def main():
    torch.manual_seed(0)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)

    # ---------------------------------------------------------------- A) images
    make_images()

    # ---------------------------------------------------------------- B) preprocessing
    if os.path.isdir(OUT_DIR):
        shutil.rmtree(OUT_DIR)
    os.makedirs(PRE_DIR)
    with open(os.path.join(TINY_DIR, "preprocessor_config.json")) as f:
        pp = json.load(f)
    with open(os.path.join(TINY_DIR, "processor_config.json")) as f:
        proc = json.load(f)
    with open(os.path.join(TINY_DIR, "config.json")) as f:
        cfg = json.load(f)
    bg = [int(c) for c in pp["background_color"]]
    assert bg == [int(c * 255) for c in pp["image_mean"]], "upstream derives the fill from image_mean"
    min_size = pp["min_size"]
    assert pp["image_size"] == 64

    index = {
        "pillow_version": PIL.__version__,
        "background_color": bg,
        "min_size": min_size,
        "rescale_factor": pp["rescale_factor"],
        "image_mean": pp["image_mean"],
        "image_std": pp["image_std"],
        "do_normalize": pp["do_normalize"],
        "resample": "PIL.Image.BICUBIC",
        "files": {},
    }
    rgb_images, pixels64 = {}, {}
    for fn in IMAGE_FILES:
        rgb, info = load_rgb(os.path.join(IMG_DIR, fn))
        rgb_images[fn] = rgb
        info["targets"] = {}
        for S in TARGET_SIZES:
            arr, (w2, h2), off = preprocess(rgb, S, min_size, bg)
            assert arr.shape == (S, S, 3) and arr.dtype == np.uint8
            assert np.array_equal(arr, upstream_style(rgb, S, min_size, bg)), fn
            mine = pil_bicubic_resize(np.asarray(rgb), w2, h2)
            assert np.array_equal(arr[off[1]:off[1] + h2, off[0]:off[0] + w2], mine), ("resize replica", fn, S)
            assert (arr[:off[1]] == bg).all() and (arr[off[1] + h2:] == bg).all()
            assert (arr[:, :off[0]] == bg).all() and (arr[:, off[0] + w2:] == bg).all()
            # Lossless PNG (RGB8) keeps the committed references small.
            out = f"{stem(fn)}_{S}.png"
            Image.fromarray(arr, "RGB").save(os.path.join(PRE_DIR, out), optimize=True)
            assert np.array_equal(np.asarray(Image.open(os.path.join(PRE_DIR, out)).convert("RGB")), arr)
            info["targets"][str(S)] = {"file": out, "resized": [w2, h2], "offset": list(off)}
        index["files"][fn] = info
        print(f"{fn:20s} {info['format']:5s} mode={info['mode']:5s} size={info['size']} "
              f"exif={info['exif_orientation']} -> {info['size_after_exif']} "
              f"64:{info['targets']['64']['resized']}@{info['targets']['64']['offset']} "
              f"384:{info['targets']['384']['resized']}@{info['targets']['384']['offset']}")

    # ---------------------------------------------------------------- PIL behaviour probes
    behaviours = {}
    with Image.open(os.path.join(IMG_DIR, "rgba_64x48.png")) as im:
        rgba = np.asarray(im.convert("RGBA")).copy()
        rgb = np.asarray(im.convert("RGB")).copy()
    assert np.array_equal(rgb, rgba[..., :3]), "RGBA->RGB should drop alpha without compositing"
    assert rgb[10, 50].tolist() == [255, 0, 255]  # the alpha-0 magenta block is kept as is
    behaviours["RGBA"] = "convert('RGB') drops the alpha channel; colour of alpha-0 pixels is kept (no compositing)"
    with Image.open(os.path.join(IMG_DIR, "gray_50x64.png")) as im:
        l_ = np.asarray(im).copy()
        rgb = np.asarray(im.convert("RGB")).copy()
    assert all(np.array_equal(rgb[..., c], l_) for c in range(3))
    behaviours["L"] = "convert('RGB') replicates the grey value into R=G=B"
    with open(os.path.join(IMG_DIR, "rgb16_40x30.png"), "rb") as f:
        data = f.read()
    raw16 = np.frombuffer(zlib.decompress(_png_idat(data)), dtype=np.uint8).reshape(30, 1 + 40 * 6)[:, 1:]
    raw16 = raw16.reshape(30, 40, 3, 2)
    hi = raw16[..., 0]
    lo = raw16[..., 1]
    pil16 = np.asarray(rgb_images["rgb16_40x30.png"])
    assert np.array_equal(pil16, hi), "PIL is expected to keep the high byte of 16-bit samples"
    v16 = hi.astype(np.int64) * 256 + lo
    rounded = np.rint(v16 / 257.0).astype(np.int64)
    n_diff = int((rounded != hi).sum())
    assert n_diff > 0
    behaviours["RGB16"] = (f"16-bit RGB PNG opens as mode 'RGB' (8-bit): each sample is v >> 8 (high byte, truncation); "
                           f"rounding v/257 would differ in {n_diff}/{hi.size} samples of rgb16_40x30.png")
    g16 = Image.fromarray(np.array([[0, 255, 300, 65535]], dtype=np.uint16))
    buf = io.BytesIO()
    g16.save(buf, format="PNG")
    buf.seek(0)
    with Image.open(buf) as im:
        mode16 = im.mode
        conv = np.asarray(im.convert("RGB"))[0, :, 0].tolist()
    behaviours["L16"] = (f"(not in the fixture set) a 16-bit greyscale PNG opens as mode '{mode16}' and convert('RGB') "
                         f"clamps instead of scaling: [0, 255, 300, 65535] -> {conv}")
    with Image.open(os.path.join(IMG_DIR, "anim.gif")) as im:
        gif_mode = im.mode
        first = np.asarray(im.convert("RGB")).copy()
    assert np.array_equal(first, np.asarray(rgb_images["anim.gif"]))
    behaviours["GIF"] = (f"opens on frame 0 (mode '{gif_mode}', palette); convert('RGB') gives the first frame only "
                         f"(n_frames = 2); the palette is expanded exactly")
    behaviours["EXIF"] = ("Image.open/convert ignore the EXIF Orientation tag (upstream sees exif_rot6.jpg as 60x40); "
                          "these references apply ImageOps.exif_transpose first (orientation 6 -> rotate 90° clockwise "
                          "-> 40x60), as the engine does. For every other file it is a no-op.")
    behaviours["JPEG"] = ("decoded by Pillow's libjpeg(-turbo) (ISLOW IDCT, fancy upsampling for 4:2:0). Other decoders "
                          "may differ by a few levels per pixel; compare JPEG-derived references with a tolerance.")
    index["pil_behaviours"] = behaviours
    for k, v in behaviours.items():
        print(f"  PIL {k}: {v}")

    # ---------------------------------------------------------------- C) model references
    raw = load_file(os.path.join(TINY_DIR, "model.safetensors"))
    assert all(v.dtype == torch.bfloat16 for v in raw.values())
    sd = {k: v.float() for k, v in raw.items()}
    sp = dict(cfg["vision_und_enc_config"]["params"])
    S = sp["image_size"]
    n_tok = (S // sp["patch_size"]) ** 2
    N = proc["num_image_tokens"]
    assert N == n_tok == 16
    H = cfg["language_config"]["hidden_size"]
    n_blocks = sum(1 for k in sd if k.startswith("vision_und_enc_model.vision_tower.blocks.") and k.endswith(".norm1.weight"))
    sel = sp["select_layer"]
    assert n_blocks == min(sp["layers"], sp["layers"] + sel + 1)

    tok, tag_ids = mf.load_tokenizer_with_image_tags(os.path.join(TINY_DIR, "tokenizer.json"))
    IMG_ID, BOI_ID, EOI_ID = tag_ids[mf.IMAGE_TAG], tag_ids[mf.IMAGE_START_TAG], tag_ids[mf.IMAGE_END_TAG]
    assert (IMG_ID, BOI_ID, EOI_ID) == (383, 384, 385)
    BOS_ID = tok.token_to_id(mf.BOS)

    hf_vit = siglip_hf(sd, sp, S, n_blocks)
    block0 = {}
    hf_enc = hf_vit.vision_model.encoder if hasattr(hf_vit, "vision_model") else hf_vit.encoder
    hf_enc.layers[0].register_forward_hook(
        lambda mod, inp, out: block0.__setitem__("x", out[0] if isinstance(out, tuple) else out))

    used = []
    for c in CASES:
        for m in c["messages"]:
            for fn in m["images"]:
                if fn not in used:
                    used.append(fn)

    W_al, b_al = sd["vision_und_enc_aligner.weight"], sd["vision_und_enc_aligner.bias"]
    assert W_al.shape == (H, sp["width"])
    aligned = {}
    for fn in used:
        arr = np.asarray(Image.open(os.path.join(PRE_DIR, f"{stem(fn)}_{S}.png")).convert("RGB"))
        px = normalise(arr, pp)
        np.save(os.path.join(PRE_DIR, f"{stem(fn)}_{S}_pixels.npy"), px)
        pxt = torch.from_numpy(px)
        with torch.no_grad():
            out, streams = siglip_forward(sd, pxt, sp)
            ref = hf_vit(pixel_values=pxt[None]).last_hidden_state[0]
        d_out = (out - ref).abs().max().item()
        d_b0 = (streams[0] - block0["x"].reshape(n_tok, -1)).abs().max().item()
        assert d_out < 1e-4 and d_b0 < 1e-4, (fn, d_out, d_b0)
        al = out @ W_al.T + b_al
        aligned[fn] = al
        np.save(os.path.join(OUT_DIR, f"siglip_{stem(fn)}.npy"), out.numpy().astype(np.float32))
        np.save(os.path.join(OUT_DIR, f"aligned_{stem(fn)}.npy"), al.numpy().astype(np.float32))
        if fn == "square_80.png":
            np.save(os.path.join(OUT_DIR, "siglip_hidden_block0_square_80.npy"),
                    streams[0].numpy().astype(np.float32))
        print(f"siglip {fn:18s} |out|max={out.abs().max().item():.3f} vs HF Siglip: {d_out:.2e} (block0 {d_b0:.2e})")

    # Language model.
    from transformers import LlamaForCausalLM

    lm_sd = {k[len("language_model."):]: v for k, v in sd.items() if k.startswith("language_model.")}
    lm = LlamaForCausalLM(mf.llama_config()).float().eval()
    lm.load_state_dict(lm_sd, strict=True)
    embed = lm_sd["model.embed_tokens.weight"]
    beg = sd["beg_of_und_embed"]
    assert beg.shape == (1, H)

    def logits_of(x):
        with torch.no_grad():
            return lm(inputs_embeds=x[None], use_cache=False).logits[0]

    # Sanity: a text-only prompt through the splice path equals the plain-ids path.
    txt = mf.build_prompt([{"role": "User", "content": "What is in this picture?"}], mf.SYSTEM_PROMPT)
    tids = tok.encode(txt).ids
    assert IMG_ID not in tids
    x_txt = splice(expand_ids(tids, IMG_ID, BOI_ID, EOI_ID, N), embed, beg, [], IMG_ID, BOI_ID)
    with torch.no_grad():
        l_ids = lm(input_ids=torch.tensor([tids]), use_cache=False).logits[0]
    d_txt = (logits_of(x_txt) - l_ids).abs().max().item()
    assert d_txt == 0.0, d_txt
    print(f"text-only splice == plain ids path (max |diff| = {d_txt})")

    cases_out = []
    global_min = float("inf")
    for case in CASES:
        name = case["name"]
        prompt = mf.build_prompt(case["messages"], mf.SYSTEM_PROMPT)
        ids = tok.encode(prompt).ids
        images = [fn for m in case["messages"] for fn in m["images"]]
        assert ids[0] == BOS_ID and ids.count(BOS_ID) == 1
        assert ids.count(IMG_ID) == len(images), (name, ids.count(IMG_ID), len(images))
        assert BOI_ID not in ids and EOI_ID not in ids
        expanded = expand_ids(ids, IMG_ID, BOI_ID, EOI_ID, N)
        assert len(expanded) == len(ids) + len(images) * (N + 1)
        x = splice(expanded, embed, beg, [aligned[fn] for fn in images], IMG_ID, BOI_ID)
        assert len(expanded) + N_GREEDY <= cfg["language_config"]["max_position_embeddings"]
        # Independent check of the splice: per image, slot j of the k-th image block.
        boi_pos = [i for i, t in enumerate(expanded) if t == BOI_ID]
        for k, fn in enumerate(images):
            p0 = boi_pos[k]
            assert expanded[p0 + N + 1] == EOI_ID
            assert torch.equal(x[p0], beg[0]) and torch.equal(x[p0 + 1:p0 + 1 + N], aligned[fn])
            assert torch.equal(x[p0 + N + 1], embed[EOI_ID])

        first_logits = logits_of(x)[-1].clone()
        seq = x
        step_logits = first_logits
        greedy, gaps = [], []
        for _ in range(N_GREEDY):
            top2 = torch.topk(step_logits, 2).values
            gaps.append((top2[0] - top2[1]).item())
            nxt = int(torch.argmax(step_logits))
            greedy.append(nxt)
            seq = torch.cat([seq, embed[nxt][None]], 0)
            step_logits = logits_of(seq)[-1]
        min_gap = min(gaps)
        global_min = min(global_min, min_gap)
        # A generated 383/384 would be ambiguous for an engine that scans ids for image slots.
        assert IMG_ID not in greedy and BOI_ID not in greedy, (name, greedy)
        print(f"[{name}] T={len(ids)} -> {len(expanded)} images={images} min_gap={min_gap:.4f} greedy={greedy}")

        np.save(os.path.join(OUT_DIR, f"logits_{name}.npy"), first_logits.numpy().astype(np.float32))
        np.save(os.path.join(OUT_DIR, f"embeds_{name}.npy"), x.numpy().astype(np.float32))
        cases_out.append({
            "name": name,
            "system": mf.SYSTEM_PROMPT,
            "messages": case["messages"],
            "prompt_text": prompt,
            "ids": ids,
            "expanded_ids": expanded,
            "greedy_ids": greedy,
            "greedy_min_gap": round(min_gap, 6),
        })

    with open(os.path.join(OUT_DIR, "cases.json"), "w", encoding="utf-8") as f:
        json.dump({
            "checkpoint": "tests/fixtures/tiny",
            "dtype": "float32 (bf16 checkpoint upcast)",
            "n_image_tokens": N,
            "ids": {"image_placeholder": IMG_ID, "begin_of_image": BOI_ID, "end_of_image": EOI_ID},
            "n_greedy": N_GREEDY,
            "cases": cases_out,
        }, f, indent=1, ensure_ascii=False)
        f.write("\n")
    with open(os.path.join(PRE_DIR, "index.json"), "w", encoding="utf-8") as f:
        json.dump(index, f, indent=1, ensure_ascii=False)
        f.write("\n")

    print(f"min top1-top2 logit gap over all greedy steps: {global_min:.4f}")
    if global_min < MIN_GAP:
        sys.exit(f"greedy margin {global_min} < {MIN_GAP}; change the question wording")
    total = {}
    for d in (IMG_DIR, OUT_DIR):
        for root, _, files in sorted(os.walk(d)):
            for fn in sorted(files):
                p = os.path.join(root, fn)
                total[d] = total.get(d, 0) + os.path.getsize(p)
                print(f"  {os.path.relpath(p, REPO_ROOT):60s} {os.path.getsize(p):>9d}  {mf.sha(p)}")
    for d, n in total.items():
        print(f"  total {os.path.relpath(d, REPO_ROOT)}: {n} bytes")


def _png_idat(data):
    """Concatenated IDAT payload of a PNG file."""
    pos, out = 8, b""
    while pos < len(data):
        n = struct.unpack(">I", data[pos:pos + 4])[0]
        kind = data[pos + 4:pos + 8]
        if kind == b"IDAT":
            out += data[pos + 8:pos + 8 + n]
        pos += 12 + n
    return out


if __name__ == "__main__":
    main()

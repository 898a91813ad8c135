//! The understanding encoder: SigLIP ViT (timm layout, spec §1.4) and the understanding aligner.
//!
//! pixels [3, S, S] → 16×16 patches (a strided conv, done as im2col + matrix product) → + learned
//! position embedding → blocks `x += attn(LN1(x)); x += mlp(LN2(x))` → final LayerNorm →
//! `vision_und_enc_aligner` → [tokens, LLM hidden]. No class token; `attn_pool.*` is never loaded.

use std::sync::Arc;

use anyhow::Result;

use super::Loader;
use crate::config::SiglipConfig;
use crate::gpu::kernels::{self, Act, AttnShape, KvFormat, Out, View};
use crate::gpu::{Gpu, Recorder, Tensor, Weight};

const LN_EPS: f32 = 1e-6;

pub struct Block {
    pub norm1: (Tensor, Tensor),
    pub qkv: Arc<Weight>,
    pub qkv_b: Tensor,
    pub proj: Arc<Weight>,
    pub proj_b: Tensor,
    pub norm2: (Tensor, Tensor),
    pub fc1: Arc<Weight>,
    pub fc1_b: Tensor,
    pub fc2: Arc<Weight>,
    pub fc2_b: Tensor,
}

pub struct Siglip {
    pub cfg: SiglipConfig,
    /// Patch conv as a matrix [width, 3·patch²] (columns in (channel, row, col) order).
    pub patch: Arc<Weight>,
    pub patch_b: Tensor,
    pub pos: Tensor,
    pub blocks: Vec<Block>,
    pub norm: (Tensor, Tensor),
    /// `vision_und_enc_aligner`: width → LLM hidden.
    pub aligner: Arc<Weight>,
    pub aligner_b: Tensor,
    /// `beg_of_und_embed`: the vector placed in each `<begin_of_image>` slot.
    pub begin: Tensor,
    pub hidden: usize,
}

/// Activation buffers for one image.
pub struct SiglipScratch {
    x: wgpu::Buffer,    // [N, W] residual stream
    h: wgpu::Buffer,    // [N, W] normed
    qkv: wgpu::Buffer,  // [N, 3W]
    attn: wgpu::Buffer, // [N, W]
    mlp: wgpu::Buffer,  // [N, mlp_hidden]
}

fn to(buf: &wgpu::Buffer, stride: usize, add: bool) -> Out<'_> {
    Out { buf, off: 0, stride, add }
}

impl Siglip {
    pub async fn load(l: &Loader<'_>, cfg: &SiglipConfig, hidden: usize) -> Result<Self> {
        let gpu = l.gpu;
        let (w, m, p) = (cfg.width, cfg.mlp_hidden, cfg.patch);
        let ln =
            async |name: &str| -> Result<(Tensor, Tensor)> { Ok((l.vector(&format!("{name}.weight"), w).await?, l.vector(&format!("{name}.bias"), w).await?)) };
        let v = "vision_und_enc_model.vision_tower";
        let n = cfg.tokens();
        let pos_blob = l.src.blob(&format!("{v}.pos_embed"), &[1, n, w], l.preset).await?;
        let mut blocks = Vec::with_capacity(cfg.layers);
        for i in 0..cfg.layers {
            let b = format!("{v}.blocks.{i}");
            blocks.push(Block {
                norm1: ln(&format!("{b}.norm1")).await?,
                qkv: l.mat(&format!("{b}.attn.qkv.weight"), &[3 * w, w]).await?,
                qkv_b: l.vector(&format!("{b}.attn.qkv.bias"), 3 * w).await?,
                proj: l.mat(&format!("{b}.attn.proj.weight"), &[w, w]).await?,
                proj_b: l.vector(&format!("{b}.attn.proj.bias"), w).await?,
                norm2: ln(&format!("{b}.norm2")).await?,
                fc1: l.mat(&format!("{b}.mlp.fc1.weight"), &[m, w]).await?,
                fc1_b: l.vector(&format!("{b}.mlp.fc1.bias"), m).await?,
                fc2: l.mat(&format!("{b}.mlp.fc2.weight"), &[w, m]).await?,
                fc2_b: l.vector(&format!("{b}.mlp.fc2.bias"), w).await?,
            });
        }
        let begin_blob = l.src.blob("beg_of_und_embed", &[1, hidden], l.preset).await?;
        Ok(Siglip {
            cfg: cfg.clone(),
            patch: l.mat(&format!("{v}.patch_embed.proj.weight"), &[w, 3, p, p]).await?,
            patch_b: l.vector(&format!("{v}.patch_embed.proj.bias"), w).await?,
            pos: Tensor::from_f32(gpu, "pos_embed", &[n, w], &pos_blob.dequantize()),
            blocks,
            norm: ln(&format!("{v}.norm")).await?,
            aligner: l.mat("vision_und_enc_aligner.weight", &[hidden, w]).await?,
            aligner_b: l.vector("vision_und_enc_aligner.bias", hidden).await?,
            begin: Tensor::from_f32(gpu, "beg_of_und_embed", &[hidden], &begin_blob.dequantize()),
            hidden,
        })
    }

    pub fn weight_bytes(&self) -> u64 {
        let b: u64 = self.blocks.iter().map(|b| b.qkv.bytes() + b.proj.bytes() + b.fc1.bytes() + b.fc2.bytes()).sum();
        b + self.patch.bytes() + self.aligner.bytes() + self.pos.len() as u64 * 4
    }

    pub fn new_scratch(&self, gpu: &Gpu) -> SiglipScratch {
        let (n, w) = (self.cfg.tokens() as u64, self.cfg.width as u64);
        SiglipScratch {
            x: gpu.storage_buffer("siglip-x", n * w * 4),
            h: gpu.storage_buffer("siglip-h", n * w * 4),
            qkv: gpu.storage_buffer("siglip-qkv", n * 3 * w * 4),
            attn: gpu.storage_buffer("siglip-attn", n * w * 4),
            mlp: gpu.storage_buffer("siglip-mlp", n * self.cfg.mlp_hidden as u64 * 4),
        }
    }

    /// Rearranges CHW pixels [3, S, S] into patch rows [N, 3·p²] in the conv weight's column order.
    pub fn patchify(&self, pixels: &[f32]) -> Vec<f32> {
        let (s, p) = (self.cfg.image_size, self.cfg.patch);
        let g = s / p;
        assert_eq!(pixels.len(), 3 * s * s);
        let mut out = Vec::with_capacity(g * g * 3 * p * p);
        for (r, c) in (0..g).flat_map(|r| (0..g).map(move |c| (r, c))) {
            for ch in 0..3 {
                for y in 0..p {
                    let row = ch * s * s + (r * p + y) * s + c * p;
                    out.extend_from_slice(&pixels[row..row + p]);
                }
            }
        }
        out
    }

    /// Encodes one preprocessed image (`pixels` [3, S, S]) into `out` rows
    /// `out_off .. out_off + N` of width `stride` (the LLM hidden size): the aligned features.
    /// With `tower_out`, the tower output before the aligner (final LayerNorm) is also copied there.
    pub fn forward(&self, rec: &mut Recorder, s: &SiglipScratch, pixels: &[f32], out: &wgpu::Buffer, out_off: usize, tower_out: Option<&wgpu::Buffer>) {
        let c = &self.cfg;
        let (n, w, m) = (c.tokens(), c.width, c.mlp_hidden);
        // Its own buffer per image, so that several images can be encoded in one submit.
        let patches = rec.gpu.storage_buffer_init("siglip-patches", bytemuck::cast_slice(&self.patchify(pixels)));
        kernels::linear(rec, &self.patch, Some(&self.patch_b.buf), &patches, 0, n, to(&s.x, w, false));
        kernels::add(rec, &self.pos.buf, 0, &s.x, 0, n * w);
        let attn = AttnShape {
            t: n,
            heads: c.heads,
            head_dim: w / c.heads,
            causal_pos0: None,
            n_keys: n,
            q_stride: 3 * w,
            kv_stride: 3 * w,
            o_stride: w,
            kv: KvFormat::F32,
        };
        for b in &self.blocks {
            kernels::layernorm(rec, &s.x, 0, n, w, &b.norm1.0.buf, &b.norm1.1.buf, LN_EPS, &s.h, 0);
            kernels::linear(rec, &b.qkv, Some(&b.qkv_b.buf), &s.h, 0, n, to(&s.qkv, 3 * w, false));
            // Fused qkv rows: Q in columns 0..W, K in W..2W, V in 2W..3W, heads contiguous inside each.
            kernels::attention(rec, attn, View::at(&s.qkv, 0), View::at(&s.qkv, w), View::at(&s.qkv, 2 * w), View::at(&s.attn, 0));
            kernels::linear(rec, &b.proj, Some(&b.proj_b.buf), &s.attn, 0, n, to(&s.x, w, true));
            kernels::layernorm(rec, &s.x, 0, n, w, &b.norm2.0.buf, &b.norm2.1.buf, LN_EPS, &s.h, 0);
            kernels::linear_act(rec, &b.fc1, Some(&b.fc1_b.buf), &s.h, 0, n, to(&s.mlp, m, false), Act::Gelu);
            kernels::linear(rec, &b.fc2, Some(&b.fc2_b.buf), &s.mlp, 0, n, to(&s.x, w, true));
        }
        kernels::layernorm(rec, &s.x, 0, n, w, &self.norm.0.buf, &self.norm.1.buf, LN_EPS, &s.h, 0);
        if let Some(t) = tower_out {
            rec.copy(&s.h, 0, t, 0, (n * w * 4) as u64);
        }
        let hd = self.hidden;
        kernels::linear(rec, &self.aligner, Some(&self.aligner_b.buf), &s.h, 0, n, Out { buf: out, off: out_off * hd, stride: hd, add: false });
    }
}

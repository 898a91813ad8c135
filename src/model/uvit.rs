//! The generation encoder and decoder (ShallowUViT, spec §3.3–3.5) and the aligners that connect
//! them to the language model.
//!
//! Feature maps are kept channels-last, as token rows [B, G·G, C] (G = 24 for the real model),
//! so the ConvNeXt's channel-wise linear layers are plain matrix products over rows, the RMSNorm
//! over channels is a row norm, and the flattened "row-major tokens" the LLM sees need no
//! transpose. The latent itself stays CHW [4, S, S]; patchify and PixelShuffle are folded into
//! the flow kernels (see `shaders/flow.wgsl`).

use std::sync::Arc;

use anyhow::Result;

use super::Loader;
use crate::config::GenConfig;
use crate::gpu::kernels::{self, Act, Out};
use crate::gpu::{Gpu, Recorder, Tensor, Weight};

const EPS: f32 = 1e-6;

/// ConvNeXt block with FiLM (spec §3.4).
pub struct ConvNeXt {
    pub channels: usize,
    dw_w: Tensor, // [C, 49]
    dw_b: Tensor,
    norm: Tensor,
    lin1: Arc<Weight>, // [4C, C]
    lin1_b: Tensor,
    grn_g: Tensor,
    grn_b: Tensor,
    lin2: Arc<Weight>, // [C, 4C]
    lin2_b: Tensor,
    film: Arc<Weight>, // [2C, hidden]
    film_b: Tensor,
}

impl ConvNeXt {
    async fn load(l: &Loader<'_>, p: &str, c: usize, hidden: usize) -> Result<Self> {
        Ok(ConvNeXt {
            channels: c,
            dw_w: l.dense(&format!("{p}.depthwise.weight"), &[c, 1, 7, 7]).await?,
            dw_b: l.dense(&format!("{p}.depthwise.bias"), &[c]).await?,
            norm: l.dense(&format!("{p}.norm.weight"), &[c]).await?,
            lin1: l.mat(&format!("{p}.channelwise_linear_1.weight"), &[4 * c, c]).await?,
            lin1_b: l.dense(&format!("{p}.channelwise_linear_1.bias"), &[4 * c]).await?,
            grn_g: l.dense(&format!("{p}.channelwise_norm.weight"), &[1, 1, 1, 4 * c]).await?,
            grn_b: l.dense(&format!("{p}.channelwise_norm.bias"), &[1, 1, 1, 4 * c]).await?,
            lin2: l.mat(&format!("{p}.channelwise_linear_2.weight"), &[c, 4 * c]).await?,
            lin2_b: l.dense(&format!("{p}.channelwise_linear_2.bias"), &[c]).await?,
            film: l.mat(&format!("{p}.cond_embeds_mapper.weight"), &[2 * c, hidden]).await?,
            film_b: l.dense(&format!("{p}.cond_embeds_mapper.bias"), &[2 * c]).await?,
        })
    }

    fn bytes(&self) -> u64 {
        self.lin1.bytes() + self.lin2.bytes() + self.film.bytes() + self.dw_w.len() as u64 * 4
    }

    /// x ← FiLM(x + Linear(GRN(GELU(Linear(RMSNorm(DWConv(x))))))), in place on `b` maps of
    /// g×g rows; `silu_t` is SiLU(t_emb) [hidden].
    pub fn forward(&self, rec: &mut Recorder, s: &UvitScratch, x: &wgpu::Buffer, b: usize, g: usize, silu_t: &wgpu::Buffer) {
        let c = self.channels;
        let rows = b * g * g;
        kernels::depthwise(rec, x, b, g, g, c, 7, &self.dw_w.buf, &self.dw_b.buf, &s.a);
        kernels::rmsnorm(rec, &s.a, 0, rows, c, &self.norm.buf, EPS, &s.b, 0);
        kernels::linear_act(rec, &self.lin1, Some(&self.lin1_b.buf), &s.b, 0, rows, Out { buf: &s.wide, off: 0, stride: 4 * c, add: false }, Act::Gelu);
        kernels::grn(rec, &s.wide, b, g * g, 4 * c, &self.grn_g.buf, &self.grn_b.buf, &s.stats);
        // The residual add is the accumulate of the second product.
        kernels::linear(rec, &self.lin2, Some(&self.lin2_b.buf), &s.wide, 0, rows, Out { buf: x, off: 0, stride: c, add: true });
        kernels::linear(rec, &self.film, Some(&self.film_b.buf), silu_t, 0, 1, Out { buf: &s.film, off: 0, stride: 2 * c, add: false });
        kernels::film(rec, &s.film, 0, x, 0, rows, c);
    }
}

/// Work buffers shared by encoder and decoder (sized for the decoder's batch of two).
pub struct UvitScratch {
    a: wgpu::Buffer,     // [B·G², C] conv output
    b: wgpu::Buffer,     // [B·G², max(C, hidden)] norm output
    wide: wgpu::Buffer,  // [B·G², 4C]
    stats: wgpu::Buffer, // GRN statistics
    film: wgpu::Buffer,  // [2C]
}

/// ShallowUViT encoder + time embedding + `vision_gen_enc_aligner`.
pub struct GenEncoder {
    pub cfg: GenConfig,
    pub hidden: usize,
    t1: Arc<Weight>,
    t1_b: Tensor,
    t2: Arc<Weight>,
    t2_b: Tensor,
    in_conv: Arc<Weight>, // [C, 4·k·k]
    in_conv_b: Tensor,
    blocks: Vec<ConvNeXt>,
    aligner: Arc<Weight>, // [hidden, C]
    aligner_b: Tensor,
}

/// `vision_gen_dec_aligner_norm` + `vision_gen_dec_aligner` + ShallowUViT decoder.
pub struct GenDecoder {
    pub cfg: GenConfig,
    pub hidden: usize,
    align_norm: Tensor,
    aligner: Arc<Weight>, // [dec_in, hidden]
    aligner_b: Tensor,
    input_norm: Tensor,
    blocks: Vec<ConvNeXt>,
    out_norm: Tensor,
    unpatch: Arc<Weight>, // [out·4, D]
    unpatch_b: Tensor,
}

/// The sinusoidal time projection (diffusers `Timesteps(dim, flip_sin_to_cos, shift 0)`) of
/// τ = 1000·t: [cos(τ·f₀ … τ·f_{h−1}), sin(…)], f_i = exp(−ln(10⁴)·i / h), in f32 like torch.
pub fn time_projection(tau: f32, dim: usize) -> Vec<f32> {
    let half = dim / 2;
    let arg: Vec<f32> = (0..half).map(|i| tau * ((-(10000f64.ln()) as f32 * i as f32) / half as f32).exp()).collect();
    arg.iter().map(|a| a.cos()).chain(arg.iter().map(|a| a.sin())).collect()
}

impl GenEncoder {
    pub async fn load(l: &Loader<'_>, cfg: &GenConfig, hidden: usize) -> Result<Self> {
        let (c, k, cz) = (cfg.enc_channels, cfg.kernel, cfg.in_channels);
        let e = "vision_gen_enc_model";
        let mut blocks = Vec::new();
        for j in 0..cfg.blocks {
            blocks.push(ConvNeXt::load(l, &format!("{e}.mid_block.res_blocks.{j}"), c, hidden).await?);
        }
        Ok(GenEncoder {
            cfg: cfg.clone(),
            hidden,
            t1: l.mat(&format!("{e}.time_embed.linear_1.weight"), &[hidden, c]).await?,
            t1_b: l.dense(&format!("{e}.time_embed.linear_1.bias"), &[hidden]).await?,
            t2: l.mat(&format!("{e}.time_embed.linear_2.weight"), &[hidden, hidden]).await?,
            t2_b: l.dense(&format!("{e}.time_embed.linear_2.bias"), &[hidden]).await?,
            in_conv: l.mat(&format!("{e}.in_conv.weight"), &[c, cz, k, k]).await?,
            in_conv_b: l.dense(&format!("{e}.in_conv.bias"), &[c]).await?,
            blocks,
            aligner: l.mat("vision_gen_enc_aligner.weight", &[hidden, c]).await?,
            aligner_b: l.dense("vision_gen_enc_aligner.bias", &[hidden]).await?,
        })
    }

    pub fn weight_bytes(&self) -> u64 {
        self.t1.bytes() + self.t2.bytes() + self.in_conv.bytes() + self.aligner.bytes() + self.blocks.iter().map(|b| b.bytes()).sum::<u64>()
    }

    /// t_emb [hidden] = linear_2(SiLU(linear_1(proj))) from the projection in `proj` [C];
    /// also writes SiLU(t_emb) (the FiLM input) to `silu_t`.
    pub fn time_embed(&self, rec: &mut Recorder, proj: &wgpu::Buffer, mid: &wgpu::Buffer, t_emb: &wgpu::Buffer, silu_t: &wgpu::Buffer) {
        let h = self.hidden;
        kernels::linear_act(rec, &self.t1, Some(&self.t1_b.buf), proj, 0, 1, Out { buf: mid, off: 0, stride: h, add: false }, Act::Silu);
        kernels::linear(rec, &self.t2, Some(&self.t2_b.buf), mid, 0, 1, Out { buf: t_emb, off: 0, stride: h, add: false });
        kernels::silu(rec, t_emb, 0, silu_t, 0, h);
    }

    /// Latent patch rows [G², 4·k²] → feature map `x` [G², C] (also the decoder's skip).
    pub fn forward(&self, rec: &mut Recorder, s: &UvitScratch, patches: &wgpu::Buffer, silu_t: &wgpu::Buffer, x: &wgpu::Buffer) {
        let (c, g) = (self.cfg.enc_channels, self.grid());
        kernels::linear(rec, &self.in_conv, Some(&self.in_conv_b.buf), patches, 0, g * g, Out { buf: x, off: 0, stride: c, add: false });
        for b in &self.blocks {
            b.forward(rec, s, x, 1, g, silu_t);
        }
    }

    /// Feature map [G², C] → LLM input rows [G², hidden] at `out[out_off..]`.
    pub fn align(&self, rec: &mut Recorder, x: &wgpu::Buffer, out: &wgpu::Buffer, out_off: usize) {
        let g = self.grid();
        kernels::linear(rec, &self.aligner, Some(&self.aligner_b.buf), x, 0, g * g, Out { buf: out, off: out_off, stride: self.hidden, add: false });
    }

    /// Token grid side G.
    pub fn grid(&self) -> usize {
        self.cfg.latent_size() / self.cfg.kernel
    }

    pub fn new_scratch(&self, gpu: &Gpu, dec: &GenDecoder) -> UvitScratch {
        let rows = 2 * self.grid().pow(2) as u64;
        let c = self.cfg.enc_channels.max(dec.cfg.dec_channels) as u64;
        UvitScratch {
            a: gpu.storage_buffer("uvit-a", rows * c * 4),
            b: gpu.storage_buffer("uvit-b", rows * c.max(self.hidden as u64) * 4),
            wide: gpu.storage_buffer("uvit-wide", rows * 4 * c * 4),
            stats: gpu.storage_buffer("uvit-stats", kernels::grn_stats_bytes(2, 4 * c as usize)),
            film: gpu.storage_buffer("uvit-film", 2 * c * 4),
        }
    }
}

impl GenDecoder {
    pub async fn load(l: &Loader<'_>, cfg: &GenConfig, hidden: usize) -> Result<Self> {
        let (d, din, out) = (cfg.dec_channels, cfg.dec_in, cfg.out_channels);
        let p = "vision_gen_dec_model";
        let mut blocks = Vec::new();
        for j in 0..cfg.blocks {
            blocks.push(ConvNeXt::load(l, &format!("{p}.mid_block.res_blocks.{j}"), d, hidden).await?);
        }
        Ok(GenDecoder {
            cfg: cfg.clone(),
            hidden,
            align_norm: l.dense("vision_gen_dec_aligner_norm.weight", &[hidden]).await?,
            aligner: l.mat("vision_gen_dec_aligner.weight", &[din, hidden]).await?,
            aligner_b: l.dense("vision_gen_dec_aligner.bias", &[din]).await?,
            input_norm: l.dense(&format!("{p}.input_norm.weight"), &[din]).await?,
            blocks,
            out_norm: l.dense(&format!("{p}.out_convs.0.norm.weight"), &[d]).await?,
            unpatch: l.mat(&format!("{p}.out_convs.0.unpatch_conv.weight"), &[out * 4, d, 1, 1]).await?,
            unpatch_b: l.dense(&format!("{p}.out_convs.0.unpatch_conv.bias"), &[out * 4]).await?,
        })
    }

    pub fn weight_bytes(&self) -> u64 {
        self.aligner.bytes() + self.unpatch.bytes() + self.blocks.iter().map(|b| b.bytes()).sum::<u64>()
    }

    /// For `b` rows: LLM outputs (after the final LLM norm) `llm[b][G², hidden]` at element offsets
    /// `llm_offs`, the shared skip map [G², C_enc] and SiLU(t_emb) → velocity token rows
    /// `v` [b, G², out·4] (PixelShuffle is left to the flow kernel). `x` is [b·G², D] work space.
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &self,
        rec: &mut Recorder,
        s: &UvitScratch,
        llm: &wgpu::Buffer,
        llm_offs: &[usize],
        skip: &wgpu::Buffer,
        silu_t: &wgpu::Buffer,
        x: &wgpu::Buffer,
        v: &wgpu::Buffer,
    ) {
        let (h, din, d, g) = (self.hidden, self.cfg.dec_in, self.cfg.dec_channels, self.cfg.latent_size() / self.cfg.kernel);
        let (n, b) = (g * g, llm_offs.len());
        let skip_c = d - din;
        for (i, &off) in llm_offs.iter().enumerate() {
            // dec aligner norm → dec aligner → input_norm into the first `din` columns; skip after.
            kernels::rmsnorm(rec, llm, off, n, h, &self.align_norm.buf, EPS, &s.b, 0);
            kernels::linear(rec, &self.aligner, Some(&self.aligner_b.buf), &s.b, 0, n, Out { buf: &s.a, off: 0, stride: din, add: false });
            kernels::rmsnorm_strided(rec, &s.a, 0, n, din, &self.input_norm.buf, EPS, x, i * n * d, d);
            kernels::copy_rows(rec, skip, 0, skip_c, x, i * n * d + din, d, n, skip_c);
        }
        for blk in &self.blocks {
            blk.forward(rec, s, x, b, g, silu_t);
        }
        let out = self.cfg.out_channels * 4;
        kernels::rmsnorm(rec, x, 0, b * n, d, &self.out_norm.buf, EPS, &s.a, 0);
        kernels::linear(rec, &self.unpatch, Some(&self.unpatch_b.buf), &s.a, 0, b * n, Out { buf: v, off: 0, stride: out, add: false });
    }
}

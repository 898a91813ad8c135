//! The SDXL-VAE decoder (diffusers `AutoencoderKL.decode`, spec §3.7): latent / scaling_factor →
//! post_quant_conv → conv_in → mid (ResNet, attention, ResNet) → up blocks (ResNets, nearest ×2 +
//! conv) → GroupNorm + SiLU → conv_out → clamp → 8-bit RGB.
//!
//! Everything is computed in f32 (the SDXL VAE overflows in f16); weights may be stored f16.
//! Maps are channels-last [H, W, C]. GroupNorm+SiLU is its own elementwise pass, written into a
//! spare map or over one no longer needed raw (no extra memory), so each convolution loads plain
//! values: applied inside the convolution's loads it was redone for every tap and output tile and
//! made those convolutions ~9× slower. The ×2 upsampling is read inside the upsampler's
//! convolution, so the upsampled map is never stored. Large maps (256 × 384² f32 = 151 MB) are
//! convolved in bands of rows, each within the binding limit.

use std::sync::Arc;

use anyhow::{bail, Result};

use crate::config::VaeConfig;
use crate::gpu::kernels::{self, AttnShape, KvFormat, Map, Out, View};
use crate::gpu::{Gpu, Recorder, Tensor, Weight};
use crate::weights::preset::quant_for;
use crate::weights::quant::{Quant, QuantBlob};

const EPS: f32 = 1e-6;

/// Where VAE tensors come from (a diffusers folder natively, a weight pack anywhere).
#[allow(async_fn_in_trait)]
pub trait VaeTensors {
    /// A tensor by diffusers name as f32 with its shape; `Ok(None)` when absent.
    async fn tensor(&self, name: &str) -> Result<Option<(Vec<usize>, Vec<f32>)>>;
}

struct Loader<'a, T: VaeTensors> {
    gpu: &'a Gpu,
    get: &'a T,
    preset: Quant,
}

impl<T: VaeTensors> Loader<'_, T> {
    async fn raw(&self, names: &[&str], shapes: &[&[usize]]) -> Result<(String, Vec<usize>, Vec<f32>)> {
        for n in names {
            if let Some((shape, v)) = self.get.tensor(n).await? {
                if !shapes.iter().any(|s| *s == shape.as_slice()) {
                    bail!("VAE tensor '{n}' has shape {shape:?}, expected {:?}", shapes[0]);
                }
                return Ok((n.to_string(), shape, v));
            }
        }
        bail!("the VAE has no tensor '{}'", names[0])
    }

    async fn vector(&self, name: &str, n: usize) -> Result<Tensor> {
        let (_, _, v) = self.raw(&[name], &[&[n]]).await?;
        Ok(Tensor::from_f32(self.gpu, name, &[n], &v))
    }

    /// A conv weight [Cout, Cin, k, k] as a matrix [Cout, k·k·Cin] (taps major), with its bias.
    async fn conv(&self, prefix: &str, cin: usize, cout: usize, k: usize) -> Result<(Arc<Weight>, Tensor)> {
        self.conv_aliased(&[prefix], cin, cout, k).await
    }

    async fn conv_aliased(&self, prefixes: &[&str], cin: usize, cout: usize, k: usize) -> Result<(Arc<Weight>, Tensor)> {
        let names: Vec<String> = prefixes.iter().map(|p| format!("{p}.weight")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        // 1×1 convolutions and linear layers are interchangeable (legacy attention weights).
        let (name, _, v) = if k == 1 { self.raw(&refs, &[&[cout, cin, 1, 1], &[cout, cin]]).await? } else { self.raw(&refs, &[&[cout, cin, k, k]]).await? };
        let mut m = vec![0f32; v.len()];
        for o in 0..cout {
            for c in 0..cin {
                for t in 0..k * k {
                    m[(o * k * k + t) * cin + c] = v[(o * cin + c) * k * k + t];
                }
            }
        }
        let shape = [cout, k * k * cin];
        let q = quant_for(self.preset, &format!("vae.{name}"), &shape);
        let blob = QuantBlob::quantize(q, cout, k * k * cin, &m)?;
        let bias_name = name.trim_end_matches(".weight").to_string() + ".bias";
        Ok((Weight::upload(self.gpu, &name, &blob)?, self.vector(&bias_name, cout).await?))
    }

    async fn norm(&self, prefix: &str, c: usize) -> Result<(Tensor, Tensor)> {
        Ok((self.vector(&format!("{prefix}.weight"), c).await?, self.vector(&format!("{prefix}.bias"), c).await?))
    }
}

struct ResNet {
    cin: usize,
    cout: usize,
    norm1: (Tensor, Tensor),
    conv1: (Arc<Weight>, Tensor),
    norm2: (Tensor, Tensor),
    conv2: (Arc<Weight>, Tensor),
    shortcut: Option<(Arc<Weight>, Tensor)>,
}

impl ResNet {
    async fn load<T: VaeTensors>(l: &Loader<'_, T>, p: &str, cin: usize, cout: usize) -> Result<Self> {
        Ok(ResNet {
            cin,
            cout,
            norm1: l.norm(&format!("{p}.norm1"), cin).await?,
            conv1: l.conv(&format!("{p}.conv1"), cin, cout, 3).await?,
            norm2: l.norm(&format!("{p}.norm2"), cout).await?,
            conv2: l.conv(&format!("{p}.conv2"), cout, cout, 3).await?,
            shortcut: if cin != cout { Some(l.conv(&format!("{p}.conv_shortcut"), cin, cout, 1).await?) } else { None },
        })
    }
}

struct MidAttention {
    c: usize,
    norm: (Tensor, Tensor),
    q: (Arc<Weight>, Tensor),
    k: (Arc<Weight>, Tensor),
    v: (Arc<Weight>, Tensor),
    out: (Arc<Weight>, Tensor),
}

struct UpBlock {
    resnets: Vec<ResNet>,
    upsample: Option<(Arc<Weight>, Tensor)>,
}

pub struct VaeDecoder {
    pub cfg: VaeConfig,
    post_quant: Option<(Arc<Weight>, Tensor)>,
    conv_in: (Arc<Weight>, Tensor),
    mid1: ResNet,
    attn: Option<MidAttention>,
    mid2: ResNet,
    up: Vec<UpBlock>,
    norm_out: (Tensor, Tensor),
    conv_out: (Arc<Weight>, Tensor),
}

/// One convolution of a decode, as [`VaeDecoder::decode`] calls it (for the benchmark).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConvCall {
    /// Output map size (after the ×2 upsampling when `upsample`).
    pub h: usize,
    pub w: usize,
    pub cin: usize,
    pub cout: usize,
    pub ks: usize,
    pub upsample: bool,
    /// Accumulates onto the residual.
    pub add: bool,
    /// Reads a map that a GroupNorm + SiLU pass wrote just before.
    pub groupnorm: bool,
}

impl ConvCall {
    pub fn flops(&self) -> f64 {
        2.0 * (self.h * self.w * self.cout * self.ks * self.ks * self.cin) as f64
    }
}

/// Work buffers of one decode.
struct Bufs {
    maps: [wgpu::Buffer; 3],
    partials: wgpu::Buffer,
    stats: wgpu::Buffer,
}

impl VaeDecoder {
    /// Loads the decoder half of a diffusers `AutoencoderKL` (legacy attention names accepted).
    pub async fn load<T: VaeTensors>(gpu: &Gpu, get: &T, cfg: &VaeConfig, preset: Quant) -> Result<Self> {
        let l = Loader { gpu, get, preset };
        let rev: Vec<usize> = cfg.block_out_channels.iter().rev().copied().collect();
        let (zc, c0) = (cfg.latent_channels, rev[0]);
        let d = "decoder";
        let post_quant = if get.tensor("post_quant_conv.weight").await?.is_some() { Some(l.conv("post_quant_conv", zc, zc, 1).await?) } else { None };
        let attn = if cfg.mid_attention {
            let a = format!("{d}.mid_block.attentions.0");
            let lin = async |new: &str, old: &str| l.conv_aliased(&[&format!("{a}.{new}"), &format!("{a}.{old}")], c0, c0, 1).await;
            Some(MidAttention {
                c: c0,
                norm: l.norm(&format!("{a}.group_norm"), c0).await?,
                q: lin("to_q", "query").await?,
                k: lin("to_k", "key").await?,
                v: lin("to_v", "value").await?,
                out: lin("to_out.0", "proj_attn").await?,
            })
        } else {
            None
        };
        let mut up = Vec::new();
        let mut prev = c0;
        for (i, &c) in rev.iter().enumerate() {
            let mut resnets = Vec::new();
            for j in 0..=cfg.layers_per_block {
                resnets.push(ResNet::load(&l, &format!("{d}.up_blocks.{i}.resnets.{j}"), if j == 0 { prev } else { c }, c).await?);
            }
            let upsample = if i + 1 < rev.len() { Some(l.conv(&format!("{d}.up_blocks.{i}.upsamplers.0.conv"), c, c, 3).await?) } else { None };
            up.push(UpBlock { resnets, upsample });
            prev = c;
        }
        Ok(VaeDecoder {
            cfg: cfg.clone(),
            post_quant,
            conv_in: l.conv(&format!("{d}.conv_in"), zc, c0, 3).await?,
            mid1: ResNet::load(&l, &format!("{d}.mid_block.resnets.0"), c0, c0).await?,
            attn,
            mid2: ResNet::load(&l, &format!("{d}.mid_block.resnets.1"), c0, c0).await?,
            up,
            norm_out: l.norm(&format!("{d}.conv_norm_out"), prev).await?,
            conv_out: l.conv(&format!("{d}.conv_out"), prev, cfg.out_channels, 3).await?,
        })
    }

    pub fn weight_bytes(&self) -> u64 {
        let w = |c: &(Arc<Weight>, Tensor)| c.0.bytes();
        let r = |r: &ResNet| w(&r.conv1) + w(&r.conv2) + r.shortcut.as_ref().map(w).unwrap_or(0);
        let a = self.attn.as_ref().map(|a| w(&a.q) + w(&a.k) + w(&a.v) + w(&a.out)).unwrap_or(0);
        let up: u64 = self.up.iter().map(|b| b.resnets.iter().map(r).sum::<u64>() + b.upsample.as_ref().map(w).unwrap_or(0)).sum();
        w(&self.conv_in) + r(&self.mid1) + r(&self.mid2) + a + up + w(&self.conv_out)
    }

    /// Every convolution one decode of a `side`² latent runs, in order (the walk of
    /// [`VaeDecoder::decode_raw`] and [`VaeDecoder::resnet`]).
    pub fn conv_calls(&self, side: usize) -> Vec<ConvCall> {
        let conv = |h, cin, cout, ks, upsample, add, groupnorm| ConvCall { h, w: h, cin, cout, ks, upsample, add, groupnorm };
        let resnet = |v: &mut Vec<ConvCall>, r: &ResNet, h| {
            if r.shortcut.is_some() {
                v.push(conv(h, r.cin, r.cout, 1, false, false, false));
            }
            v.push(conv(h, r.cin, r.cout, 3, false, false, true));
            v.push(conv(h, r.cout, r.cout, 3, false, true, true));
        };
        let (zc, mut h) = (self.cfg.latent_channels, side);
        let mut v = Vec::new();
        if self.post_quant.is_some() {
            v.push(conv(h, zc, zc, 1, false, false, false));
        }
        v.push(conv(h, zc, self.mid1.cin, 3, false, false, false));
        resnet(&mut v, &self.mid1, h);
        resnet(&mut v, &self.mid2, h);
        let mut c = self.mid2.cout;
        for blk in &self.up {
            for r in &blk.resnets {
                resnet(&mut v, r, h);
                c = r.cout;
            }
            if blk.upsample.is_some() {
                h *= 2;
                v.push(conv(h, c, c, 3, true, false, false));
            }
        }
        v.push(conv(h, c, self.cfg.out_channels, 3, false, false, true));
        v
    }

    /// The format of the convolution weights (one preset for all of them).
    pub fn conv_quant(&self) -> Quant {
        self.conv_in.0.quant
    }

    /// Bytes of GPU memory one decode of a `side`² latent allocates (three maps of the largest size).
    pub fn work_bytes(&self, side: usize) -> u64 {
        let (mut s, mut most) = (side, 0usize);
        let rev: Vec<usize> = self.cfg.block_out_channels.iter().rev().copied().collect();
        let mut prev = rev[0];
        for (i, &c) in rev.iter().enumerate() {
            most = most.max(s * s * prev.max(c));
            if i + 1 < rev.len() {
                s *= 2;
                most = most.max(s * s * c);
            }
            prev = c;
        }
        3 * most as u64 * 4
    }

    /// GroupNorm + SiLU of x, then conv1; GroupNorm + SiLU of that, then conv2 onto the residual.
    /// The normalised maps are written once (the convolutions then load plain values): into the
    /// spare buffer, or over a map that is not needed raw any more.
    fn resnet(&self, rec: &mut Recorder, r: &ResNet, b: &Bufs, cur: usize, h: usize, w: usize) -> usize {
        let groups = self.cfg.norm_groups;
        let x = Map { buf: &b.maps[cur], h, w, c: r.cin };
        let (t, o) = ((cur + 1) % 3, (cur + 2) % 3);
        let hid = Map { buf: &b.maps[t], h, w, c: r.cout };
        kernels::groupnorm_stats(rec, x, groups, EPS, &b.partials, &b.stats);
        // The residual: x itself (accumulated into in place) or its 1×1 projection.
        let (res, out, xn) = match &r.shortcut {
            None => {
                let xn = Map { buf: &b.maps[o], ..x };
                kernels::groupnorm_apply(rec, x, groups, &b.stats, &r.norm1.0.buf, &r.norm1.1.buf, Some(xn.buf), true);
                (x, cur, xn)
            }
            Some(sc) => {
                let y = Map { buf: &b.maps[o], h, w, c: r.cout };
                kernels::conv2d(rec, &sc.0, 1, &sc.1.buf, x, false, y, false);
                kernels::groupnorm_apply(rec, x, groups, &b.stats, &r.norm1.0.buf, &r.norm1.1.buf, None, true);
                (y, o, x)
            }
        };
        kernels::conv2d(rec, &r.conv1.0, 3, &r.conv1.1.buf, xn, false, hid, false);
        kernels::groupnorm_stats(rec, hid, groups, EPS, &b.partials, &b.stats);
        kernels::groupnorm_apply(rec, hid, groups, &b.stats, &r.norm2.0.buf, &r.norm2.1.buf, None, true);
        kernels::conv2d(rec, &r.conv2.0, 3, &r.conv2.1.buf, hid, false, res, true);
        out
    }

    fn attention(&self, rec: &mut Recorder, a: &MidAttention, b: &Bufs, cur: usize, h: usize, w: usize) -> Result<()> {
        let (c, n) = (a.c, h * w);
        let gpu = rec.gpu;
        let x = Map { buf: &b.maps[cur], h, w, c };
        let buf = |label: &str| gpu.storage_buffer(label, (n * c * 4) as u64);
        let (hn, q, k, v, o) = (buf("vae-attn-norm"), buf("vae-q"), buf("vae-k"), buf("vae-v"), buf("vae-attn-out"));
        kernels::groupnorm_stats(rec, x, self.cfg.norm_groups, EPS, &b.partials, &b.stats);
        kernels::groupnorm_apply(rec, x, self.cfg.norm_groups, &b.stats, &a.norm.0.buf, &a.norm.1.buf, Some(&hn), false);
        let to = |buf, add| Out { buf, off: 0, stride: c, add };
        kernels::linear(rec, &a.q.0, Some(&a.q.1.buf), &hn, 0, n, to(&q, false));
        kernels::linear(rec, &a.k.0, Some(&a.k.1.buf), &hn, 0, n, to(&k, false));
        kernels::linear(rec, &a.v.0, Some(&a.v.1.buf), &hn, 0, n, to(&v, false));
        let shape = AttnShape { t: n, heads: 1, head_dim: c, causal_pos0: None, n_keys: n, q_stride: c, kv_stride: c, o_stride: c, kv: KvFormat::F32 };
        kernels::attention(rec, shape, View::at(&q, 0), View::at(&k, 0), View::at(&v, 0), View::at(&o, 0));
        kernels::linear(rec, &a.out.0, Some(&a.out.1.buf), &o, 0, n, to(&b.maps[cur], true));
        Ok(())
    }

    /// Decodes a latent [C_z, S, S] (in the model's scaled space) to RGB8 [S·f, S·f, 3].
    pub async fn decode(&self, gpu: &Gpu, z: &[f32], side: usize) -> Result<Vec<u8>> {
        Ok(to_rgb8(&self.decode_raw(gpu, z, side).await?, self.cfg.out_channels))
    }

    /// The decoder's output before clamping, channels-last [S·f, S·f, out_channels].
    pub async fn decode_raw(&self, gpu: &Gpu, z: &[f32], side: usize) -> Result<Vec<f32>> {
        let zc = self.cfg.latent_channels;
        if z.len() != zc * side * side {
            bail!("the latent must hold [{zc}, {side}, {side}] values, got {}", z.len());
        }
        // z / scaling_factor (+ shift), CHW → HWC.
        let (sf, sh) = (self.cfg.scaling_factor, self.cfg.shift_factor);
        let mut hwc = vec![0f32; z.len()];
        for c in 0..zc {
            for i in 0..side * side {
                hwc[i * zc + c] = z[c * side * side + i] / sf + sh;
            }
        }
        let work = self.work_bytes(side) / 3;
        let out_side = side * self.cfg.factor();
        let max_pixels = out_side * out_side;
        let groups = self.cfg.norm_groups;
        let oom = gpu.oom_scope();
        let b = Bufs {
            maps: [gpu.storage_buffer("vae-a", work), gpu.storage_buffer("vae-b", work), gpu.storage_buffer("vae-c", work)],
            partials: gpu.storage_buffer("vae-gn-partials", kernels::groupnorm_partials_bytes(max_pixels, groups)),
            stats: gpu.storage_buffer("vae-gn", groups as u64 * 8),
        };
        oom.check("the image decoder's work buffers").await?;
        let zb = gpu.storage_buffer_init("vae-z", bytemuck::cast_slice(&hwc));
        let mut rec = Recorder::new(gpu);
        let (mut h, mut w) = (side, side);
        let c0 = self.cfg.block_out_channels[self.cfg.block_out_channels.len() - 1];
        let zmap = Map { buf: &zb, h, w, c: zc };
        let input = match &self.post_quant {
            Some(pq) => {
                let m = Map { buf: &b.maps[1], h, w, c: zc };
                kernels::conv2d(&mut rec, &pq.0, 1, &pq.1.buf, zmap, false, m, false);
                m
            }
            None => zmap,
        };
        kernels::conv2d(&mut rec, &self.conv_in.0, 3, &self.conv_in.1.buf, input, false, Map { buf: &b.maps[0], h, w, c: c0 }, false);
        let mut cur = self.resnet(&mut rec, &self.mid1, &b, 0, h, w);
        if let Some(a) = &self.attn {
            self.attention(&mut rec, a, &b, cur, h, w)?;
        }
        cur = self.resnet(&mut rec, &self.mid2, &b, cur, h, w);
        let mut c = c0;
        for blk in &self.up {
            for r in &blk.resnets {
                cur = self.resnet(&mut rec, r, &b, cur, h, w);
                c = r.cout;
            }
            if let Some(upc) = &blk.upsample {
                let next = (cur + 1) % 3;
                let x = Map { buf: &b.maps[cur], h, w, c };
                let y = Map { buf: &b.maps[next], h: 2 * h, w: 2 * w, c };
                kernels::conv2d(&mut rec, &upc.0, 3, &upc.1.buf, x, true, y, false);
                (h, w, cur) = (2 * h, 2 * w, next);
            }
        }
        let x = Map { buf: &b.maps[cur], h, w, c };
        kernels::groupnorm_stats(&mut rec, x, groups, EPS, &b.partials, &b.stats);
        kernels::groupnorm_apply(&mut rec, x, groups, &b.stats, &self.norm_out.0.buf, &self.norm_out.1.buf, None, true);
        let oc = self.cfg.out_channels;
        let out = gpu.storage_buffer("vae-rgb", (h * w * oc * 4) as u64);
        kernels::conv2d(&mut rec, &self.conv_out.0, 3, &self.conv_out.1.buf, x, false, Map { buf: &out, h, w, c: oc }, false);
        rec.finish();
        gpu.read_f32(&out, 0, h * w * oc).await
    }
}

/// Decoder output in [−1, 1] (channels-last) → RGB8, as the reference: clamp, (x + 1)/2·255,
/// truncated.
pub fn to_rgb8(x: &[f32], channels: usize) -> Vec<u8> {
    x.chunks_exact(channels).flat_map(|p| (0..3).map(move |c| ((p[c.min(channels - 1)].clamp(-1.0, 1.0) + 1.0) / 2.0 * 255.0) as u8)).collect()
}

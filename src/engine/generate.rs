//! Text → latent by rectified flow with classifier-free guidance (spec §3.1–3.2, §3.6).
//!
//! The prompt `User: {prompt}\n\nAssistant:` (no system prompt; the generation tag is dropped)
//! is prefilled once into the conditional KV cache; the unconditional row is BOS alone at
//! position 0. Every step then runs, in one submit:
//!   t_emb = TimeEmbed(τ) · x = Encoder(patchify(z), t_emb) · LLM([t_emb | aligned x]) for both
//!   rows as one batch, at positions L … L+G² (the unconditional row keeps those positions) ·
//!   v = Decoder(LLM out, skip x, t_emb) for both rows · z ← z + dt·(w·v_c − (w−1)·v_u).

use anyhow::{bail, Result};

use crate::error::Kind;
use crate::fail;
use image::ImageEncoder;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::Engine;
use crate::gpu::context::{map_finish, map_start, Mapping};
use crate::gpu::kernels;
use crate::gpu::{BindCache, Recorder};
use crate::model::llm::{Input, Seq};
use crate::model::uvit::time_projection;
use crate::text::template::{chat_pieces, Message};

#[derive(Clone, Debug)]
pub struct GenerateParams {
    /// Euler steps (spec default 30).
    pub steps: usize,
    /// Guidance weight w (spec default 2.0; 1 = no guidance).
    pub cfg: f32,
    /// Seed of the start latent (ignored with `noise`).
    pub seed: u64,
    /// A given start latent [4, latent, latent] (validation against a reference).
    pub noise: Option<Vec<f32>>,
    /// Produce an RGBA preview of the clean-image estimate after every step.
    pub preview: bool,
}

/// The largest guidance weight accepted (the demo's default is 2).
pub const MAX_CFG: f32 = 20.0;

impl Default for GenerateParams {
    fn default() -> Self {
        GenerateParams { steps: 30, cfg: 2.0, seed: 12345, noise: None, preview: false }
    }
}

/// Progress after a finished step.
pub struct StepInfo<'a> {
    /// Steps done (1 ..= steps).
    pub step: usize,
    pub steps: usize,
    /// RGBA8 [side, side] preview of x̂₁ = z + (1 − t)·v, when asked for.
    pub preview: Option<&'a [u8]>,
    pub preview_side: usize,
}

/// Intermediate values of step 0, for validation (layouts as the reference: maps CHW).
#[derive(Default, Debug)]
pub struct GenTrace {
    pub t_emb: Vec<f32>,
    /// Encoder output [C, G, G].
    pub x_emb: Vec<f32>,
    /// Encoder aligner output [G², hidden].
    pub enc_tokens: Vec<f32>,
    /// Last G² hidden states of the conditional row after the LLM's final norm [G², hidden].
    pub llm_out_cond: Vec<f32>,
    /// Velocities [4, S, S].
    pub v_cond: Vec<f32>,
    pub v_uncond: Vec<f32>,
}

/// A standard-normal latent of `n` values from `seed`: ChaCha8 integers and Box–Muller with the
/// pure-Rust `libm`, so the same seed gives the same latent natively and in wasm.
pub fn seeded_noise(seed: u64, n: usize) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut unit = || ((rng.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64; // (0, 1)
    let mut out = Vec::with_capacity(n + 1);
    while out.len() < n {
        let (u1, u2) = (unit(), unit());
        let r = libm::sqrt(-2.0 * libm::log(u1));
        let a = 2.0 * std::f64::consts::PI * u2;
        out.push((r * libm::cos(a)) as f32);
        out.push((r * libm::sin(a)) as f32);
    }
    out.truncate(n);
    out
}

/// Token rows [G², 4·4] → CHW [cz, 2G, 2G] (PixelShuffle(2)).
fn unshuffle(rows: &[f32], g: usize, cz: usize) -> Vec<f32> {
    let s = 2 * g;
    let mut out = vec![0f32; cz * s * s];
    for (tok, row) in rows.chunks_exact(cz * 4).enumerate() {
        let (r, c) = (tok / g, tok % g);
        for ch in 0..cz {
            for i in 0..2 {
                for j in 0..2 {
                    out[(ch * s + 2 * r + i) * s + 2 * c + j] = row[ch * 4 + i * 2 + j];
                }
            }
        }
    }
    out
}

/// Channels-last [n, c] → [c, n].
fn transpose(x: &[f32], n: usize, c: usize) -> Vec<f32> {
    (0..c).flat_map(|ch| (0..n).map(move |i| x[i * c + ch])).collect()
}

impl Engine {
    /// The latent's shape [channels, side, side] ([4, 48, 48] for the real model).
    pub fn latent_shape(&self) -> [usize; 3] {
        let g = &self.cfg.gen;
        [g.in_channels, g.latent_size(), g.latent_size()]
    }

    /// Prompt ids of a generation request (BOS, `User: …\n\nAssistant:`; the tag is dropped).
    pub fn gen_prompt_ids(&self, prompt: &str) -> Result<Vec<u32>> {
        if prompt.trim().is_empty() {
            fail!(Kind::BadInput, "the prompt is empty");
        }
        self.tok.encode_pieces(&chat_pieces(&self.tok, None, &[Message::user(prompt)]))
    }

    /// t_emb [hidden] for the network time input τ (= 1000·t).
    pub async fn time_embedding(&self, tau: f32) -> Result<Vec<f32>> {
        let h = self.cfg.llm.hidden;
        let proj = self.gpu.storage_buffer_init("t-proj", bytemuck::cast_slice(&time_projection(tau, self.cfg.gen.enc_channels)));
        let (mid, temb, silu) =
            (self.gpu.storage_buffer("t-mid", h as u64 * 4), self.gpu.storage_buffer("t-emb", h as u64 * 4), self.gpu.storage_buffer("t-silu", h as u64 * 4));
        let mut rec = Recorder::new(&self.gpu);
        self.gen_enc.time_embed(&mut rec, &proj, &mid, &temb, &silu);
        rec.finish();
        self.gpu.read_f32(&temb, 0, h).await
    }

    /// Integrates the flow from the seeded (or given) noise to the final latent [4, S, S].
    /// `on_step` runs after every step; returning false cancels (the result is then `None`).
    pub async fn generate_latent(
        &self,
        prompt: &str,
        params: &GenerateParams,
        mut trace: Option<&mut GenTrace>,
        mut on_step: impl FnMut(StepInfo) -> bool,
    ) -> Result<Option<Vec<f32>>> {
        self.gpu.check_alive()?;
        crate::gpu::selfcheck::check_device(&self.gpu).await?;
        let gpu = &self.gpu;
        let g = &self.cfg.gen;
        let (h, cz, s) = (self.cfg.llm.hidden, g.in_channels, g.latent_size());
        let grid = s / g.kernel;
        let n = grid * grid; // generation tokens
        let (c_enc, d) = (g.enc_channels, g.dec_channels);
        if params.steps == 0 || params.steps > 1000 {
            fail!(Kind::BadInput, "steps must be between 1 and 1000 (got {})", params.steps);
        }
        // Far past any useful guidance (the demo uses 2) the update overflows to a black picture.
        if !(params.cfg.is_finite() && (0.0..=MAX_CFG).contains(&params.cfg)) {
            fail!(Kind::BadInput, "the guidance weight must be a number between 0 and {MAX_CFG} (got {})", params.cfg);
        }
        let ids = self.gen_prompt_ids(prompt)?;
        let l = ids.len();
        if l > self.opts.context || l + 1 + n > self.cfg.llm.max_positions {
            fail!(Kind::BadInput, "the prompt is {l} tokens; with the {} image tokens it exceeds the model's {} positions", n + 1, self.cfg.llm.max_positions);
        }
        let z0 = match &params.noise {
            Some(z) if z.len() != cz * s * s => fail!(Kind::BadInput, "the noise must hold [{cz}, {s}, {s}] = {} values, got {}", cz * s * s, z.len()),
            Some(z) if z.iter().any(|v| !v.is_finite()) => fail!(Kind::BadInput, "the noise holds NaN or infinite values"),
            Some(z) => z.clone(),
            None => seeded_noise(params.seed, cz * s * s),
        };

        // Buffers for this request.
        let buf = |label: &str, floats: usize| gpu.storage_buffer(label, floats as u64 * 4);
        let oom = gpu.oom_scope();
        let z = gpu.storage_buffer_init("z", bytemuck::cast_slice(&z0));
        let (proj, mid, temb, silu_t) = (buf("t-proj", c_enc), buf("t-mid", h), buf("t-emb", h), buf("t-silu", h));
        let patches = buf("patches", n * cz * 4);
        let x_emb = buf("x-emb", n * c_enc);
        let rows = 2 * (n + 1);
        let embeds = buf("gen-embeds", rows * h);
        let dec_x = buf("dec-x", 2 * n * d);
        let v = buf("velocity", 2 * n * cz * 4);
        let preview = params.preview.then(|| gpu.storage_buffer("preview", (s * s * 4) as u64));
        let scratch = self.llm.new_scratch(gpu, rows.max(l.min(self.opts.prefill_chunk)));
        let cond = self.llm.new_cache(gpu, l + 1 + n)?;
        let uncond = self.llm.new_cache(gpu, 2 + n)?;
        oom.check("a picture's work buffers").await?;

        // The prompt's K/V once, for every step; the unconditional row's BOS.
        gpu.queue.write_buffer(&self.ids, 0, bytemuck::cast_slice(&ids));
        let mut pos = 0;
        while pos < l {
            let t = scratch.rows.min(l - pos);
            let mut rec = Recorder::new(gpu);
            self.llm.forward(&mut rec, &scratch, &cond, Input::Ids(&self.ids, pos), t, pos);
            rec.finish();
            pos += t;
        }
        let mut rec = Recorder::new(gpu);
        self.llm.forward(&mut rec, &scratch, &uncond, Input::Ids(&self.ids, 0), 1, 0);
        rec.finish();

        let dt = 1.0 / params.steps as f32;
        // Every step binds the same buffers: its bind groups are made once, at step 0.
        let binds = BindCache::default();
        // The step whose readback is under way, and how a readback is reported.
        struct Readback {
            staging: wgpu::Buffer,
            mapping: Mapping,
            index: Option<wgpu::SubmissionIndex>,
            step: usize,
        }
        let (mut pending, overlap): (Option<Readback>, bool) = (None, gpu.gpu_tuned());
        let mut report = async |r: Readback| -> Result<bool> {
            let back = map_finish(gpu, &r.staging, r.mapping, r.index).await?;
            Ok(on_step(StepInfo { step: r.step, steps: params.steps, preview: preview.as_ref().map(|_| back.as_slice()), preview_side: s }))
        };
        for k in 0..params.steps {
            // τ as the reference forms it: k/N·1000 in double precision, then f32.
            let tau = (k as f64 / params.steps as f64 * 1000.0) as f32;
            let t = k as f32 / params.steps as f32;
            gpu.queue.write_buffer(&proj, 0, bytemuck::cast_slice(&time_projection(tau, c_enc)));
            let mut rec = Recorder::with_binds(gpu, &binds);
            self.gen_enc.time_embed(&mut rec, &proj, &mid, &temb, &silu_t);
            kernels::patchify(&mut rec, &z, s, cz, &patches);
            self.gen_enc.forward(&mut rec, &self.uvit_scratch, &patches, &silu_t, &x_emb);
            // LLM input rows: [t_emb | G² tokens] for the conditional row, then the same again.
            for row0 in [0, n + 1] {
                rec.copy(&temb, 0, &embeds, (row0 * h * 4) as u64, h as u64 * 4);
                self.gen_enc.align(&mut rec, &x_emb, &embeds, (row0 + 1) * h);
            }
            let seqs = [Seq { cache: &cond, rows: n + 1, slot0: l, pos0: l }, Seq { cache: &uncond, rows: n + 1, slot0: 1, pos0: l }];
            self.llm.forward_seqs(&mut rec, &scratch, Input::Embeds(&embeds, 0), &seqs);
            kernels::rmsnorm(&mut rec, &scratch.x, 0, rows, h, &self.llm.norm.buf, self.cfg.llm.rms_eps, &scratch.h, 0);
            self.gen_dec.forward(&mut rec, &self.uvit_scratch, &scratch.h, &[h, (n + 2) * h], &x_emb, &silu_t, &dec_x, &v);
            if let Some(tr) = trace.as_deref_mut().filter(|_| k == 0) {
                rec.finish();
                tr.t_emb = gpu.read_f32(&temb, 0, h).await?;
                tr.x_emb = transpose(&gpu.read_f32(&x_emb, 0, n * c_enc).await?, n, c_enc);
                tr.enc_tokens = gpu.read_f32(&embeds, h, n * h).await?;
                tr.llm_out_cond = gpu.read_f32(&scratch.h, h, n * h).await?;
                tr.v_cond = unshuffle(&gpu.read_f32(&v, 0, n * cz * 4).await?, grid, cz);
                tr.v_uncond = unshuffle(&gpu.read_f32(&v, n * cz * 4, n * cz * 4).await?, grid, cz);
                rec = Recorder::new(gpu);
            }
            kernels::cfg_euler(&mut rec, &v, n * cz * 4, &z, s, cz, params.cfg, dt, t, preview.as_ref());
            // One small readback per step: it paces progress and cancellation with the GPU. On
            // GPUs it is waited for while the next step runs (requested before that step is
            // submitted), so the GPU does not idle through the round trip and the next step's
            // recording; a cancelled generation leaves at most that one step behind, unread.
            let (src, bytes) = match &preview {
                Some(p) => (p, (s * s * 4) as u64),
                None => (&z, 4),
            };
            let staging = rec.read_back(src, 0, bytes);
            let (submits, dispatches) = (rec.submits + 1, rec.dispatches);
            let index = rec.flush();
            {
                let mut c = self.counters.lock().unwrap();
                c.submits += submits;
                c.dispatches += dispatches;
                c.bytes_read_back += bytes;
            }
            let mapping = map_start(&staging);
            let this = Readback { staging, mapping, index, step: k + 1 };
            // On CPU rasterisers the host and the "GPU" share the cores: waiting at once measured
            // faster there (lavapipe, 60 steps of a tiny model: 4.35 against 4.73 ms per step).
            let ready = if overlap { pending.replace(this) } else { Some(this) };
            if let Some(r) = ready {
                if !report(r).await? {
                    return Ok(None);
                }
            }
        }
        if let Some(last) = pending.take() {
            if !report(last).await? {
                return Ok(None);
            }
        }
        let latent = gpu.read_f32(&z, 0, cz * s * s).await?;
        if latent.iter().any(|v| !v.is_finite()) {
            bail!("the generation diverged (the latent holds NaN or infinite values); the weights may be damaged");
        }
        Ok(Some(latent))
    }
}

/// A generated picture.
pub struct GeneratedImage {
    pub width: usize,
    pub height: usize,
    /// Packed RGB8.
    pub rgb: Vec<u8>,
    /// The final latent [4, S, S] (before the VAE).
    pub latent: Vec<f32>,
}

impl GeneratedImage {
    /// PNG file bytes.
    pub fn png(&self) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        image::codecs::png::PngEncoder::new(&mut out).write_image(&self.rgb, self.width as u32, self.height as u32, image::ExtendedColorType::Rgb8)?;
        Ok(out)
    }
}

impl Engine {
    /// Prompt → picture: the flow (see [`Engine::generate_latent`]) then the VAE decoder.
    /// `None` when cancelled through `on_step`.
    pub async fn generate_image(&self, prompt: &str, params: &GenerateParams, on_step: impl FnMut(StepInfo) -> bool) -> Result<Option<GeneratedImage>> {
        let Some(vae) = &self.vae else {
            bail!("no VAE is loaded: put the SDXL-VAE (diffusers layout) in MODEL/vae or pass its folder");
        };
        let Some(latent) = self.generate_latent(prompt, params, None, on_step).await? else {
            return Ok(None);
        };
        let side = self.cfg.gen.latent_size();
        let rgb = vae.decode(&self.gpu, &latent, side).await?;
        let px = side * vae.cfg.factor();
        Ok(Some(GeneratedImage { width: px, height: px, rgb, latent }))
    }
}

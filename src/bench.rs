//! Benchmark helpers behind `janusflow bench` (figures, never assertions).

use std::time::Instant;

use anyhow::Result;

use crate::engine::Engine;
use crate::gpu::kernels::{self, KvFormat, Out, View};
use crate::gpu::profile::Profile;
use crate::gpu::{Gpu, Recorder, Tensor, Weight};
use crate::weights::quant::{Quant, QuantBlob};

/// Seconds for one f32 [m,k]×[k,n] product with the tiled kernel (best of 3, after a warm-up).
pub fn matmul_f32(gpu: &Gpu, m: usize, k: usize, n: usize) -> Result<f64> {
    let x: Vec<f32> = (0..m * k).map(|i| ((i % 97) as f32 - 48.0) / 97.0).collect();
    let w: Vec<f32> = (0..n * k).map(|i| ((i % 89) as f32 - 44.0) / 89.0).collect();
    let wt = Weight::upload(gpu, "bench-w", &QuantBlob::quantize(Quant::F32, n, k, &w)?)?;
    let xt = Tensor::from_f32(gpu, "bench-x", &[m, k], &x);
    let yt = Tensor::zeros(gpu, "bench-y", &[m, n]);
    let mut best = f64::MAX;
    for i in 0..4 {
        let t0 = Instant::now();
        let mut rec = Recorder::new(gpu);
        kernels::linear(&mut rec, &wt, None, &xt.buf, 0, m, Out { buf: &yt.buf, off: 0, stride: n, add: false });
        pollster::block_on(rec.finish_and_read(&yt.buf, 0, 4))?;
        if i > 0 {
            best = best.min(t0.elapsed().as_secs_f64());
        }
    }
    Ok(best)
}

/// Seconds for one matrix–vector product (one activation row) with an [n, k] weight in `quant`,
/// and the weight bytes it reads: 20 products in one submit, timed to the readback, best of 5
/// after a warm-up (so the submit and readback round trip is spread over 20 products).
pub fn matvec(gpu: &Gpu, quant: Quant, n: usize, k: usize) -> Result<(f64, u64)> {
    let w: Vec<f32> = (0..n * k).map(|i| ((i * 7 % 113) as f32 - 56.0) / 113.0).collect();
    let wt = Weight::upload(gpu, "bench-w", &QuantBlob::quantize(quant, n, k, &w)?)?;
    drop(w);
    let xt = Tensor::from_f32(gpu, "bench-x", &[k], &vec![0.5; k]);
    let yt = Tensor::zeros(gpu, "bench-y", &[n]);
    let mut best = f64::MAX;
    for i in 0..6 {
        let t0 = Instant::now();
        let mut rec = Recorder::new(gpu);
        for _ in 0..REPS {
            kernels::linear(&mut rec, &wt, None, &xt.buf, 0, 1, Out { buf: &yt.buf, off: 0, stride: n, add: false });
        }
        pollster::block_on(rec.finish_and_read(&yt.buf, 0, 4))?;
        if i > 0 {
            best = best.min(t0.elapsed().as_secs_f64() / REPS as f64);
        }
    }
    Ok((best, wt.bytes()))
}

/// Seconds for one attention call of shape `s` with `kernel` (q, k and v contiguous, [rows, heads ·
/// head dim]): up to 20 calls in one submit, timed to the readback, best of 4 after a warm-up.
pub fn attention(gpu: &Gpu, s: kernels::AttnShape, kernel: kernels::AttnKernel) -> Result<f64> {
    let width = s.heads * s.head_dim;
    let keys = s.keys();
    let fill = |n: usize, m: usize| -> Vec<f32> { (0..n).map(|i| ((i * m % 101) as f32 - 50.0) / 101.0).collect() };
    // Keys and values as the cache stores them (f16: pairs packed in one word).
    let stored = |v: Vec<f32>| -> Vec<f32> {
        match s.kv {
            KvFormat::F32 => v,
            KvFormat::F16 => kernels::kv_f16_words(&v).into_iter().map(f32::from_bits).collect(),
        }
    };
    let qt = Tensor::from_f32(gpu, "bench-q", &[s.t, width], &fill(s.t * width, 7));
    let (k, v) = (stored(fill(keys * width, 11)), stored(fill(keys * width, 13)));
    let (kt, vt) = (Tensor::from_f32(gpu, "bench-k", &[k.len()], &k), Tensor::from_f32(gpu, "bench-v", &[v.len()], &v));
    let ot = Tensor::zeros(gpu, "bench-o", &[s.t, width]);
    // Large calls (seconds each on a CPU adapter) are timed one per submit.
    let reps = if s.t * keys * s.heads > 1 << 22 { 1 } else { REPS };
    let mut best = f64::MAX;
    for i in 0..5 {
        let t0 = Instant::now();
        let mut rec = Recorder::new(gpu);
        for _ in 0..reps {
            kernels::attention_using(&mut rec, kernel, s, View::at(&qt.buf, 0), View::at(&kt.buf, 0), View::at(&vt.buf, 0), View::at(&ot.buf, 0));
        }
        pollster::block_on(rec.finish_and_read(&ot.buf, 0, 4))?;
        if i > 0 {
            best = best.min(t0.elapsed().as_secs_f64() / reps as f64);
        }
    }
    Ok(best)
}

/// Products or copies per timed submit in [`matvec`] and [`copy_bandwidth`].
const REPS: usize = 20;

/// Bytes moved per second (read + written) by a buffer-to-buffer copy of `bytes` on this adapter,
/// 20 copies per submit, best of 5: the bandwidth the matvec figures are measured against.
pub fn copy_bandwidth(gpu: &Gpu, bytes: u64) -> Result<f64> {
    let usage = wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::STORAGE;
    let a = gpu.device.create_buffer(&wgpu::BufferDescriptor { label: Some("bench-copy-a"), size: bytes, usage, mapped_at_creation: false });
    let b = gpu.device.create_buffer(&wgpu::BufferDescriptor { label: Some("bench-copy-b"), size: bytes, usage, mapped_at_creation: false });
    let mut best = f64::MAX;
    for i in 0..6 {
        let t0 = Instant::now();
        let mut enc = gpu.device.create_command_encoder(&Default::default());
        for _ in 0..REPS {
            enc.copy_buffer_to_buffer(&a, 0, &b, 0, bytes);
        }
        gpu.queue.submit([enc.finish()]);
        pollster::block_on(gpu.read_bytes(&b, 0, 4))?;
        if i > 0 {
            best = best.min(t0.elapsed().as_secs_f64() / REPS as f64);
        }
    }
    // A copy reads and writes every byte.
    Ok(2.0 * bytes as f64 / best)
}

pub struct LlmBench {
    /// Prompt tokens prefilled (the request, shortened to fit the model's context).
    pub prompt: usize,
    pub prefill_s: f64,
    pub decode_s: f64,
    pub decoded: usize,
    pub submits_per_token: f64,
    pub readback_per_token: f64,
    pub dispatches_per_token: f64,
    /// Bind groups created per decoded token after the first (0 when they are all reused).
    pub bind_groups_per_token: f64,
    /// Decode steps submitted before their token was chosen, and those redone (see
    /// `Engine::decode_next`; greedy never redoes one).
    pub fed_steps: usize,
    pub fed_misses: usize,
    /// Per-kernel GPU times of the prefill and of all decode steps (when profiling).
    pub prefill_profile: Option<Profile>,
    pub decode_profile: Option<Profile>,
}

/// Prefills `prompt` pseudo-random token ids, then decodes `steps` tokens greedily (EOS ignored).
pub async fn llm(engine: &Engine, prompt: usize, steps: usize) -> Result<LlmBench> {
    let steps = steps.min(engine.opts.context.saturating_sub(2)).max(1);
    let prompt = prompt.min(engine.opts.context.saturating_sub(steps + 1)).max(1);
    let n = engine.tok.vocab_size().min(engine.cfg.llm.vocab) as u32;
    let ids: Vec<u32> = (0..prompt as u32).map(|i| if i == 0 { engine.tok.bos } else { (i * 7919) % n.min(engine.tok.bos) }).collect();
    let mut cache = engine.llm.new_cache(&engine.gpu, prompt + steps + 1)?;
    engine.gpu.take_profile();
    let t0 = Instant::now();
    let mut cands = engine.prefill(&mut cache, &crate::engine::Prompt::from_ids(ids), 0, 1).await?;
    let prefill_s = t0.elapsed().as_secs_f64();
    let prefill_profile = engine.gpu.take_profile();
    let before = engine.counters.lock().unwrap().clone();
    let mut binds = 0;
    // Each step recorded while the one before runs, as in a chat.
    let mut ahead = None;
    let t1 = Instant::now();
    for i in 0..steps {
        if i == 1 {
            binds = engine.gpu.bind_groups_created();
        }
        cands = engine.decode_next(&mut cache, cands[0].1, 1, &mut ahead, i + 1 < steps).await?;
    }
    let decode_s = t1.elapsed().as_secs_f64();
    let after = engine.counters.lock().unwrap().clone();
    // Step i + 1 is recorded during step i: after the count at step 1, steps 2.. were recorded.
    let bind_groups_per_token = if steps > 2 { (engine.gpu.bind_groups_created() - binds) as f64 / (steps - 2) as f64 } else { f64::NAN };
    Ok(LlmBench {
        prompt,
        prefill_s,
        decode_s,
        decoded: steps,
        submits_per_token: (after.submits - before.submits) as f64 / steps as f64,
        readback_per_token: (after.bytes_read_back - before.bytes_read_back) as f64 / steps as f64,
        dispatches_per_token: (after.dispatches - before.dispatches) as f64 / steps as f64,
        bind_groups_per_token,
        fed_steps: after.fed_steps - before.fed_steps,
        fed_misses: after.fed_misses - before.fed_misses,
        prefill_profile,
        decode_profile: engine.gpu.take_profile(),
    })
}

pub struct UnderstandBench {
    /// The vision encoder alone (SigLIP + aligner, features read back).
    pub encoder_s: f64,
    /// Image question to first token (encoder + prefill + first sample).
    pub ttft_s: f64,
    pub prompt_tokens: usize,
}

/// Time to first token of an image question about a synthetic photo-sized picture.
pub async fn understand(engine: &mut Engine) -> Result<UnderstandBench> {
    use crate::engine::Conversation;
    use crate::image_io::Picture;
    use crate::text::sampling::SamplingParams;
    use crate::text::template::Message;
    let (w, h) = (640, 480);
    let rgb: Vec<u8> = (0..w * h * 3).map(|i| ((i * 31 + i / 1920 * 7) % 251) as u8).collect();
    let pic = std::sync::Arc::new(Picture::from_rgb8(w, h, rgb)?);
    engine.image_features(&pic).await?; // compiles the encoder's pipelines
    let t0 = Instant::now();
    engine.image_features(&pic).await?;
    let encoder_s = t0.elapsed().as_secs_f64();
    let mut conv = Conversation::new();
    conv.messages.push(Message::user_with_images("What is in this picture?", vec![pic]));
    let t1 = Instant::now();
    let reply = engine.chat(&mut conv, &SamplingParams::greedy(1), |_| true).await?;
    Ok(UnderstandBench { encoder_s, ttft_s: t1.elapsed().as_secs_f64(), prompt_tokens: reply.prompt_tokens })
}

pub struct GenerateBench {
    /// Mean seconds of the flow steps after the first (the first one also compiles pipelines).
    pub step_s: f64,
    /// Flow steps run, and seconds from the prompt to the decoded image (all steps + VAE).
    pub steps: usize,
    pub total_s: f64,
    /// The batched language-model pass of one step alone (both guidance rows).
    pub llm_s: f64,
    /// FLOPs of that pass's matrix products.
    pub llm_flops: f64,
    pub vae_s: f64,
    /// Every convolution shape of the VAE timed alone when asked (see [`vae_convs`]).
    pub vae_convs: Vec<VaeConvBench>,
    pub submits_per_step: f64,
    pub dispatches_per_step: f64,
    /// The step's language-model products (one layer's four matrices at the step's rows) and its
    /// attention (both guidance rows, all layers), each timed alone.
    pub step_gemms: Vec<GemmBench>,
    pub attention_s_per_step: f64,
    /// Per-kernel GPU times of the flow steps after the first, of the batched LLM pass and of the
    /// VAE (when profiling).
    pub step_profile: Option<Profile>,
    pub llm_profile: Option<Profile>,
    pub vae_profile: Option<Profile>,
    /// Weights plus the buffers one generation allocates (bytes).
    pub memory_bytes: u64,
}

/// Times guided generation on `engine`: `steps` (≥ 2) flow steps, a standalone batched LLM pass, the
/// VAE, and with `vae_convs` each of the VAE's convolution shapes alone ([`vae_convs`]).
pub async fn generate(engine: &Engine, steps: usize, vae_convs: bool) -> Result<GenerateBench> {
    use crate::engine::GenerateParams;
    use crate::model::llm::{Input, Seq};
    let before = engine.counters.lock().unwrap().clone();
    let steps = steps.max(2);
    let mut stamps = vec![Instant::now()];
    let params = GenerateParams { steps, ..Default::default() };
    let gpu = &engine.gpu;
    let latent = engine
        .generate_latent("a red fox in the snow, photograph", &params, None, |_| {
            stamps.push(Instant::now());
            if stamps.len() == 2 {
                gpu.take_profile(); // the prompt and the first step (compiles)
            }
            true
        })
        .await?
        .expect("not cancelled");
    let after = engine.counters.lock().unwrap().clone();
    let step_profile = engine.gpu.take_profile();
    let step_s = (stamps[steps] - stamps[1]).as_secs_f64() / (steps - 1) as f64;
    let flow_s = (stamps[steps] - stamps[0]).as_secs_f64();

    let c = &engine.cfg;
    let (h, n) = (c.llm.hidden, c.gen.tokens());
    let rows = 2 * (n + 1);
    let scratch = engine.llm.new_scratch(&engine.gpu, rows);
    let (ca, cb) = (engine.llm.new_cache(&engine.gpu, 32 + n + 1)?, engine.llm.new_cache(&engine.gpu, n + 2)?);
    let embeds = engine.gpu.storage_buffer("bench-embeds", (rows * h * 4) as u64);
    let seqs = [Seq { cache: &ca, rows: n + 1, slot0: 31, pos0: 31 }, Seq { cache: &cb, rows: n + 1, slot0: 1, pos0: 31 }];
    let t0 = Instant::now();
    let mut rec = Recorder::new(&engine.gpu);
    engine.llm.forward_seqs(&mut rec, &scratch, Input::Embeds(&embeds, 0), &seqs);
    rec.finish_and_read(&scratch.x, 0, 4).await?;
    let llm_s = t0.elapsed().as_secs_f64();
    let llm_profile = engine.gpu.take_profile();
    let (step_gemms, attention_s_per_step) = step_parts(engine, n + 1, 31)?;
    engine.gpu.take_profile();
    let per_row: u64 = engine.llm.layers.iter().map(|l| l.weights().iter().map(|w| (w.n * w.k) as u64).sum::<u64>()).sum();
    let llm_flops = 2.0 * per_row as f64 * rows as f64;

    let mut vae_s = 0.0;
    let mut vae_mem = 0;
    let mut vae_profile = None;
    let mut conv_figures = Vec::new();
    if let Some(vae) = &engine.vae {
        let t1 = Instant::now();
        vae.decode(&engine.gpu, &latent, c.gen.latent_size()).await?;
        vae_s = t1.elapsed().as_secs_f64();
        vae_mem = vae.work_bytes(c.gen.latent_size()) + vae.weight_bytes();
        vae_profile = engine.gpu.take_profile();
        if vae_convs {
            conv_figures = self::vae_convs(&engine.gpu, vae, c.gen.latent_size())?;
            engine.gpu.take_profile();
        }
    }
    let kv = |cap: usize| 2 * (c.llm.layers * cap * h) as u64 * engine.llm.kv_format.bytes();
    let scratch_bytes = (rows * (4 * h + 3 * c.llm.intermediate) * 4) as u64;
    let weights = engine.llm.weight_bytes() + engine.siglip.weight_bytes() + engine.gen_enc.weight_bytes() + engine.gen_dec.weight_bytes();
    Ok(GenerateBench {
        step_s,
        steps,
        total_s: flow_s + vae_s,
        llm_s,
        llm_flops,
        vae_s,
        vae_convs: conv_figures,
        submits_per_step: (after.submits - before.submits) as f64 / steps as f64,
        dispatches_per_step: (after.dispatches - before.dispatches) as f64 / steps as f64,
        step_gemms,
        attention_s_per_step,
        step_profile,
        llm_profile,
        vae_profile,
        memory_bytes: weights + vae_mem + kv(64 + n + 1) + kv(n + 2) + scratch_bytes,
    })
}

/// One matrix product of a flow step's language-model pass, timed alone.
pub struct GemmBench {
    pub name: &'static str,
    /// Activation rows, output columns, inner dimension.
    pub m: usize,
    pub n: usize,
    pub k: usize,
    /// Calls per flow step (one per layer).
    pub per_step: usize,
    pub s: f64,
}

impl GemmBench {
    pub fn flops(&self) -> f64 {
        2.0 * self.m as f64 * self.n as f64 * self.k as f64
    }
}

/// Times the pieces of a flow step's batched language-model pass alone, as `forward_seqs` records
/// them: the first layer's four products over both guidance rows (`rows` each) with its real
/// weights, and both rows' attention (the conditional row after a `prompt`-token prompt, the
/// unconditional one after its single token), returned as seconds per step over all layers.
pub fn step_parts(engine: &Engine, rows: usize, prompt: usize) -> Result<(Vec<GemmBench>, f64)> {
    use crate::gpu::kernels::AttnShape;
    let gpu = &engine.gpu;
    let c = &engine.cfg.llm;
    let (layer, m) = (&engine.llm.layers[0], 2 * rows);
    let (hd, keys) = (c.hidden, prompt + rows);
    // One pattern serves every input: the products' rows and the attention's keys (on small
    // models the keys outnumber the product inputs).
    let len = (m * c.intermediate.max(c.hidden)).max(keys * hd);
    let xs: Vec<f32> = (0..len).map(|i| ((i % 97) as f32 - 48.0) / 97.0).collect();
    let x = Tensor::from_f32(gpu, "bench-step-x", &[xs.len()], &xs);
    let y = Tensor::zeros(gpu, "bench-step-y", &[m * 2 * c.intermediate.max(3 * c.hidden / 2)]);
    let mut gemms = Vec::new();
    for (name, w) in [("q|k|v", &layer.qkv), ("o_proj", &layer.o), ("gate|up", &layer.gate_up), ("down_proj", &layer.down)] {
        let out = Out { buf: &y.buf, off: 0, stride: w.n, add: false };
        let s = time_call(gpu, &y.buf, &|rec: &mut Recorder| kernels::linear(rec, w, None, &x.buf, 0, m, out))?;
        gemms.push(GemmBench { name, m, n: w.n, k: w.k, per_step: c.layers, s });
    }
    let (q, o) = (Tensor::from_f32(gpu, "bench-step-q", &[rows * hd], &xs[..rows * hd]), Tensor::zeros(gpu, "bench-step-o", &[rows * hd]));
    let kv = Tensor::from_f32(gpu, "bench-step-kv", &[keys * hd], &xs[..keys * hd]);
    let shape = |slot0: usize| AttnShape {
        t: rows,
        heads: c.heads,
        head_dim: c.head_dim,
        causal_pos0: Some(slot0),
        n_keys: slot0 + rows,
        q_stride: hd,
        kv_stride: hd,
        o_stride: hd,
        kv: KvFormat::F32,
    };
    let (kv, qv, ov) = (View::at(&kv.buf, 0), View::at(&q.buf, 0), View::at(&o.buf, 0));
    let attention = time_call(gpu, &o.buf, &|rec: &mut Recorder| {
        kernels::attention(rec, shape(prompt), qv, kv, kv, ov);
        kernels::attention(rec, shape(1), qv, kv, kv, ov);
    })?;
    Ok((gemms, attention * c.layers as f64))
}

/// One convolution shape of the VAE decoder, timed alone.
pub struct VaeConvBench {
    pub shape: crate::model::vae::ConvCall,
    /// How many times one decode runs it.
    pub calls: usize,
    /// Seconds per call of the convolution, and of the GroupNorm + SiLU pass before it (0 for
    /// convolutions that read a plain map).
    pub conv_s: f64,
    pub groupnorm_s: f64,
}

/// Times every distinct convolution shape of one decode of a `side`² latent (and the
/// GroupNorm + SiLU pass in front of those that have one) on synthetic data, in decode order: one submit
/// per sample, repeated inside the submit until a sample takes ≥ 20 ms, best of two such
/// samples (one on CPU adapters, where a single call already takes that long). Run it after a
/// decode so that the pipelines are compiled.
pub fn vae_convs(gpu: &Gpu, vae: &crate::model::vae::VaeDecoder, side: usize) -> Result<Vec<VaeConvBench>> {
    use crate::gpu::kernels::Map;
    let mut out: Vec<VaeConvBench> = Vec::new();
    for call in vae.conv_calls(side) {
        if let Some(b) = out.iter_mut().find(|b| b.shape == call) {
            b.calls += 1;
            continue;
        }
        let s = call;
        let (ih, iw) = if s.upsample { (s.h / 2, s.w / 2) } else { (s.h, s.w) };
        let k = s.ks * s.ks * s.cin;
        let w: Vec<f32> = (0..s.cout * k).map(|i| ((i * 7 % 113) as f32 - 56.0) / 1130.0).collect();
        let wt = Weight::upload(gpu, "bench-conv-w", &QuantBlob::quantize(vae.conv_quant(), s.cout, k, &w)?)?;
        drop(w);
        let xs: Vec<f32> = (0..ih * iw * s.cin).map(|i| ((i % 97) as f32 - 48.0) / 97.0).collect();
        let x = Tensor::from_f32(gpu, "bench-conv-x", &[xs.len()], &xs);
        let xn = Tensor::zeros(gpu, "bench-conv-xn", &[xs.len()]);
        let y = Tensor::zeros(gpu, "bench-conv-y", &[s.h * s.w * s.cout]);
        let bias = Tensor::zeros(gpu, "bench-conv-b", &[s.cout]);
        let (gamma, beta) = (Tensor::from_f32(gpu, "bench-gn-g", &[s.cin], &vec![1.0; s.cin]), Tensor::zeros(gpu, "bench-gn-b", &[s.cin]));
        let groups = vae.cfg.norm_groups;
        let partials = gpu.storage_buffer("bench-gn-partials", kernels::groupnorm_partials_bytes(ih * iw, groups));
        let stats = gpu.storage_buffer("bench-gn-stats", groups as u64 * 8);
        let xm = Map { buf: &x.buf, h: ih, w: iw, c: s.cin };
        let conv = |rec: &mut Recorder| kernels::conv2d(rec, &wt, s.ks, &bias.buf, xm, s.upsample, Map { buf: &y.buf, h: s.h, w: s.w, c: s.cout }, s.add);
        let norm = |rec: &mut Recorder| {
            kernels::groupnorm_stats(rec, xm, groups, 1e-6, &partials, &stats);
            kernels::groupnorm_apply(rec, xm, groups, &stats, &gamma.buf, &beta.buf, Some(&xn.buf), true);
        };
        let conv_s = time_call(gpu, &y.buf, &conv)?;
        let groupnorm_s = if s.groupnorm { time_call(gpu, &xn.buf, &norm)? } else { 0.0 };
        out.push(VaeConvBench { shape: s, calls: 1, conv_s, groupnorm_s });
    }
    Ok(out)
}

/// Seconds per run of `record` (see [`vae_convs`]); `probe` is a buffer it writes.
fn time_call(gpu: &Gpu, probe: &wgpu::Buffer, record: &dyn Fn(&mut Recorder)) -> Result<f64> {
    let run = |reps: usize| -> Result<f64> {
        let t0 = Instant::now();
        let mut rec = Recorder::new(gpu);
        for _ in 0..reps {
            record(&mut rec);
        }
        pollster::block_on(rec.finish_and_read(probe, 0, 4))?;
        Ok(t0.elapsed().as_secs_f64() / reps as f64)
    };
    let once = run(1)?;
    if once >= 0.02 {
        return Ok(once);
    }
    let reps = ((0.02 / once).ceil() as usize).min(100);
    Ok(run(reps)?.min(run(reps)?))
}

/// How far the `fast` setting (f16 KV caches) moves a picture from the default (f32 caches):
/// the same prompt, seed and steps drawn both ways.
pub struct FastFidelity {
    /// Cosine similarity of the two final latents.
    pub latent_cosine: f64,
    /// Largest absolute difference between the latents, relative to the f32 latent's largest magnitude.
    pub latent_max_rel: f64,
    /// PSNR of the fast picture against the default one, in dB (None without a VAE; infinite
    /// when identical).
    pub psnr_db: Option<f64>,
}

/// Draws one picture ("a red fox in the snow, photograph", seed 12345, `steps` flow steps) with
/// the `fast` setting off and on, and compares them; leaves the setting as it was.
pub async fn fast_fidelity(engine: &mut Engine, steps: usize) -> Result<FastFidelity> {
    use crate::engine::GenerateParams;
    let was = engine.fast();
    let params = GenerateParams { steps, ..Default::default() };
    let mut latents = Vec::new();
    for fast in [false, true] {
        engine.set_fast(fast);
        let latent = engine.generate_latent("a red fox in the snow, photograph", &params, None, |_| true).await;
        latents.push(latent?.expect("not cancelled"));
    }
    engine.set_fast(was);
    let (a, b) = (&latents[0], &latents[1]);
    let dot: f64 = a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum();
    let norm = |v: &[f32]| v.iter().map(|&x| x as f64 * x as f64).sum::<f64>().sqrt();
    let scale = a.iter().fold(1e-12f64, |m, &x| m.max(x.abs() as f64));
    let max_diff = a.iter().zip(b).fold(0f64, |m, (&x, &y)| m.max((x - y).abs() as f64));
    let mut psnr_db = None;
    if let Some(vae) = &engine.vae {
        let side = engine.cfg.gen.latent_size();
        let (pa, pb) = (vae.decode(&engine.gpu, a, side).await?, vae.decode(&engine.gpu, b, side).await?);
        psnr_db = Some(psnr(&pa, &pb));
    }
    Ok(FastFidelity { latent_cosine: dot / (norm(a) * norm(b)).max(1e-30), latent_max_rel: max_diff / scale, psnr_db })
}

/// Peak signal-to-noise ratio of two 8-bit pictures of the same size, in dB.
pub fn psnr(a: &[u8], b: &[u8]) -> f64 {
    let mse = a.iter().zip(b).map(|(&x, &y)| (x as f64 - y as f64).powi(2)).sum::<f64>() / a.len().max(1) as f64;
    10.0 * (255.0f64 * 255.0 / mse).log10()
}

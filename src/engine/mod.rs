//! One object that owns the device, the loaded model and the scratch buffers; chat and logits.
//! Native front ends and the wasm API both drive this.

use std::sync::Arc;

use anyhow::{anyhow, bail, Result};

mod generate;
pub use generate::{seeded_noise, GenTrace, GenerateParams, GeneratedImage, StepInfo};

use crate::config::{JanusConfig, VaeConfig};
use crate::error::{Kind, WithKind as _};
use crate::fail;
use crate::gpu::context::{map_finish, map_start, Mapping};
use crate::gpu::kernels::{self, KvFormat};
use crate::gpu::recorder::Prepared;
use crate::gpu::{Gpu, Recorder};
use crate::image_io::{Picture, Preprocess};
use crate::model::llm::{Input, KvCache, Llm, Scratch, Splice};
use crate::model::siglip::{Siglip, SiglipScratch};
use crate::model::uvit::{GenDecoder, GenEncoder, UvitScratch};
use crate::model::vae::{VaeDecoder, VaeTensors};
use crate::model::Loader;
use crate::text::sampling::{Sampler, SamplingParams};
use crate::text::template::{chat_pieces, Message, Role, SYSTEM_PROMPT};
use crate::text::tokenizer::{StreamDecoder, TextTokenizer};
use crate::weights::quant::Quant;
use crate::weights::ModelSource;

#[derive(Clone, Debug)]
pub struct EngineOptions {
    pub preset: Quant,
    /// KV-cache length in tokens (the model allows max_position_embeddings).
    pub context: usize,
    /// Tokens per prefill pass (bounds activation memory).
    pub prefill_chunk: usize,
    /// The opt-in `fast` setting: KV caches in f16 (half their memory, and half the bytes each
    /// decoded token's attention reads) on every device, and on devices with `shader-f16` the
    /// GPU-shape matrix tile multiplies in f16 ([`Gpu::f16_math`]); a small measured cost in
    /// fidelity (benchmarks/README.md, "The fast setting"). Off by default: f32 is exact against
    /// the reference.
    pub fast: bool,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions { preset: Quant::Q4A, context: 4096, prefill_chunk: 256, fast: false }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FinishReason {
    /// The model produced end-of-sentence.
    Stop,
    /// `max_tokens` reached.
    Length,
    /// The context window is full.
    Context,
    /// The caller asked to stop.
    Cancelled,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct Reply {
    pub text: String,
    pub ids: Vec<u32>,
    pub finish: FinishReason,
    pub prompt_tokens: usize,
    /// Prompt tokens whose K/V were reused from the previous turn.
    pub reused_tokens: usize,
}

/// Counters for the benchmark.
#[derive(Clone, Debug, Default)]
pub struct Counters {
    pub submits: usize,
    pub dispatches: usize,
    pub bytes_read_back: u64,
    /// Decode steps submitted before their token was chosen, fed on the GPU with the best
    /// candidate of the step before; and those of them redone because another token was chosen.
    pub fed_steps: usize,
    pub fed_misses: usize,
}

/// A multi-turn conversation and its KV cache.
pub struct Conversation {
    /// The system prompt (JanusFlow's understanding prompt by default; `None` for none).
    pub system: Option<String>,
    pub messages: Vec<Message>,
    cache: Option<KvCache>,
}

impl Default for Conversation {
    fn default() -> Self {
        Conversation { system: Some(SYSTEM_PROMPT.to_string()), messages: Vec::new(), cache: None }
    }
}

impl Conversation {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn clear(&mut self) {
        self.messages.clear();
        if let Some(c) = &mut self.cache {
            c.keys.clear();
        }
    }
    /// GPU memory held by the conversation's KV cache (0 before its first turn).
    pub fn cache_bytes(&self) -> u64 {
        self.cache.as_ref().map_or(0, |c| c.bytes())
    }
}

/// A tokenized chat prompt: each image expanded to `[<begin_of_image>, N × <image_placeholder>,
/// <end_of_image>]` (spec §2.2), with an identity per position for prefix reuse.
pub struct Prompt {
    pub ids: Vec<u32>,
    pub keys: Vec<u64>,
    /// Position of each image's `<begin_of_image>` and the image, in order.
    pub images: Vec<(usize, Arc<Picture>)>,
}

impl Prompt {
    /// A prompt of plain token ids (no images).
    pub fn from_ids(ids: Vec<u32>) -> Self {
        Prompt { keys: ids.iter().map(|&i| i as u64).collect(), ids, images: Vec::new() }
    }
}

/// A decode step recorded before its token id is known (see [`Engine::decode_next`]): held until
/// the id comes, or already submitted, fed on the GPU with the best candidate of the step before.
pub(crate) struct DecodeStep<'e> {
    /// The recorded commands; `None` once submitted.
    work: Option<Prepared<'e>>,
    /// The cache position it feeds.
    pos: usize,
    /// Candidates it reads back.
    k: usize,
    staging: wgpu::Buffer,
    /// Its submission, once submitted (its readback waits for it alone).
    submitted: Option<wgpu::SubmissionIndex>,
    /// The best candidate of the step before (once read back): the token a submitted step was fed.
    fed: Option<u32>,
}

/// Cache identity of feature slot `j` (1..=N) of an image with content hash `hash`;
/// the top bit keeps it apart from token ids.
fn slot_key(hash: u64, j: usize) -> u64 {
    (1 << 63) | ((hash ^ (j as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)) >> 1)
}

pub struct Engine {
    pub gpu: Gpu,
    pub cfg: JanusConfig,
    pub tok: TextTokenizer,
    pub llm: Llm,
    pub siglip: Siglip,
    pub gen_enc: GenEncoder,
    pub gen_dec: GenDecoder,
    /// The image decoder (`None` until a VAE is attached: `MODEL/vae` is attached at load).
    pub vae: Option<VaeDecoder>,
    /// The VAE's settings (from `vae/config.json`; SDXL-VAE when absent).
    pub vae_cfg: VaeConfig,
    /// The image processor (`None` when the model has no preprocessor_config.json).
    pub preprocess: Option<Preprocess>,
    pub opts: EngineOptions,
    scratch: Scratch,
    vision_scratch: SiglipScratch,
    uvit_scratch: UvitScratch,
    ids: wgpu::Buffer,
    logits: wgpu::Buffer,
    topk_scratch: wgpu::Buffer,
    topk_out: wgpu::Buffer,
    /// Submit each decode step before the token it feeds is chosen (see [`Engine::decode_next`]).
    pipelined: bool,
    pub counters: std::sync::Mutex<Counters>,
}

impl Engine {
    /// Loads the language model and tokenizer from `src` onto `gpu`. `progress(done, total, what)`.
    /// GPU failures while loading (out of memory, sizes over the adapter's limits) are caught in
    /// error scopes and reported as such; anything else that fails is the weights' fault.
    pub async fn load(gpu: Gpu, src: &ModelSource, opts: EngineOptions, progress: impl FnMut(usize, usize, &str)) -> Result<Self> {
        let oom = gpu.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let invalid = gpu.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let loaded = Self::load_unchecked(gpu, src, opts, progress).await.kind(Kind::BadWeights);
        let invalid = invalid.pop().await;
        if let Some(e) = oom.pop().await {
            fail!(Kind::OutOfMemory, "the GPU ran out of memory while loading the model ({e})");
        }
        if let Some(e) = invalid {
            fail!(Kind::Limits, "the model does not fit this GPU adapter's limits: {e}");
        }
        let engine = loaded?;
        engine.gpu.check_alive()?;
        Ok(engine)
    }

    async fn load_unchecked(gpu: Gpu, src: &ModelSource, opts: EngineOptions, mut progress: impl FnMut(usize, usize, &str)) -> Result<Self> {
        if let Some(p) = src.fixed_preset() {
            if p != opts.preset {
                fail!(Kind::BadInput, "this weight pack holds the {p} preset; run with --quant {p} (or convert again)");
            }
        }
        let mut cfg = src.config()?;
        let vae_cfg = match src.file("vae/config.json").await? {
            Some(bytes) => VaeConfig::from_json(&bytes)?,
            None => VaeConfig::sdxl(),
        };
        cfg.gen.vae_factor = vae_cfg.factor();
        let g = &cfg.gen;
        if g.image_size % g.vae_factor != 0 || g.latent_size() < g.kernel || g.latent_size() % g.kernel != 0 || vae_cfg.latent_channels != g.in_channels {
            bail!(
                "the generation image size {} does not fit the VAE (factor {}, {} latent channels) and the patch size {} (model latent channels {})",
                g.image_size,
                g.vae_factor,
                vae_cfg.latent_channels,
                g.kernel,
                g.in_channels
            );
        }
        let tok_json = src.file("tokenizer.json").await?.ok_or_else(|| anyhow!("tokenizer.json is missing from the model"))?;
        let tok = TextTokenizer::from_bytes(&tok_json)?;
        if tok.vocab_size() > cfg.llm.vocab {
            bail!("the tokenizer has {} tokens but the model only {} embedding rows", tok.vocab_size(), cfg.llm.vocab);
        }
        let preprocess = match src.file("preprocessor_config.json").await? {
            Some(bytes) => Some(Preprocess::from_json(&bytes, cfg.siglip.image_size)?),
            None => None,
        };
        let total = cfg.llm.layers + 4;
        let mut done = 0;
        let l = Loader { gpu: &gpu, src, preset: opts.preset };
        let llm = Llm::load(&l, &cfg.llm, |what| {
            progress(done, total, what);
            done += 1;
        })
        .await?;
        progress(done, total, "vision encoder");
        let siglip = Siglip::load(&l, &cfg.siglip, cfg.llm.hidden).await?;
        let vision_scratch = siglip.new_scratch(&gpu);
        progress(done + 1, total, "generation encoder/decoder");
        let gen_enc = GenEncoder::load(&l, &cfg.gen, cfg.llm.hidden).await?;
        let gen_dec = GenDecoder::load(&l, &cfg.gen, cfg.llm.hidden).await?;
        let uvit_scratch = gen_enc.new_scratch(&gpu, &gen_dec);
        progress(total, total, "ready");
        let opts = EngineOptions { context: opts.context.min(cfg.llm.max_positions).max(1), ..opts };
        let scratch = llm.new_scratch(&gpu, opts.prefill_chunk);
        let ids = gpu.storage_buffer("ids", opts.context as u64 * 4);
        let logits = gpu.storage_buffer("logits", cfg.llm.vocab as u64 * 4);
        let topk_scratch = gpu.storage_buffer("topk-scratch", kernels::topk_scratch_bytes(cfg.llm.vocab));
        let topk_out = gpu.storage_buffer("topk-out", kernels::TOPK_MAX as u64 * 8);
        gpu.check_alive()?;
        let mut engine = Engine {
            gpu,
            cfg,
            tok,
            llm,
            siglip,
            gen_enc,
            gen_dec,
            vae: None,
            vae_cfg,
            preprocess,
            opts,
            scratch,
            vision_scratch,
            uvit_scratch,
            ids,
            logits,
            topk_scratch,
            topk_out,
            pipelined: true,
            counters: Default::default(),
        };
        engine.set_fast(engine.opts.fast);
        if src.pack_has_vae() {
            let vcfg = engine.vae_cfg.clone();
            engine.attach_vae(src, &vcfg).await?;
        }
        #[cfg(not(target_arch = "wasm32"))]
        if let ModelSource::Hf { dir, .. } = src {
            let vae_dir = dir.join("vae");
            if vae_dir.join("config.json").exists() {
                engine.attach_vae_dir(&vae_dir).await?;
            }
        }
        Ok(engine)
    }

    /// Turns the `fast` setting on or off ([`EngineOptions::fast`]): for caches made from now on
    /// (the next chat turn, image question or picture; a conversation's cache in the other format
    /// is rebuilt on its next turn) and for the matrix products recorded from now on.
    pub fn set_fast(&mut self, on: bool) {
        self.opts.fast = on;
        self.llm.kv_format = if on { KvFormat::F16 } else { KvFormat::F32 };
        self.gpu.set_f16_math(on);
    }

    /// Whether the `fast` setting is on.
    pub fn fast(&self) -> bool {
        self.opts.fast
    }

    /// Turns pipelined decoding (on by default) off or on: with it, each decode step is submitted
    /// before the token it feeds is chosen (see [`Engine::decode_next`]). Replies are the same
    /// either way; benchmarks and tests compare the two.
    pub fn set_pipelined(&mut self, on: bool) {
        self.pipelined = on;
    }

    /// Compiles the shaders of a chat turn and of an image question ahead of first use, by
    /// recording one prefill chunk, two decode steps (late and early in the cache), the logits and the image encoder without
    /// submitting anything (pipelines are created while recording), then waits for the device
    /// (browsers compile in another process; a 4-byte readback waits for it). Generation and VAE
    /// kernels compile on their first step. Returns the number of pipelines now compiled.
    /// First, the device's subgroup kernels are checked against the workgroup tree and its
    /// GPU-shape kernels against the CPU-shape ones ([`crate::gpu::selfcheck`]); where they
    /// disagree, subgroups are turned off or the CPU shapes taken, and those pipelines compiled.
    pub async fn compile_kernels(&self) -> Result<usize> {
        crate::gpu::selfcheck::check_device(&self.gpu).await?;
        let chunk = self.opts.prefill_chunk.min(self.opts.context - 1).max(2);
        let cache = self.llm.new_cache(&self.gpu, chunk + 1)?;
        let mut rec = Recorder::new(&self.gpu);
        self.llm.forward(&mut rec, &self.scratch, &cache, Input::Ids(&self.ids, 0), chunk, 0);
        self.llm.forward(&mut rec, &self.scratch, &cache, Input::Ids(&self.ids, chunk), 1, chunk);
        // A decode step early in a chat: on GPUs its attention takes the row kernel, not the split one.
        self.llm.forward(&mut rec, &self.scratch, &cache, Input::Ids(&self.ids, 0), 1, 0);
        self.llm.logits_of_row(&mut rec, &self.scratch, 0, &self.logits);
        kernels::topk(&mut rec, &self.logits, 0, self.cfg.llm.vocab, 64, &self.topk_scratch, &self.topk_out);
        if self.preprocess.is_some() {
            self.encode_image(&mut rec, &Picture::from_rgb8(2, 2, vec![128; 12])?, None)?;
        }
        rec.discard();
        Recorder::new(&self.gpu).finish_and_read(&self.ids, 0, 4).await?;
        Ok(self.gpu.pipeline_count())
    }

    /// Attaches the VAE of a diffusers-layout folder.
    #[cfg(not(target_arch = "wasm32"))]
    pub async fn attach_vae_dir(&mut self, dir: &std::path::Path) -> Result<()> {
        let folder = crate::weights::source::VaeFolder::open(dir)?;
        let cfg = folder.cfg.clone();
        self.attach_vae(&folder, &cfg).await
    }

    /// Attaches the VAE decoder (diffusers tensor names through `get`). Its downsampling factor
    /// sets the latent size, so it must agree with the model's generation geometry.
    pub async fn attach_vae<T: VaeTensors>(&mut self, get: &T, cfg: &VaeConfig) -> Result<()> {
        let g = &self.cfg.gen;
        if g.image_size % cfg.factor() != 0 || (g.image_size / cfg.factor()) % g.kernel != 0 || cfg.latent_channels != g.in_channels {
            bail!(
                "this VAE (factor {}, {} latent channels) does not fit the model's {}-pixel images with {} latent channels",
                cfg.factor(),
                cfg.latent_channels,
                g.image_size,
                g.in_channels
            );
        }
        let vae = VaeDecoder::load(&self.gpu, get, cfg, self.opts.preset).await?;
        if cfg.factor() != self.cfg.gen.vae_factor {
            for g in [&mut self.cfg.gen, &mut self.gen_enc.cfg, &mut self.gen_dec.cfg] {
                g.vae_factor = cfg.factor();
            }
            self.uvit_scratch = self.gen_enc.new_scratch(&self.gpu, &self.gen_dec);
        }
        self.vae_cfg = cfg.clone();
        self.vae = Some(vae);
        Ok(())
    }

    /// Image tokens per image (576 for the real model).
    pub fn image_tokens(&self) -> usize {
        self.cfg.siglip.tokens()
    }

    fn prompt(&self, system: Option<&str>, messages: &[Message]) -> Result<Prompt> {
        match messages.last() {
            Some(m) if m.role == Role::User => {}
            _ => bail!("the conversation must end with a user message"),
        }
        for (i, m) in messages.iter().enumerate() {
            if !m.images.is_empty() && m.placeholders() != m.images.len() {
                bail!(
                    "message {} has {} image(s) but {} <image_placeholder> tag(s); put one tag where each image goes, or none to put them all first",
                    i + 1,
                    m.images.len(),
                    m.placeholders()
                );
            }
        }
        let pictures: Vec<&Arc<Picture>> = messages.iter().flat_map(|m| &m.images).collect();
        if !pictures.is_empty() && self.preprocess.is_none() {
            bail!("this model has no preprocessor_config.json, so it cannot take images");
        }
        let raw = self.tok.encode_pieces(&chat_pieces(&self.tok, system, messages))?;
        let n = self.image_tokens();
        let mut p = Prompt { ids: Vec::with_capacity(raw.len() + pictures.len() * (n + 1)), keys: Vec::new(), images: Vec::new() };
        let mut next = pictures.into_iter();
        for id in raw {
            if id != self.tok.image {
                p.ids.push(id);
                p.keys.push(id as u64);
                continue;
            }
            let pic = next.next().ok_or_else(|| anyhow!("more image tags than images"))?;
            p.images.push((p.ids.len(), pic.clone()));
            p.ids.push(self.tok.boi);
            p.ids.extend(std::iter::repeat_n(self.tok.image, n));
            p.ids.push(self.tok.eoi);
            // The begin slot holds `beg_of_und_embed` whatever the image, so it can be shared.
            p.keys.push(self.tok.boi as u64);
            p.keys.extend((1..=n).map(|j| slot_key(pic.hash, j)));
            p.keys.push(self.tok.eoi as u64);
        }
        if next.next().is_some() {
            bail!("more images than image tags");
        }
        Ok(p)
    }

    fn prompt_ids(&self, system: Option<&str>, messages: &[Message]) -> Result<Vec<u32>> {
        Ok(self.prompt(system, messages)?.ids)
    }

    /// Records the encoder for `pic` into `rec`; returns its splice rows [N + 1, hidden]:
    /// `beg_of_und_embed`, then the aligned features.
    fn encode_image(&self, rec: &mut Recorder, pic: &Picture, tower_out: Option<&wgpu::Buffer>) -> Result<wgpu::Buffer> {
        let pre = self.preprocess.as_ref().ok_or_else(|| anyhow!("this model has no preprocessor_config.json, so it cannot take images"))?;
        let (n, hd) = (self.image_tokens() as u64, self.cfg.llm.hidden as u64);
        let rows = self.gpu.storage_buffer("image-embeds", (n + 1) * hd * 4);
        rec.copy(&self.siglip.begin.buf, 0, &rows, 0, hd * 4);
        self.siglip.forward(rec, &self.vision_scratch, &pre.pixels(pic), &rows, 1, tower_out);
        Ok(rows)
    }

    /// The encoder's output for one image: (SigLIP tower output [N, width] after the final
    /// LayerNorm, aligned features [N, hidden]).
    pub async fn image_features(&self, pic: &Picture) -> Result<(Vec<f32>, Vec<f32>)> {
        let (n, w, hd) = (self.image_tokens(), self.cfg.siglip.width, self.cfg.llm.hidden);
        let tower = self.gpu.storage_buffer("tower-out", (n * w * 4) as u64);
        let mut rec = Recorder::new(&self.gpu);
        let rows = self.encode_image(&mut rec, pic, Some(&tower))?;
        rec.finish();
        Ok((self.gpu.read_f32(&tower, 0, n * w).await?, self.gpu.read_f32(&rows, hd, n * hd).await?))
    }

    /// The language model's input embeddings for the chat prompt of `messages` ([T, hidden]):
    /// token embeddings with the image rows spliced in.
    pub async fn input_embeddings(&self, system: Option<&str>, messages: &[Message]) -> Result<Vec<f32>> {
        let p = self.prompt(system, messages)?;
        self.check_fits(p.ids.len())?;
        let (t, hd) = (p.ids.len(), self.cfg.llm.hidden);
        self.gpu.queue.write_buffer(&self.ids, 0, bytemuck::cast_slice(&p.ids));
        let out = self.gpu.storage_buffer("embeds", (t * hd * 4) as u64);
        let mut rec = Recorder::new(&self.gpu);
        let feats = p.images.iter().map(|(boi, pic)| Ok((*boi, self.encode_image(&mut rec, pic, None)?))).collect::<Result<Vec<_>>>()?;
        let splices = self.splices(&feats, 0, t);
        self.llm.embed(&mut rec, &Input::Spliced(&self.ids, 0, &splices), t, &out, 0, None);
        rec.finish();
        self.gpu.read_f32(&out, 0, t * hd).await
    }

    /// The image rows that fall into prompt positions `pos .. pos + t`.
    fn splices<'b>(&self, feats: &'b [(usize, wgpu::Buffer)], pos: usize, t: usize) -> Vec<Splice<'b>> {
        let span = self.image_tokens() + 1;
        feats
            .iter()
            .filter_map(|(boi, buf)| {
                let (lo, hi) = ((*boi).max(pos), (boi + span).min(pos + t));
                (lo < hi).then(|| Splice { row: lo - pos, src: buf, src_row: lo - boi, rows: hi - lo })
            })
            .collect()
    }

    fn check_fits(&self, n: usize) -> Result<()> {
        if n >= self.opts.context {
            fail!(
                Kind::BadInput,
                "the conversation is {n} tokens long, which does not fit the context of {} tokens (with room for a reply); \
                 start a new conversation or shorten the messages",
                self.opts.context
            );
        }
        Ok(())
    }

    /// Prefills `ids[from..]` (the cache already holds ids[..from]) and returns the top candidates
    /// of the last position's logits.
    /// Images whose slots start before `from` are already in the cache and are not encoded again.
    pub(crate) async fn prefill(&self, cache: &mut KvCache, p: &Prompt, from: usize, k: usize) -> Result<Vec<(f32, u32)>> {
        let ids = &p.ids;
        self.check_fits(ids.len())?;
        self.gpu.queue.write_buffer(&self.ids, 0, bytemuck::cast_slice(ids));
        cache.keys.truncate(from);
        let span = self.image_tokens() + 1;
        let mut pos = from;
        let mut rec = Recorder::new(&self.gpu);
        // Encoders first, in the same submit as the first prefill chunk.
        let feats = p
            .images
            .iter()
            .filter(|(boi, _)| boi + span > from)
            .map(|(boi, pic)| Ok((*boi, self.encode_image(&mut rec, pic, None)?)))
            .collect::<Result<Vec<_>>>()?;
        loop {
            let t = self.opts.prefill_chunk.min(ids.len() - pos);
            let splices = self.splices(&feats, pos, t);
            self.llm.forward(&mut rec, &self.scratch, cache, Input::Spliced(&self.ids, pos, &splices), t, pos);
            cache.keys.extend_from_slice(&p.keys[pos..pos + t]);
            pos += t;
            if pos == ids.len() {
                return self.finish_step(rec, t - 1, k).await;
            }
            rec.flush();
            self.count(&rec, 0);
            rec = Recorder::new(&self.gpu);
        }
    }

    fn count(&self, rec: &Recorder<'_>, read: u64) {
        let mut c = self.counters.lock().unwrap();
        c.submits += rec.submits;
        c.dispatches += rec.dispatches;
        c.bytes_read_back += read;
    }

    /// Logits of scratch row `row`, top-k on the GPU, and the only readback of the step.
    async fn finish_step(&self, mut rec: Recorder<'_>, row: usize, k: usize) -> Result<Vec<(f32, u32)>> {
        let staging = self.record_candidates(&mut rec, row, k);
        rec.flush();
        self.count(&rec, 0);
        self.read_candidates(&staging, map_start(&staging), None).await
    }

    /// Records the logits of scratch row `row` and their top `k` on the GPU, copied into the
    /// returned buffer for [`Engine::read_candidates`].
    fn record_candidates(&self, rec: &mut Recorder<'_>, row: usize, k: usize) -> wgpu::Buffer {
        self.llm.logits_of_row(rec, &self.scratch, row, &self.logits);
        kernels::topk(rec, &self.logits, 0, self.cfg.llm.vocab, k, &self.topk_scratch, &self.topk_out);
        rec.read_back(&self.topk_out, 0, k as u64 * 8)
    }

    /// Waits for the step that fills `staging` (submission `index` where known; its map requested
    /// as `mapping`) and returns its (logit, id) candidates, best first.
    async fn read_candidates(&self, staging: &wgpu::Buffer, mapping: Mapping, index: Option<wgpu::SubmissionIndex>) -> Result<Vec<(f32, u32)>> {
        let bytes = map_finish(&self.gpu, staging, mapping, index).await?;
        self.counters.lock().unwrap().bytes_read_back += bytes.len() as u64;
        let words: Vec<u32> = bytemuck::pod_collect_to_vec(&bytes);
        Ok(words.chunks_exact(2).map(|p| (f32::from_bits(p[0]), p[1])).collect())
    }

    /// Records the decode step at cache position `pos` and its `k` candidates, everything but the
    /// token id, which is read from `ids[pos]` when it runs; its best candidate is then copied to
    /// `ids[pos + 1]`, the id a step submitted ahead of the choice is fed.
    fn record_decode(&self, cache: &KvCache, pos: usize, k: usize) -> Result<DecodeStep<'_>> {
        if pos >= self.opts.context.min(cache.capacity) {
            bail!("the context of {} tokens is full", self.opts.context.min(cache.capacity));
        }
        let mut rec = Recorder::ahead(&self.gpu, &cache.binds);
        self.llm.forward(&mut rec, &self.scratch, cache, Input::Ids(&self.ids, pos), 1, pos);
        let staging = self.record_candidates(&mut rec, 0, k);
        if pos + 1 < self.opts.context {
            // topk_out holds (logit, id) pairs, best first.
            rec.copy(&self.topk_out, 4, &self.ids, (pos as u64 + 1) * 4, 4);
        }
        Ok(DecodeStep { work: Some(rec.prepare()), pos, k, staging, submitted: None, fed: None })
    }

    /// Submits a recorded step, counting it.
    fn submit_step(&self, step: &mut DecodeStep<'_>) {
        if let Some(work) = step.work.take() {
            let mut c = self.counters.lock().unwrap();
            c.submits += 1;
            c.dispatches += work.dispatches();
            drop(c);
            step.submitted = work.submit();
        }
    }

    /// Feeds token `id` at the next cache position and returns the next candidates.
    ///
    /// `ahead` carries the step after this one from call to call. With `more`, it is recorded
    /// while this one runs and, pipelined (the default), submitted at once: the GPU feeds it this
    /// step's best candidate, so it runs while the host reads this step's candidates back and
    /// samples. When the sampler then chooses that token (always when greedy), the step is already
    /// done or running and nothing stands between two tokens on the GPU; when it chooses another,
    /// the step is redone with that token (queue order runs it after the wrong one, whose cache
    /// row and scratch it overwrites; the cache never counts an unconfirmed token). A step is
    /// only sent ahead after a token that was its step's best, so a sampler that keeps straying
    /// wastes little. Not pipelined, only the id write, the submit and the readback stand between
    /// two tokens.
    pub(crate) async fn decode_next<'e>(
        &'e self,
        cache: &mut KvCache,
        id: u32,
        k: usize,
        ahead: &mut Option<DecodeStep<'e>>,
        more: bool,
    ) -> Result<Vec<(f32, u32)>> {
        let pos = cache.len();
        let prior = ahead.take().filter(|s| s.pos == pos && s.k == k);
        // Whether `id` was the best candidate of the step that offered it (unknown after prefill).
        let best = prior.as_ref().and_then(|s| s.fed).is_none_or(|b| b == id);
        let mut step = match prior {
            // Sent ahead and fed this very token on the GPU: running or done.
            Some(s) if s.work.is_none() && s.fed == Some(id) => s,
            prior => {
                let mut s = match prior {
                    // Recorded ahead, not sent yet.
                    Some(s) if s.work.is_some() => s,
                    // Sent ahead with another token: redone with this one.
                    Some(_) => {
                        self.counters.lock().unwrap().fed_misses += 1;
                        self.record_decode(cache, pos, k)?
                    }
                    None => self.record_decode(cache, pos, k)?,
                };
                self.gpu.queue.write_buffer(&self.ids, pos as u64 * 4, bytemuck::bytes_of(&id));
                self.submit_step(&mut s);
                s
            }
        };
        cache.keys.push(id as u64);
        // The readback is requested before the next step is submitted (see `map_start`).
        let mapping = map_start(&step.staging);
        if more && pos + 1 < self.opts.context.min(cache.capacity) {
            let mut next = self.record_decode(cache, pos + 1, k)?;
            if self.pipelined && best {
                self.counters.lock().unwrap().fed_steps += 1;
                self.submit_step(&mut next);
            }
            *ahead = Some(next);
        }
        let cands = self.read_candidates(&step.staging, mapping, step.submitted.take()).await?;
        if let Some(next) = ahead.as_mut() {
            next.fed = cands.first().map(|c| c.1);
        }
        Ok(cands)
    }

    /// Answers the last user message of `conv`, streaming text through `on_text` (return false to
    /// stop), and appends the reply to the conversation. K/V of the shared prefix are reused.
    pub async fn chat(&mut self, conv: &mut Conversation, params: &SamplingParams, mut on_text: impl FnMut(&str) -> bool) -> Result<Reply> {
        self.gpu.check_alive()?;
        crate::gpu::selfcheck::check_device(&self.gpu).await?;
        params.validate()?;
        let prompt = self.prompt(conv.system.as_deref(), &conv.messages).kind(Kind::BadInput)?;
        self.check_fits(prompt.ids.len())?;
        // A cache kept from an earlier turn is reused unless the `fast` setting changed since.
        let mut cache = match conv.cache.take() {
            Some(c) if c.format == self.llm.kv_format => c,
            _ => {
                let oom = self.gpu.oom_scope();
                let cache = self.llm.new_cache(&self.gpu, self.opts.context)?;
                let n = self.opts.context;
                oom.check(&format!("the attention cache of a {n}-token context (try the fast setting, which halves it)")).await?;
                cache
            }
        };
        let result = self.generate(&mut cache, &prompt, params, &mut on_text).await;
        // A turn that failed may have left the cache half-written: the next one starts afresh.
        conv.cache = result.is_ok().then_some(cache);
        let reply = result?;
        conv.messages.push(Message::assistant(reply.text.clone()));
        Ok(reply)
    }

    async fn generate(&self, cache: &mut KvCache, prompt: &Prompt, params: &SamplingParams, on_text: &mut dyn FnMut(&str) -> bool) -> Result<Reply> {
        let ids = &prompt.ids;
        let common = cache.keys.iter().zip(&prompt.keys).take_while(|(a, b)| a == b).count().min(ids.len() - 1);
        let k = params.candidates();
        let mut cands = self.prefill(cache, prompt, common, k).await?;
        let mut sampler = Sampler::new(params.clone());
        let mut stream = StreamDecoder::new();
        let mut out = Vec::new();
        // The next decode step, recorded while the current one runs on the GPU.
        let mut ahead = None;
        let finish = loop {
            let id = sampler.pick(&cands);
            if id == self.tok.eos {
                break FinishReason::Stop;
            }
            out.push(id);
            if let Some(text) = stream.push(&self.tok, id)? {
                if !on_text(&text) {
                    break FinishReason::Cancelled;
                }
            }
            if out.len() >= params.max_tokens {
                break FinishReason::Length;
            }
            if cache.len() >= cache.capacity {
                break FinishReason::Context;
            }
            cands = self.decode_next(cache, id, k, &mut ahead, out.len() + 1 < params.max_tokens).await?;
        };
        let text = stream.text(&self.tok)?;
        Ok(Reply { text: text.trim_end_matches('\u{FFFD}').to_string(), ids: out, finish, prompt_tokens: ids.len(), reused_tokens: common })
    }

    /// Token ids of the chat prompt for `messages`.
    pub fn encode_chat(&self, system: Option<&str>, messages: &[Message]) -> Result<Vec<u32>> {
        self.prompt_ids(system, messages)
    }

    /// Last-position logits after prefilling the chat prompt of `messages` (fresh cache).
    /// Teacher-forced next-token logits at every position of `ids` ([ids.len(), vocab], row i
    /// predicting token i + 1): how quality figures compare presets over a text.
    pub async fn logits_at_every_position(&self, ids: &[u32]) -> Result<Vec<f32>> {
        self.check_fits(ids.len())?;
        let vocab = self.cfg.llm.vocab;
        if let Some(&bad) = ids.iter().find(|&&i| i as usize >= vocab) {
            fail!(Kind::BadInput, "token id {bad} is outside the vocabulary ({vocab})");
        }
        self.gpu.queue.write_buffer(&self.ids, 0, bytemuck::cast_slice(ids));
        let cache = self.llm.new_cache(&self.gpu, ids.len())?;
        // Rows of logits per chunk: one binding of them stays within the binding limit.
        let fit = (self.gpu.max_binding() / (vocab as u64 * 4)).max(1) as usize;
        let chunk = self.opts.prefill_chunk.min(fit).min(ids.len().max(1));
        let logits = self.gpu.storage_buffer("logits-all", (chunk * vocab * 4) as u64);
        let mut out = Vec::with_capacity(ids.len() * vocab);
        let mut pos = 0;
        while pos < ids.len() {
            let t = chunk.min(ids.len() - pos);
            let mut rec = Recorder::new(&self.gpu);
            self.llm.forward(&mut rec, &self.scratch, &cache, Input::Spliced(&self.ids, pos, &[]), t, pos);
            self.llm.logits_of_rows(&mut rec, &self.scratch, t, &logits);
            let bytes = rec.finish_and_read(&logits, 0, (t * vocab * 4) as u64).await?;
            out.extend_from_slice(&bytemuck::pod_collect_to_vec::<u8, f32>(&bytes));
            pos += t;
        }
        Ok(out)
    }

    /// The greedy continuation of `ids` (the decode path token by token), stopping after `max`
    /// tokens or at `stop` (not included): how quality checks compare presets' replies.
    pub async fn greedy_ids(&self, ids: &[u32], max: usize, stop: u32) -> Result<Vec<u32>> {
        self.check_fits(ids.len() + max)?;
        let mut cache = self.llm.new_cache(&self.gpu, ids.len() + max)?;
        let mut best = self.prefill(&mut cache, &Prompt::from_ids(ids.to_vec()), 0, 1).await?;
        let mut out = Vec::new();
        let mut ahead = None;
        while out.len() < max && best[0].1 != stop {
            out.push(best[0].1);
            best = self.decode_next(&mut cache, best[0].1, 1, &mut ahead, out.len() < max).await?;
        }
        Ok(out)
    }

    pub async fn logits(&self, system: Option<&str>, messages: &[Message]) -> Result<Vec<f32>> {
        let prompt = self.prompt(system, messages)?;
        self.check_fits(prompt.ids.len())?;
        let mut cache = self.llm.new_cache(&self.gpu, prompt.ids.len())?;
        self.prefill(&mut cache, &prompt, 0, 1).await?;
        self.gpu.read_f32(&self.logits, 0, self.cfg.llm.vocab).await
    }
}

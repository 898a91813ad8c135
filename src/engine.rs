//! One object that owns the device, the loaded model and the scratch buffers; chat and logits.
//! Native front ends and the wasm API both drive this.

use anyhow::{anyhow, bail, Result};

use crate::config::JanusConfig;
use crate::gpu::kernels;
use crate::gpu::{Gpu, Recorder};
use crate::model::llm::{Input, KvCache, Llm, Scratch};
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
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions { preset: Quant::Q4, context: 4096, prefill_chunk: 256 }
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
            c.tokens.clear();
        }
    }
}

pub struct Engine {
    pub gpu: Gpu,
    pub cfg: JanusConfig,
    pub tok: TextTokenizer,
    pub llm: Llm,
    pub opts: EngineOptions,
    scratch: Scratch,
    ids: wgpu::Buffer,
    logits: wgpu::Buffer,
    topk_scratch: wgpu::Buffer,
    topk_out: wgpu::Buffer,
    pub counters: std::sync::Mutex<Counters>,
}

impl Engine {
    /// Loads the language model and tokenizer from `src` onto `gpu`. `progress(done, total, what)`.
    pub fn load(gpu: Gpu, src: &ModelSource, opts: EngineOptions, mut progress: impl FnMut(usize, usize, &str)) -> Result<Self> {
        if let Some(p) = src.fixed_preset() {
            if p != opts.preset {
                bail!("this weight pack holds the {p} preset; run with --quant {p} (or convert again)");
            }
        }
        let cfg = src.config()?;
        let tok_json = src.file("tokenizer.json")?.ok_or_else(|| anyhow!("tokenizer.json is missing from the model"))?;
        let tok = TextTokenizer::from_bytes(&tok_json)?;
        if tok.vocab_size() > cfg.llm.vocab {
            bail!("the tokenizer has {} tokens but the model only {} embedding rows", tok.vocab_size(), cfg.llm.vocab);
        }
        let total = cfg.llm.layers + 2;
        let mut done = 0;
        let llm = Llm::load(&gpu, src, &cfg.llm, opts.preset, |what| {
            progress(done, total, what);
            done += 1;
        })?;
        progress(total, total, "ready");
        let opts = EngineOptions { context: opts.context.min(cfg.llm.max_positions).max(1), ..opts };
        let scratch = llm.new_scratch(&gpu, opts.prefill_chunk);
        let ids = gpu.storage_buffer("ids", opts.context as u64 * 4);
        let logits = gpu.storage_buffer("logits", cfg.llm.vocab as u64 * 4);
        let topk_scratch = gpu.storage_buffer("topk-scratch", kernels::topk_scratch_bytes(cfg.llm.vocab));
        let topk_out = gpu.storage_buffer("topk-out", kernels::TOPK_MAX as u64 * 8);
        gpu.check_alive()?;
        Ok(Engine { gpu, cfg, tok, llm, opts, scratch, ids, logits, topk_scratch, topk_out, counters: Default::default() })
    }

    fn prompt_ids(&self, system: Option<&str>, messages: &[Message]) -> Result<Vec<u32>> {
        match messages.last() {
            Some(m) if m.role == Role::User => {}
            _ => bail!("the conversation must end with a user message"),
        }
        if messages.iter().any(|m| m.images > 0) {
            bail!("image input is not supported by this engine build yet");
        }
        self.tok.encode_pieces(&chat_pieces(&self.tok, system, messages))
    }

    fn check_fits(&self, n: usize) -> Result<()> {
        if n >= self.opts.context {
            bail!(
                "the conversation is {n} tokens long, which does not fit the context of {} tokens (with room for a reply); \
                 start a new conversation or shorten the messages",
                self.opts.context
            );
        }
        Ok(())
    }

    /// Prefills `ids[from..]` (the cache already holds ids[..from]) and returns the top candidates
    /// of the last position's logits.
    pub(crate) async fn prefill(&self, cache: &mut KvCache, ids: &[u32], from: usize, k: usize) -> Result<Vec<(f32, u32)>> {
        self.gpu.queue.write_buffer(&self.ids, 0, bytemuck::cast_slice(ids));
        cache.tokens.truncate(from);
        let mut pos = from;
        loop {
            let t = self.opts.prefill_chunk.min(ids.len() - pos);
            let mut rec = Recorder::new(&self.gpu);
            self.llm.forward(&mut rec, &self.scratch, cache, Input::Ids(&self.ids, pos), t, pos);
            cache.tokens.extend_from_slice(&ids[pos..pos + t]);
            pos += t;
            if pos == ids.len() {
                return self.finish_step(rec, t - 1, k).await;
            }
            rec.flush();
            self.count(&rec, 0);
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
        self.llm.logits_of_row(&mut rec, &self.scratch, row, &self.logits);
        kernels::topk(&mut rec, &self.logits, 0, self.cfg.llm.vocab, k, &self.topk_scratch, &self.topk_out);
        let (submits, dispatches) = (rec.submits + 1, rec.dispatches);
        let bytes = rec.finish_and_read(&self.topk_out, 0, k as u64 * 8).await?;
        {
            let mut c = self.counters.lock().unwrap();
            c.submits += submits;
            c.dispatches += dispatches;
            c.bytes_read_back += bytes.len() as u64;
        }
        let words: Vec<u32> = bytemuck::pod_collect_to_vec(&bytes);
        Ok(words.chunks_exact(2).map(|p| (f32::from_bits(p[0]), p[1])).collect())
    }

    /// Feeds one token at `pos` and returns the next candidates.
    pub(crate) async fn decode_step(&self, cache: &mut KvCache, id: u32, k: usize) -> Result<Vec<(f32, u32)>> {
        let pos = cache.len();
        self.gpu.queue.write_buffer(&self.ids, pos as u64 * 4, bytemuck::bytes_of(&id));
        let mut rec = Recorder::new(&self.gpu);
        self.llm.forward(&mut rec, &self.scratch, cache, Input::Ids(&self.ids, pos), 1, pos);
        cache.tokens.push(id);
        self.finish_step(rec, 0, k).await
    }

    /// Answers the last user message of `conv`, streaming text through `on_text` (return false to
    /// stop), and appends the reply to the conversation. K/V of the shared prefix are reused.
    pub async fn chat(&mut self, conv: &mut Conversation, params: &SamplingParams, mut on_text: impl FnMut(&str) -> bool) -> Result<Reply> {
        self.gpu.check_alive()?;
        let ids = self.prompt_ids(conv.system.as_deref(), &conv.messages)?;
        self.check_fits(ids.len())?;
        let mut cache = match conv.cache.take() {
            Some(c) => c,
            None => self.llm.new_cache(&self.gpu, self.opts.context)?,
        };
        let result = self.generate(&mut cache, &ids, params, &mut on_text).await;
        conv.cache = Some(cache);
        let reply = result?;
        conv.messages.push(Message::assistant(reply.text.clone()));
        Ok(reply)
    }

    async fn generate(&self, cache: &mut KvCache, ids: &[u32], params: &SamplingParams, on_text: &mut dyn FnMut(&str) -> bool) -> Result<Reply> {
        let common = cache.tokens.iter().zip(ids).take_while(|(a, b)| a == b).count().min(ids.len() - 1);
        let k = params.candidates();
        let mut cands = self.prefill(cache, ids, common, k).await?;
        let mut sampler = Sampler::new(params.clone());
        let mut stream = StreamDecoder::new();
        let mut out = Vec::new();
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
            cands = self.decode_step(cache, id, k).await?;
        };
        let text = stream.text(&self.tok)?;
        Ok(Reply { text: text.trim_end_matches('\u{FFFD}').to_string(), ids: out, finish, prompt_tokens: ids.len(), reused_tokens: common })
    }

    /// Token ids of the chat prompt for `messages`.
    pub fn encode_chat(&self, system: Option<&str>, messages: &[Message]) -> Result<Vec<u32>> {
        self.prompt_ids(system, messages)
    }

    /// Last-position logits after prefilling the chat prompt of `messages` (fresh cache).
    pub async fn logits(&self, system: Option<&str>, messages: &[Message]) -> Result<Vec<f32>> {
        let ids = self.prompt_ids(system, messages)?;
        self.check_fits(ids.len())?;
        let mut cache = self.llm.new_cache(&self.gpu, ids.len())?;
        self.prefill(&mut cache, &ids, 0, 1).await?;
        self.gpu.read_f32(&self.logits, 0, self.cfg.llm.vocab).await
    }
}

//! DeepSeek-LLM-1.3B in Hugging Face Llama layout: pre-norm decoder layers with rotate-half RoPE,
//! causal multi-head attention over a KV cache, and a SwiGLU MLP (spec §1.3).

use std::sync::Arc;

use anyhow::{bail, Result};

use super::Loader;
use crate::config::LlmConfig;
use crate::gpu::kernels::{self, AttnShape, Fused, Kv, KvFormat, NormCopy, NormIn, Out, RopeSeq, View};
use crate::gpu::{BindCache, Gpu, Recorder, Tensor, Weight};
use crate::weights::quant::QuantBlob;

pub struct Layer {
    pub input_norm: Tensor,
    /// q_proj, k_proj and v_proj stacked [3·hidden, hidden] in `kernels::qkv_row_order`: one
    /// product for all three.
    pub qkv: Arc<Weight>,
    pub o: Arc<Weight>,
    pub post_norm: Tensor,
    /// gate_proj and up_proj rows interleaved [2·intermediate, hidden] (gate_j, up_j): one
    /// product whose neighbouring outputs meet in the SwiGLU.
    pub gate_up: Arc<Weight>,
    pub down: Arc<Weight>,
}

impl Layer {
    /// The layer's matrices (for byte counts and tests).
    pub fn weights(&self) -> [&Arc<Weight>; 4] {
        [&self.qkv, &self.o, &self.gate_up, &self.down]
    }
}

pub struct Llm {
    pub cfg: LlmConfig,
    pub embed: Arc<Weight>,
    pub layers: Vec<Layer>,
    pub norm: Tensor,
    pub lm_head: Arc<Weight>,
    /// cos/sin for positions 0..max_positions, [pos, head_dim/2] pairs.
    rope: Tensor,
    /// Every layer's Q|K|V and gate|up chunks keep their row pairs whole, so a decoded token can
    /// take the fused schedule (`decode_layer`); known once the weights are uploaded.
    fused_decode: bool,
    /// How new KV caches store keys and values: f32 (exact), or f16 with the opt-in `fast`
    /// setting (half the memory and half the bytes decode attention reads).
    pub kv_format: KvFormat,
}

/// Keys and values of every layer for positions 0..len, plus what each position was computed
/// from (so a later turn can reuse the longest common prefix).
pub struct KvCache {
    pub k: Vec<wgpu::Buffer>,
    pub v: Vec<wgpu::Buffer>,
    pub format: KvFormat,
    pub capacity: usize,
    /// Identity of each cached position: the token id, or for image slots a fingerprint of the
    /// image and the slot (placeholder ids alone would make different images look equal).
    pub keys: Vec<u64>,
    /// Bind groups of decode steps over this cache, reused token after token (they bind its
    /// buffers, so they live and die with it).
    pub binds: BindCache,
}

impl KvCache {
    pub fn len(&self) -> usize {
        self.keys.len()
    }
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
    pub fn bytes(&self) -> u64 {
        self.k.iter().chain(&self.v).map(|b| b.size()).sum()
    }
    /// Layer `l`'s caches.
    pub fn layer(&self, l: usize) -> Kv<'_> {
        Kv { k: &self.k[l], v: &self.v[l], format: self.format }
    }
}

/// Activation buffers for up to `rows` tokens at once.
pub struct Scratch {
    pub rows: usize,
    pub x: wgpu::Buffer,    // [rows, hidden] residual stream
    pub h: wgpu::Buffer,    // [rows, hidden] normed
    pub qkv: wgpu::Buffer,  // [rows, 3·hidden] stacked q|k|v before RoPE
    pub q: wgpu::Buffer,    // [rows, hidden]
    pub attn: wgpu::Buffer, // [rows, hidden]
    pub gu: wgpu::Buffer,   // [rows, 2·intermediate] interleaved gate|up
    pub m: wgpu::Buffer,    // [rows, intermediate] silu(gate)·up
    pub ssq: wgpu::Buffer,  // [hidden / 4] decoding: Σ x² of each 4 residual elements (NormCopy)
}

/// One sequence of a batched forward pass: `rows` new tokens with RoPE positions `pos0..`,
/// their K/V written to cache slots `slot0..` (slots and positions differ when a row skips
/// positions, like the unconditional row of guided generation).
pub struct Seq<'a> {
    pub cache: &'a KvCache,
    pub rows: usize,
    pub slot0: usize,
    pub pos0: usize,
}

/// What the first layer reads.
pub enum Input<'a> {
    /// Token ids in `ids[off .. off + t]`.
    Ids(&'a wgpu::Buffer, usize),
    /// Token ids whose embeddings are then partly overwritten by `splices` (image features).
    Spliced(&'a wgpu::Buffer, usize, &'a [Splice<'a>]),
    /// Ready embeddings [t, hidden] at element offset `off` (generation tokens).
    Embeds(&'a wgpu::Buffer, usize),
}

impl Input<'_> {
    /// Whether every row is a token-table gather (no image features, no ready embeddings).
    fn gathers_only(&self) -> bool {
        match self {
            Input::Ids(..) => true,
            Input::Spliced(_, _, splices) => splices.is_empty(),
            Input::Embeds(..) => false,
        }
    }
}

/// `rows` embedding rows taken from `src` (row `src_row` on, rows of `hidden`) instead of the
/// token table, starting at row `row` of the pass.
#[derive(Clone, Copy)]
pub struct Splice<'a> {
    pub row: usize,
    pub src: &'a wgpu::Buffer,
    pub src_row: usize,
    pub rows: usize,
}

impl Llm {
    pub async fn load(l: &Loader<'_>, cfg: &LlmConfig, mut progress: impl FnMut(&str)) -> Result<Self> {
        let gpu = l.gpu;
        let (h, i) = (cfg.hidden, cfg.intermediate);
        let p = "language_model.model";
        progress("embed_tokens");
        let embed = l.mat(&format!("{p}.embed_tokens.weight"), &[cfg.vocab, h]).await?;
        let mut layers = Vec::with_capacity(cfg.layers);
        let blob = |name: String, shape: [usize; 2]| async move { l.src.blob(&name, &shape, l.preset).await };
        for li in 0..cfg.layers {
            progress(&format!("layer {li}"));
            let q = format!("{p}.layers.{li}");
            let (wq, wk, wv) = (
                blob(format!("{q}.self_attn.q_proj.weight"), [h, h]).await?,
                blob(format!("{q}.self_attn.k_proj.weight"), [h, h]).await?,
                blob(format!("{q}.self_attn.v_proj.weight"), [h, h]).await?,
            );
            let qkv = QuantBlob::from_rows(&[&wq, &wk, &wv], kernels::qkv_row_order(h, cfg.head_dim))?;
            drop((wq, wk, wv));
            let (wg, wu) = (blob(format!("{q}.mlp.gate_proj.weight"), [i, h]).await?, blob(format!("{q}.mlp.up_proj.weight"), [i, h]).await?);
            let gate_up = QuantBlob::from_rows(&[&wg, &wu], (0..2 * i).map(|r| (r % 2, r / 2)))?;
            drop((wg, wu));
            layers.push(Layer {
                input_norm: l.vector(&format!("{q}.input_layernorm.weight"), h).await?,
                qkv: Weight::upload(gpu, &format!("{q}.self_attn.qkv"), &qkv)?,
                o: l.mat(&format!("{q}.self_attn.o_proj.weight"), &[h, h]).await?,
                post_norm: l.vector(&format!("{q}.post_attention_layernorm.weight"), h).await?,
                gate_up: Weight::upload(gpu, &format!("{q}.mlp.gate_up"), &gate_up)?,
                down: l.mat(&format!("{q}.mlp.down_proj.weight"), &[h, i]).await?,
            });
        }
        progress("lm_head");
        let norm = l.vector(&format!("{p}.norm.weight"), h).await?;
        let lm_head = l.mat("language_model.lm_head.weight", &[cfg.vocab, h]).await?;
        let rope = Tensor::from_f32(gpu, "rope", &[cfg.max_positions, cfg.head_dim], &rope_table(cfg.max_positions, cfg.head_dim, cfg.rope_theta));
        // Q|K|V's epilogue takes two rotation pairs at a time (kv_cache.wgsl; head dims are
        // multiples of 4, config.rs checks).
        let fused_decode = layers.iter().all(|l| kernels::whole_quads(&l.qkv) && kernels::pairs_fusable(&l.gate_up));
        Ok(Llm { cfg: cfg.clone(), embed, layers, norm, lm_head, rope, fused_decode, kv_format: KvFormat::F32 })
    }

    /// Resident weight bytes.
    pub fn weight_bytes(&self) -> u64 {
        let l: u64 = self.layers.iter().map(|l| l.weights().iter().map(|w| w.bytes()).sum::<u64>()).sum();
        l + self.embed.bytes() + self.lm_head.bytes() + (self.cfg.layers as u64 * 2 + 1) * self.cfg.hidden as u64 * 4
    }

    /// Weight bytes one decoded token reads: every layer matrix, the norms, one embedding row and
    /// the whole lm_head.
    pub fn weight_bytes_per_token(&self) -> u64 {
        self.weight_bytes() - self.embed.bytes() + self.embed.bytes() / self.cfg.vocab as u64
    }

    pub fn new_cache(&self, gpu: &Gpu, capacity: usize) -> Result<KvCache> {
        let capacity = capacity.min(self.cfg.max_positions);
        let bytes = capacity as u64 * self.cfg.hidden as u64 * self.kv_format.bytes();
        if bytes > gpu.max_binding() {
            bail!("a context of {capacity} tokens needs {bytes} bytes per layer cache, over the GPU's binding limit");
        }
        let mk = |kind: &str| (0..self.cfg.layers).map(|l| gpu.storage_buffer(&format!("{kind}{l}"), bytes)).collect();
        Ok(KvCache { k: mk("k"), v: mk("v"), format: self.kv_format, capacity, keys: Vec::new(), binds: BindCache::default() })
    }

    pub fn new_scratch(&self, gpu: &Gpu, rows: usize) -> Scratch {
        let (h, i) = (self.cfg.hidden as u64 * 4, self.cfg.intermediate as u64 * 4);
        let r = rows as u64;
        Scratch {
            rows,
            x: gpu.storage_buffer("x", r * h),
            h: gpu.storage_buffer("h", r * h),
            qkv: gpu.storage_buffer("qkv", r * 3 * h),
            q: gpu.storage_buffer("q", r * h),
            attn: gpu.storage_buffer("attn", r * h),
            gu: gpu.storage_buffer("gate-up", r * 2 * i),
            m: gpu.storage_buffer("m", r * i),
            ssq: gpu.storage_buffer("ssq", h / 4),
        }
    }

    /// Runs `t` tokens at positions pos0.. through every layer, appending their K/V to the cache
    /// layers. Leaves the residual stream (before the final norm) in `s.x` rows 0..t.
    pub fn forward(&self, rec: &mut Recorder, s: &Scratch, cache: &KvCache, input: Input, t: usize, pos0: usize) {
        self.forward_seqs(rec, s, input, &[Seq { cache, rows: t, slot0: pos0, pos0 }]);
    }

    /// Runs several independent sequences through every layer as one batch: the matrix products
    /// see all rows at once (weights read once), while each sequence writes its K/V into its own
    /// cache and attends causally over it. Rows of `input` are the sequences' rows in order.
    pub fn forward_seqs(&self, rec: &mut Recorder, s: &Scratch, input: Input, seqs: &[Seq]) {
        let c = &self.cfg;
        let hd = c.hidden;
        let t: usize = seqs.iter().map(|q| q.rows).sum();
        assert!(t <= s.rows && seqs.iter().all(|q| q.slot0 + q.rows <= q.cache.capacity && q.pos0 + q.rows <= c.max_positions));
        // A single decoded token takes the fused schedule (see `decode_layer`).
        let decode = match seqs {
            [q] if t == 1 && input.gathers_only() && self.fused_decode => Some(q),
            _ => None,
        };
        if let Some(q) = decode {
            let first = NormCopy { g: &self.layers[0].input_norm.buf, yg: &s.h, ssq: &s.ssq };
            self.embed(rec, &input, t, &s.x, 0, self.prescaled_norms().then_some(first));
            for (l, layer) in self.layers.iter().enumerate() {
                let next = self.layers.get(l + 1).map(|n| &n.input_norm.buf);
                self.decode_layer(rec, s, layer, next, q.cache.layer(l), q.slot0, q.pos0);
            }
            return;
        }
        self.embed(rec, &input, t, &s.x, 0, None);
        for (l, layer) in self.layers.iter().enumerate() {
            kernels::rmsnorm(rec, &s.x, 0, t, hd, &layer.input_norm.buf, c.rms_eps, &s.h, 0);
            let rope: Vec<RopeSeq> = seqs.iter().map(|q| RopeSeq { kv: q.cache.layer(l), rows: q.rows, pos0: q.pos0, slot0: q.slot0 }).collect();
            kernels::linear_rope(rec, &layer.qkv, &s.h, 0, c.heads, c.head_dim, &self.rope.buf, &rope, &s.qkv, &s.q);
            let mut row0 = 0;
            for q in seqs {
                let (kv, n) = (q.cache.layer(l), q.rows);
                // The causal mask is over cache slots: row i sees slots 0 ..= slot0 + i.
                let shape = AttnShape {
                    t: n,
                    heads: c.heads,
                    head_dim: c.head_dim,
                    causal_pos0: Some(q.slot0),
                    n_keys: q.slot0 + n,
                    q_stride: hd,
                    kv_stride: hd,
                    o_stride: hd,
                    kv: kv.format,
                };
                kernels::attention(rec, shape, View::at(&s.q, row0 * hd), View::at(kv.k, 0), View::at(kv.v, 0), View::at(&s.attn, row0 * hd));
                row0 += n;
            }
            kernels::linear(rec, &layer.o, None, &s.attn, 0, t, Out { buf: &s.x, off: 0, stride: hd, add: true });
            kernels::rmsnorm(rec, &s.x, 0, t, hd, &layer.post_norm.buf, c.rms_eps, &s.h, 0);
            kernels::linear_swiglu(rec, &layer.gate_up, &s.h, 0, t, &s.gu, &s.m);
            kernels::linear(rec, &layer.down, None, &s.m, 0, t, Out { buf: &s.x, off: 0, stride: hd, add: true });
        }
    }

    /// One decoded token through `layer`: Q|K|V + RoPE + cache write, attention, o_proj +
    /// residual, gate|up + SwiGLU, down_proj + residual: six dispatches on GPU kernel shapes
    /// (attention split over the keys, then combined), five on CPU rasterisers, and no norm pass:
    /// each product reads `s.h` = x · g and `s.ssq`, the sums of x² over each 4 elements, which
    /// the residual's writer before it left (the embedding gather or the previous layer's
    /// down_proj, then o_proj), and applies 1/sqrt(mean(x²) + eps) itself (see `prescaled_norms`).
    /// `next`: the next layer's input-norm weight (None after the last layer, whose output the
    /// final norm takes as a pass of its own).
    #[allow(clippy::too_many_arguments)]
    fn decode_layer(&self, rec: &mut Recorder, s: &Scratch, layer: &Layer, next: Option<&wgpu::Buffer>, kv: Kv, slot: usize, pos: usize) {
        let c = &self.cfg;
        let hd = c.hidden;
        let prescaled = self.prescaled_norms();
        // The normalised input of a fused product: x · g left by the residual's writer, or (CPU
        // rasterisers) a norm pass into `s.h`.
        let normed = |rec: &mut Recorder, g: &wgpu::Buffer| {
            if prescaled {
                return NormIn::Prescaled { xg: &s.h, ssq: &s.ssq, off: 0, eps: c.rms_eps };
            }
            kernels::rmsnorm(rec, &s.x, 0, 1, hd, g, c.rms_eps, &s.h, 0);
            NormIn::Normed(View::at(&s.h, 0))
        };
        // o_proj and down_proj add into the residual, leaving x · g for the next norm if prescaled.
        let residual = |rec: &mut Recorder, w: &Weight, x: &wgpu::Buffer, g: Option<&wgpu::Buffer>| match g.filter(|_| prescaled) {
            Some(g) => kernels::linear_residual(rec, w, x, 0, View::at(&s.x, 0), NormCopy { g, yg: &s.h, ssq: &s.ssq }),
            None => kernels::linear(rec, w, None, x, 0, 1, Out { buf: &s.x, off: 0, stride: hd, add: true }),
        };
        let qkv = Fused::Qkv { heads: c.heads, head_dim: c.head_dim, pos, table: &self.rope.buf, q: &s.q, q_off: 0, kv, slot };
        let input = normed(rec, &layer.input_norm.buf);
        kernels::norm_matvec(rec, &layer.qkv, input, qkv);
        let shape = AttnShape {
            t: 1,
            heads: c.heads,
            head_dim: c.head_dim,
            causal_pos0: Some(slot),
            n_keys: slot + 1,
            q_stride: hd,
            kv_stride: hd,
            o_stride: hd,
            kv: kv.format,
        };
        kernels::attention(rec, shape, View::at(&s.q, 0), View::at(kv.k, 0), View::at(kv.v, 0), View::at(&s.attn, 0));
        residual(rec, &layer.o, &s.attn, Some(&layer.post_norm.buf));
        let input = normed(rec, &layer.post_norm.buf);
        kernels::norm_matvec(rec, &layer.gate_up, input, Fused::GateUp { y: &s.m, y_off: 0 });
        residual(rec, &layer.down, &s.m, next);
    }

    /// Whether the decode path's norms ride on the residual's writers (x · g and partial sums of
    /// x²) and the fused products, or run as passes of their own: the products add up the
    /// partial sums four at a time, so the hidden size must be a multiple of 16 (every real
    /// config is).
    fn prescaled_norms(&self) -> bool {
        self.cfg.hidden % 16 == 0
    }

    /// The first layer's input for `t` rows, written to `y[y_off ..]` ([t, hidden]).
    /// With `copy` (decoding a token id), also the row times the first norm's weight.
    pub fn embed(&self, rec: &mut Recorder, input: &Input, t: usize, y: &wgpu::Buffer, y_off: usize, copy: Option<NormCopy>) {
        let hd = self.cfg.hidden as u64;
        match *input {
            Input::Ids(ids, off) => kernels::embedding(rec, &self.embed, ids, off, t, y, y_off, copy),
            Input::Spliced(ids, off, splices) => {
                assert!(copy.is_none() || splices.is_empty(), "spliced rows get no norm copy");
                kernels::embedding(rec, &self.embed, ids, off, t, y, y_off, copy);
                for sp in splices {
                    assert!(sp.row + sp.rows <= t);
                    rec.copy(sp.src, sp.src_row as u64 * hd * 4, y, (y_off as u64 + sp.row as u64 * hd) * 4, sp.rows as u64 * hd * 4);
                }
            }
            Input::Embeds(buf, off) => {
                assert!(copy.is_none(), "ready embeddings get no norm copy");
                rec.copy(buf, off as u64 * 4, y, y_off as u64 * 4, t as u64 * hd * 4)
            }
        }
    }

    /// Final norm and lm_head on residual row `row` of `s.x` → logits[0 .. vocab]: the norm as a
    /// pass of its own (folded into the product, each of lm_head's vocab/8 workgroups would sum the
    /// row's squares again).
    pub fn logits_of_row(&self, rec: &mut Recorder, s: &Scratch, row: usize, logits: &wgpu::Buffer) {
        let hd = self.cfg.hidden;
        kernels::rmsnorm(rec, &s.x, row * hd, 1, hd, &self.norm.buf, self.cfg.rms_eps, &s.h, 0);
        kernels::norm_matvec(rec, &self.lm_head, NormIn::Normed(View::at(&s.h, 0)), Fused::Plain { y: logits, y_off: 0 });
    }

    /// Final norm and lm_head on residual rows 0..t of `s.x` → logits [t, vocab] (one GEMM; for
    /// measuring a preset's next-token distribution at every position of a text).
    pub fn logits_of_rows(&self, rec: &mut Recorder, s: &Scratch, t: usize, logits: &wgpu::Buffer) {
        let hd = self.cfg.hidden;
        kernels::rmsnorm(rec, &s.x, 0, t, hd, &self.norm.buf, self.cfg.rms_eps, &s.h, 0);
        kernels::linear(rec, &self.lm_head, None, &s.h, 0, t, kernels::Out { buf: logits, off: 0, stride: self.cfg.vocab, add: false });
    }
}

/// cos/sin of pos · θ^(−2i/d), the angle formed in f32 like transformers, then evaluated in f64.
pub fn rope_table(max_pos: usize, d: usize, theta: f64) -> Vec<f32> {
    let half = d / 2;
    let inv: Vec<f32> = (0..half).map(|i| (1.0 / theta.powf((2 * i) as f64 / d as f64)) as f32).collect();
    let mut t = Vec::with_capacity(max_pos * d);
    for pos in 0..max_pos {
        for &f in &inv {
            let a = (pos as f32 * f) as f64;
            t.push(a.cos() as f32);
            t.push(a.sin() as f32);
        }
    }
    t
}

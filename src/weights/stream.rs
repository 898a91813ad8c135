//! Converting a Hugging Face checkpoint into a weight pack while its bytes stream in.
//!
//! The browser cannot hold a 4 GB checkpoint, and a converter that needs whole files could not
//! resume a dropped download. So conversion is a pure function from the checkpoint's bytes, read
//! in file order, to the pack's bytes, cut into shards:
//!
//! - the safetensors headers (a few kB, fetched first) fix the whole plan: which tensors are
//!   kept, in which format, and where each lands in the pack's byte stream;
//! - tensor bytes are consumed row by row (a row is all the source bytes one output row needs), so
//!   the converter holds one row, one shard being filled and the current tensor's group scales;
//! - bytes the pack does not need (SigLIP's `attn_pool`, the VAE encoder) are never requested;
//! - every sealed shard carries a checkpoint (where to restart reading, plus the scales of the
//!   rows already written), stored with the shard, so a reload resumes at the last shard.
//!
//! Natively `janusflow convert` feeds the same converter from memory-mapped files, so a pack made
//! in the browser is byte-identical to one made by the CLI.

use std::collections::HashMap;

use anyhow::{anyhow, bail, Context as _, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::pack::{sha256_hex, FileEntry, Manifest, Part, ShardEntry, TensorEntry, FORMAT, MAX_SHARD, MIN_SHARD, VERSION};
use super::preset::{matrix_dims, quant_for, skipped};
use super::quant::{Quant, QuantBlob};
use crate::config::{JanusConfig, VaeConfig};

/// The largest safetensors header accepted (the real checkpoint's is about 100 kB).
pub const MAX_HEADER: u64 = 16 << 20;

/// Side files carried into a pack, in pack order (`config.json` goes into the manifest itself).
pub const SIDE_FILES: &[&str] =
    &["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "preprocessor_config.json", "processor_config.json", "vae/config.json"];

/// Gaps between needed tensors up to this size are read through rather than split into requests.
const MERGE_GAP: u64 = 1 << 20;

/// The JSON header length, from a safetensors file's first 8 bytes.
pub fn header_len(label: &str, first8: &[u8]) -> Result<u64> {
    let b: [u8; 8] = first8.get(..8).and_then(|s| s.try_into().ok()).ok_or_else(|| anyhow!("{label}: not a safetensors file (shorter than 8 bytes)"))?;
    let n = u64::from_le_bytes(b);
    if n < 2 || n > MAX_HEADER {
        bail!("{label}: not a valid safetensors file (header length {n})");
    }
    Ok(n)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum SrcDtype {
    Bf16,
    F16,
    F32,
}

impl SrcDtype {
    fn parse(s: &str) -> Option<Self> {
        match s {
            "BF16" => Some(SrcDtype::Bf16),
            "F16" => Some(SrcDtype::F16),
            "F32" => Some(SrcDtype::F32),
            _ => None,
        }
    }
    fn size(self) -> usize {
        if self == SrcDtype::F32 {
            4
        } else {
            2
        }
    }
    fn decode(self, bytes: &[u8], out: &mut Vec<f32>) {
        out.clear();
        match self {
            SrcDtype::Bf16 => out.extend(bytes.chunks_exact(2).map(|b| f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16))),
            SrcDtype::F16 => out.extend(bytes.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())),
            SrcDtype::F32 => out.extend(bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))),
        }
    }
}

/// One tensor of a safetensors header; offsets are absolute positions in the file.
#[derive(Clone, Debug)]
struct HeaderTensor {
    dtype: String,
    shape: Vec<usize>,
    begin: u64,
    end: u64,
}

/// A parsed and checked safetensors header.
pub struct Header {
    label: String,
    tensors: HashMap<String, HeaderTensor>,
    /// What the server says the file is (the Hub's ETag is its SHA-256), if known: part of a
    /// checkpoint's fingerprint, so a file re-uploaded with the same shapes is not mixed in.
    identity: String,
}

impl Header {
    /// Parses the JSON header of `label` (which starts at byte 8); `file_size`, when known, is
    /// checked against the data the header describes (a truncated file is refused up front).
    pub fn parse(label: &str, json: &[u8], file_size: Option<u64>) -> Result<Self> {
        let bad = |why: String| anyhow!("{label}: not a valid safetensors file ({why})");
        let v: serde_json::Value = serde_json::from_slice(json).map_err(|e| bad(format!("header is not JSON: {e}")))?;
        let obj = v.as_object().ok_or_else(|| bad("header is not an object".into()))?;
        let data_start = 8 + json.len() as u64;
        let mut tensors = HashMap::new();
        let mut data_end = data_start;
        for (name, t) in obj {
            if name == "__metadata__" {
                continue;
            }
            let dtype = t.get("dtype").and_then(|d| d.as_str()).ok_or_else(|| bad(format!("tensor '{name}' has no dtype")))?;
            let shape: Vec<usize> = t
                .get("shape")
                .and_then(|s| s.as_array())
                .and_then(|a| a.iter().map(|d| d.as_u64().map(|d| d as usize)).collect())
                .ok_or_else(|| bad(format!("tensor '{name}' has no valid shape")))?;
            let offs: Vec<u64> = t
                .get("data_offsets")
                .and_then(|s| s.as_array())
                .and_then(|a| a.iter().map(|d| d.as_u64()).collect())
                .filter(|o: &Vec<u64>| o.len() == 2 && o[0] <= o[1])
                .ok_or_else(|| bad(format!("tensor '{name}' has bad data_offsets")))?;
            if let Some(d) = SrcDtype::parse(dtype) {
                let numel = shape.iter().try_fold(1u64, |a, &d| a.checked_mul(d as u64));
                if numel.and_then(|n| n.checked_mul(d.size() as u64)) != Some(offs[1] - offs[0]) {
                    return Err(bad(format!("tensor '{name}': {} data bytes for shape {shape:?} {dtype}", offs[1] - offs[0])));
                }
            }
            let (begin, end) = (data_start + offs[0], data_start + offs[1]);
            data_end = data_end.max(end);
            tensors.insert(name.clone(), HeaderTensor { dtype: dtype.to_string(), shape, begin, end });
        }
        if let Some(size) = file_size {
            if size < data_end {
                bail!("{label} is truncated: its header describes {data_end} bytes, the file has {size}");
            }
        }
        Ok(Header { label: label.to_string(), tensors, identity: String::new() })
    }

    /// Records the file's identity (an ETag), see [`Header`].
    pub fn with_identity(mut self, identity: &str) -> Self {
        self.identity = identity.to_string();
        self
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }
}

/// One tensor to convert: where its source bytes are and where its output goes.
#[derive(Clone, Debug, Serialize)]
struct Job {
    input: usize,
    /// Name in the pack.
    name: String,
    /// Name in the source file.
    src: String,
    dtype: SrcDtype,
    shape: Vec<usize>,
    quant: Quant,
    rows: usize,
    cols: usize,
    begin: u64,
    end: u64,
    /// Position of the converted tensor in the pack's byte stream, and its length.
    out: u64,
    len: u64,
}

impl Job {
    fn in_row(&self) -> usize {
        self.cols * self.dtype.size()
    }
    /// Output payload bytes per row (without scales).
    fn payload_row(&self) -> u64 {
        (QuantBlob::byte_len_unpadded(self.quant, 1, self.cols) - self.scale_row()) as u64
    }
    fn scale_row(&self) -> usize {
        self.quant.scale_row_bytes(self.cols)
    }
}

/// Where to restart after the shards already committed (stored with each sealed shard).
#[derive(Serialize, Deserialize)]
struct Checkpoint {
    fingerprint: String,
    /// The shards this converter's range has committed (from its first shard on).
    shards: Vec<ShardEntry>,
    job: usize,
    row: usize,
    /// The converter's range of shard indices (checkpoints from before ranges: the whole pack).
    #[serde(default)]
    first_shard: usize,
    #[serde(default)]
    end_shard: Option<usize>,
}

const CHECKPOINT_MAGIC: &[u8; 8] = b"JFCKPT01";

/// A sealed shard, ready to be committed together with its checkpoint.
pub struct Sealed {
    pub file: String,
    pub sha256: String,
    pub data: Vec<u8>,
    /// Opaque bytes: hand them to [`StreamConverter::new`] to resume after this shard.
    pub checkpoint: Vec<u8>,
}

/// A contiguous byte range of one input file that the converter wants next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    pub input: usize,
    pub start: u64,
    pub end: u64,
}

pub struct StreamConverter {
    preset: Quant,
    /// The shards this converter writes: `first_shard..end_shard` of the pack, i.e. the pack's
    /// bytes `lo..hi` (the whole pack unless made by [`StreamConverter::new_range`]).
    first_shard: usize,
    end_shard: usize,
    lo: u64,
    hi: u64,
    /// The jobs whose output meets `lo..hi`, and the input bytes read before the first of them.
    range_jobs: std::ops::Range<usize>,
    consumed_before: u64,
    shard_size: usize,
    config: serde_json::Value,
    files: Vec<(String, Vec<u8>)>,
    jobs: Vec<Job>,
    fingerprint: String,
    total_out: u64,
    // Reading position: the next row of `jobs[job]`, partially gathered in `pending`.
    job: usize,
    row: usize,
    pending: Vec<u8>,
    scales: Vec<u8>,
    // Writing position in the pack's byte stream; bytes before `committed` are already stored.
    pos: u64,
    committed: u64,
    current: Vec<u8>,
    shards: Vec<ShardEntry>,
    sealed: Vec<Sealed>,
    consumed: u64,
}

impl StreamConverter {
    /// Plans the conversion of `model` (one header per safetensors file, in file order) and of an
    /// optional VAE (`vae/config.json` must then be among `files`). `files` are the side files
    /// present, in [`SIDE_FILES`] order. With `checkpoint` (from a [`Sealed`] shard of the same
    /// plan) it resumes after that shard; a checkpoint of another plan is refused.
    pub fn new(
        preset: Quant,
        shard_size: usize,
        config_json: &[u8],
        files: Vec<(String, Vec<u8>)>,
        model: &[Header],
        vae: Option<&Header>,
        checkpoint: Option<&[u8]>,
    ) -> Result<Self> {
        Self::new_range(preset, shard_size, config_json, files, model, vae, None, checkpoint)
    }

    /// Like [`StreamConverter::new`], but writes only the shards `shards` of the pack (all of them
    /// with `None`), so that several converters (browser workers) make one pack together: each
    /// reads only the input its shards need, starting at the first row of the tensor its first
    /// shard begins in (a tensor's group scales follow its rows, so a shard that starts inside a
    /// tensor needs all of them). [`StreamConverter::plan_ranges`] picks ranges that split few
    /// rows. A checkpoint carries its range: with one, `shards` must be that range or `None`.
    #[allow(clippy::too_many_arguments)]
    pub fn new_range(
        preset: Quant,
        shard_size: usize,
        config_json: &[u8],
        files: Vec<(String, Vec<u8>)>,
        model: &[Header],
        vae: Option<&Header>,
        shards: Option<std::ops::Range<usize>>,
        checkpoint: Option<&[u8]>,
    ) -> Result<Self> {
        if !(MIN_SHARD..=MAX_SHARD).contains(&shard_size) || shard_size % 4 != 0 {
            bail!("the shard size must be a multiple of 4 bytes between {MIN_SHARD} and {MAX_SHARD} (got {shard_size})");
        }
        let cfg = JanusConfig::from_json_str(std::str::from_utf8(config_json).context("config.json is not UTF-8")?)?;
        if !files.iter().any(|(n, _)| n == "tokenizer.json") {
            bail!("the checkpoint has no tokenizer.json");
        }
        let mut jobs = Vec::new();
        let find = |name: &str| model.iter().enumerate().find_map(|(i, h)| h.tensors.get(name).map(|t| (i, h, t)));
        for (name, shape) in cfg.expected_tensors().into_iter().filter(|(n, _)| !skipped(n)) {
            let (i, h, t) = find(&name).ok_or_else(|| anyhow!("the checkpoint has no tensor '{name}'"))?;
            if t.shape != shape {
                bail!("tensor '{name}' has shape {:?}, but config.json implies {shape:?}", t.shape);
            }
            jobs.push(job(i, h, &name, &name, t, shape, quant_for(preset, &name, &t.shape))?);
        }
        if let Some(h) = vae {
            let bytes = files.iter().find(|(n, _)| n == "vae/config.json").map(|(_, b)| b).ok_or_else(|| anyhow!("the VAE has no config.json"))?;
            let vcfg = VaeConfig::from_json(bytes)?;
            for (name, shape) in vcfg.decoder_tensors() {
                // Legacy attention names and 1×1-conv attention weights are accepted (same bytes).
                let legacy = name.replace(".to_q.", ".query.").replace(".to_k.", ".key.").replace(".to_v.", ".value.").replace(".to_out.0.", ".proj_attn.");
                let (src, t) = [&name, &legacy]
                    .into_iter()
                    .find_map(|n| h.tensors.get(n.as_str()).map(|t| (n.clone(), t)))
                    .ok_or_else(|| anyhow!("the VAE has no tensor '{name}'"))?;
                let squeeze = |s: &[usize]| s.iter().copied().filter(|&d| d != 1).collect::<Vec<_>>();
                if t.shape != shape && squeeze(&t.shape) != squeeze(&shape) {
                    bail!("VAE tensor '{src}' has shape {:?}, expected {shape:?}", t.shape);
                }
                let full = format!("vae.{name}");
                let q = quant_for(preset, &full, &shape);
                jobs.push(job(model.len(), h, &full, &src, t, shape, q)?);
            }
        }
        // File order: one pass over each input, never backwards.
        jobs.sort_by_key(|j| (j.input, j.begin));
        let mut pos: u64 = files.iter().map(|(_, b)| b.len() as u64).sum();
        for j in &mut jobs {
            j.out = pos;
            j.len = QuantBlob::byte_len(j.quant, j.rows, j.cols) as u64;
            pos += j.len;
        }
        let mut fp = Sha256::new();
        fp.update(format!("{FORMAT} {VERSION} {preset} {shard_size}\n").as_bytes());
        fp.update(config_json);
        for (n, b) in &files {
            fp.update(format!("\n{n} {}\n", sha256_hex(b)).as_bytes());
        }
        fp.update(serde_json::to_vec(&jobs)?);
        for h in model.iter().chain(vae) {
            fp.update(format!("\n{}", h.identity).as_bytes());
        }
        let mut c = StreamConverter {
            preset,
            first_shard: 0,
            end_shard: 0,
            lo: 0,
            hi: 0,
            range_jobs: 0..0,
            consumed_before: 0,
            shard_size,
            config: cfg.raw.clone(),
            files,
            jobs,
            fingerprint: hex::encode(fp.finalize()),
            total_out: pos,
            job: 0,
            row: 0,
            pending: Vec::new(),
            scales: Vec::new(),
            pos: 0,
            committed: 0,
            current: Vec::new(),
            shards: Vec::new(),
            sealed: Vec::new(),
            consumed: 0,
        };
        let all = 0..c.pack_shards();
        match (checkpoint, shards) {
            (Some(cp), want) => {
                let range = c.restore(cp)?;
                if want.as_ref().is_some_and(|w| *w != range) {
                    bail!("the stored conversion checkpoint belongs to other files or settings (shards {range:?}, not {want:?})");
                }
            }
            (None, range) => {
                let range = range.unwrap_or(all);
                c.set_range(range.clone())?;
                c.committed = c.lo;
                c.job = c.range_jobs.start;
                c.consumed = c.consumed_before;
                // Starting inside the side files writes them (what lies before `lo` is dropped).
                c.pos = if c.job == 0 { 0 } else { c.jobs[c.job].out };
            }
        }
        if c.pos == 0 && c.job == 0 && c.row == 0 {
            for i in 0..c.files.len() {
                let data = std::mem::take(&mut c.files[i].1);
                c.emit(&data);
                c.files[i].1 = data;
            }
        }
        Ok(c)
    }

    /// Number of shards of the whole pack.
    pub fn pack_shards(&self) -> usize {
        self.total_out.div_ceil(self.shard_size as u64) as usize
    }

    /// Sets the shard range and what follows from it (bytes, jobs, input read before).
    fn set_range(&mut self, range: std::ops::Range<usize>) -> Result<()> {
        if range.start >= range.end || range.end > self.pack_shards() {
            bail!("shard range {range:?} is not within the pack's {} shards", self.pack_shards());
        }
        let s = self.shard_size as u64;
        self.first_shard = range.start;
        self.end_shard = range.end;
        self.lo = range.start as u64 * s;
        self.hi = (range.end as u64 * s).min(self.total_out);
        let (lo, hi) = (self.lo, self.hi);
        let first = self.jobs.iter().position(|j| j.out + j.len > lo).unwrap_or(self.jobs.len());
        let end = self.jobs.iter().position(|j| j.out >= hi).unwrap_or(self.jobs.len()).max(first);
        self.range_jobs = first..end;
        self.consumed_before = self.jobs[..first].iter().map(|j| j.end - j.begin).sum();
        Ok(())
    }

    /// Splits the pack's shards into at most `n` ranges of about equal work for
    /// [`StreamConverter::new_range`]: work is input bytes read, and a cut inside a tensor costs
    /// the rows before it, which the next range reads again, so cuts fall near tensor starts and
    /// never inside a large tensor (the embedding, lm_head) when a cheaper one is near.
    pub fn plan_ranges(&self, n: usize) -> Vec<std::ops::Range<usize>> {
        let shards = self.pack_shards();
        let n = n.clamp(1, shards);
        let s = self.shard_size as u64;
        // Input bytes read to write the pack up to `pos` (a job's bytes spread over its output).
        let work = |pos: u64| -> f64 {
            self.jobs
                .iter()
                .map(|j| {
                    let f = (pos.saturating_sub(j.out) as f64 / j.len.max(1) as f64).min(1.0);
                    f * (j.end - j.begin) as f64
                })
                .sum()
        };
        // Input bytes a range starting at `pos` reads again: its first tensor's earlier rows.
        let again = |pos: u64| -> f64 {
            match self.jobs.iter().find(|j| j.out <= pos && pos < j.out + j.len) {
                None => 0.0,
                Some(j) => {
                    let rows = ((pos - j.out) / j.payload_row().max(1)).min(j.rows as u64);
                    (rows * j.in_row() as u64) as f64
                }
            }
        };
        let total = work(self.total_out);
        let target = total / n as f64;
        let mut cuts = vec![0];
        for i in 1..n {
            let ideal = target * i as f64;
            let best = (cuts[cuts.len() - 1] + 1..shards)
                .map(|b| (b, work(b as u64 * s), again(b as u64 * s)))
                .filter(|&(_, w, _)| (w - ideal).abs() <= target / 2.0)
                .min_by(|a, b| {
                    let score = |&(_, w, d): &(usize, f64, f64)| (w - ideal).abs() + 2.0 * d;
                    score(a).total_cmp(&score(b))
                });
            if let Some((b, ..)) = best {
                cuts.push(b);
            }
        }
        cuts.push(shards);
        cuts.windows(2).map(|w| w[0]..w[1]).collect()
    }

    /// Where reading the range's last job may stop: the input offset after the last row whose
    /// payload lies before `hi` (all rows when `hi` lies in the job's scales or beyond).
    fn input_end(&self, k: usize) -> u64 {
        let j = &self.jobs[k];
        if k + 1 < self.range_jobs.end {
            return j.end;
        }
        let payload = j.payload_row() * j.rows as u64;
        if self.hi >= j.out + payload {
            return j.end;
        }
        let rows = (self.hi - j.out).div_ceil(j.payload_row().max(1));
        j.begin + rows * j.in_row() as u64
    }

    /// Whether everything in this converter's range has been written.
    fn range_written(&self) -> bool {
        // After a resume from the range's last checkpoint, `committed` is at the end already.
        self.pos.max(self.committed) >= self.hi
    }

    fn restore(&mut self, bytes: &[u8]) -> Result<std::ops::Range<usize>> {
        let bad = || anyhow!("the stored conversion checkpoint is damaged");
        if bytes.len() < 12 || &bytes[..8] != CHECKPOINT_MAGIC {
            return Err(bad());
        }
        let n = u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize;
        let json = bytes.get(12..12 + n).ok_or_else(bad)?;
        let cp: Checkpoint = serde_json::from_slice(json).map_err(|_| bad())?;
        if cp.fingerprint != self.fingerprint {
            bail!("the stored conversion checkpoint belongs to other files or settings");
        }
        let range = cp.first_shard..cp.end_shard.unwrap_or(self.pack_shards());
        self.set_range(range.clone()).map_err(|_| bad())?;
        let scales = &bytes[12 + n..];
        let done = cp.job >= self.jobs.len();
        // Every shard is full, but the pack's last.
        let written = self.lo + cp.shards.iter().map(|s| s.size).sum::<u64>();
        let full = cp.shards.iter().rev().skip(usize::from(written == self.total_out)).all(|s| s.size as usize == self.shard_size);
        if cp.job > self.jobs.len() || cp.shards.len() > range.len() || (!done && (!full || cp.row > self.jobs[cp.job].rows)) {
            return Err(bad());
        }
        if !done && scales.len() != cp.row * self.jobs[cp.job].scale_row() {
            return Err(bad());
        }
        self.committed = self.lo + cp.shards.iter().map(|s| s.size).sum::<u64>();
        self.shards = cp.shards;
        self.job = cp.job;
        self.row = cp.row;
        self.scales = scales.to_vec();
        self.pos = match (done, self.job, self.row) {
            (true, ..) => self.total_out,
            // Restarting at the very beginning: the side files are written again first.
            (false, 0, 0) => 0,
            (false, k, r) => self.jobs[k].out + r as u64 * self.jobs[k].payload_row(),
        };
        self.consumed =
            self.jobs[..self.job].iter().map(|j| j.end - j.begin).sum::<u64>() + if done { 0 } else { self.row as u64 * self.jobs[self.job].in_row() as u64 };
        Ok(range)
    }

    /// Bytes of the finished pack.
    pub fn total_bytes(&self) -> u64 {
        self.total_out
    }

    /// Source bytes this converter reads in all (needed tensors only, within its range), and how
    /// many are done.
    pub fn input_bytes(&self) -> (u64, u64) {
        let r = self.range_jobs.clone();
        let total = r.clone().map(|k| self.input_end(k) - self.jobs[k].begin).sum::<u64>();
        let done = (self.consumed - self.consumed_before).min(total);
        (total, done)
    }

    /// The shard range this converter writes.
    pub fn shard_range(&self) -> std::ops::Range<usize> {
        self.first_shard..self.end_shard
    }

    /// The tensor being converted (for progress), if any.
    pub fn current_tensor(&self) -> Option<&str> {
        self.jobs.get(self.job).map(|j| j.name.as_str())
    }

    /// Number of shards of this converter's range committed so far (after a resume: those from
    /// before).
    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    /// The next byte range to read: from where reading stands to the end of a run of needed
    /// tensors in the same file. `None` when everything has been read.
    pub fn next_span(&mut self) -> Option<Span> {
        self.advance();
        if self.range_written() || self.job >= self.range_jobs.end {
            return None;
        }
        let j = self.jobs.get(self.job)?;
        let start = self.need();
        let mut end = self.input_end(self.job);
        for k in self.job + 1..self.range_jobs.end {
            let next = &self.jobs[k];
            if next.input != j.input || next.begin > end + MERGE_GAP {
                break;
            }
            end = end.max(self.input_end(k));
        }
        Some(Span { input: j.input, start, end })
    }

    /// Input position of the next needed byte.
    fn need(&self) -> u64 {
        let j = &self.jobs[self.job];
        j.begin + (self.row * j.in_row() + self.pending.len()) as u64
    }

    /// Feeds bytes of input `input` starting at file offset `offset`. Bytes before the next needed
    /// one (a server that ignored a Range request, a gap between tensors) and after the last are
    /// skipped; a gap in what is needed is an error.
    pub fn push(&mut self, input: usize, mut offset: u64, mut data: &[u8]) -> Result<()> {
        loop {
            self.advance();
            if self.range_written() || self.job >= self.range_jobs.end {
                return Ok(());
            }
            let Some(j) = self.jobs.get(self.job) else { return Ok(()) };
            if data.is_empty() || j.input > input {
                return Ok(());
            }
            if j.input < input {
                bail!("bytes of input {input} arrived while input {} is being read", j.input);
            }
            let need = self.need();
            if offset > need {
                bail!("{}: bytes missing at offset {need} (got bytes from {offset})", self.jobs[self.job].src);
            }
            if offset < need {
                let skip = (need - offset).min(data.len() as u64);
                offset += skip;
                data = &data[skip as usize..];
                continue;
            }
            let in_row = j.in_row();
            // Rows past the range's end are not converted.
            let rows = ((self.input_end(self.job) - j.begin) / in_row as u64) as usize;
            let mut take = (in_row - self.pending.len()).min(data.len());
            if self.pending.is_empty() && take == in_row {
                // As many whole rows as arrived (converted in parallel natively).
                let n = (data.len() / in_row).min(rows - self.row);
                take = n * in_row;
                self.convert_rows(&data[..take])?;
            } else {
                self.pending.extend_from_slice(&data[..take]);
                if self.pending.len() == in_row {
                    let row = std::mem::take(&mut self.pending);
                    self.convert_rows(&row)?;
                    self.pending = row;
                    self.pending.clear();
                }
            }
            self.consumed += take as u64;
            offset += take as u64;
            data = &data[take..];
        }
    }

    /// Shards sealed since the last call; commit them in order.
    pub fn take_sealed(&mut self) -> Vec<Sealed> {
        std::mem::take(&mut self.sealed)
    }

    /// Converts whole source rows of the current job as one matrix (the same code as loading a
    /// whole tensor, parallel natively; groups never straddle rows) and writes their payload; their
    /// scales are kept for the tensor's end.
    fn convert_rows(&mut self, bytes: &[u8]) -> Result<()> {
        let j = &self.jobs[self.job];
        let (quant, cols, sr) = (j.quant, j.cols, j.scale_row());
        let n = bytes.len() / j.in_row();
        let mut vals = Vec::with_capacity(n * cols);
        j.dtype.decode(bytes, &mut vals);
        let blob = QuantBlob::quantize(quant, n, cols, &vals).with_context(|| format!("tensor '{}', row {}", j.src, self.row))?;
        let payload = QuantBlob::byte_len_unpadded(quant, n, cols) - n * sr;
        // Scales first: a shard sealed while the payload is written checkpoints them.
        self.scales.extend_from_slice(&blob.data[payload..payload + n * sr]);
        self.row += n;
        self.emit(&blob.data[..payload]);
        Ok(())
    }

    /// Finishes jobs whose rows are all read: writes their scales and padding.
    fn advance(&mut self) {
        while let Some(j) = self.jobs.get(self.job) {
            if self.row < j.rows {
                return;
            }
            let pad = (j.out + j.len - self.pos) as usize - self.scales.len();
            // A copy: a shard sealed while the scales are written checkpoints them.
            let mut tail = self.scales.clone();
            tail.resize(tail.len() + pad, 0);
            self.emit(&tail);
            self.scales.clear();
            debug_assert_eq!(self.pos, self.jobs[self.job].out + self.jobs[self.job].len);
            self.job += 1;
            self.row = 0;
        }
    }

    /// Appends to the pack's byte stream (dropping what is already committed, and what lies past
    /// this converter's range), sealing full shards.
    fn emit(&mut self, mut data: &[u8]) {
        if self.pos < self.committed {
            let skip = (self.committed - self.pos).min(data.len() as u64);
            self.pos += skip;
            data = &data[skip as usize..];
        }
        let past = (self.pos + data.len() as u64).saturating_sub(self.hi.max(self.pos));
        let (mut data, rest) = data.split_at(data.len() - past as usize);
        while !data.is_empty() {
            let n = data.len().min(self.shard_size - self.current.len());
            self.current.extend_from_slice(&data[..n]);
            self.pos += n as u64;
            data = &data[n..];
            if self.current.len() == self.shard_size {
                self.seal();
            }
        }
        self.pos += rest.len() as u64;
    }

    fn seal(&mut self) {
        if self.current.is_empty() {
            return;
        }
        let data = std::mem::take(&mut self.current);
        let sha = sha256_hex(&data);
        let file = format!("{sha}.bin");
        self.shards.push(ShardEntry { file: file.clone(), sha256: sha.clone(), size: data.len() as u64 });
        self.committed = self.pos;
        let checkpoint = self.checkpoint();
        self.sealed.push(Sealed { file, sha256: sha, data, checkpoint });
    }

    /// The restart point after everything up to `committed`: the first job not wholly written,
    /// from its first row not wholly written, with the scales of the rows before it.
    fn checkpoint(&self) -> Vec<u8> {
        let c = self.committed;
        let (job, row) = match self.jobs.iter().position(|j| j.out + j.len > c) {
            None => (self.jobs.len(), 0),
            Some(k) => {
                let j = &self.jobs[k];
                (k, if c <= j.out { 0 } else { (((c - j.out) / j.payload_row().max(1)) as usize).min(j.rows) })
            }
        };
        // Seals happen while job `self.job` writes, so the restart job is this one (or the next).
        let scales: &[u8] = match self.jobs.get(job) {
            Some(j) if job == self.job => &self.scales[..row * j.scale_row()],
            _ => &[],
        };
        debug_assert!(job == self.job || row == 0);
        let cp = Checkpoint {
            fingerprint: self.fingerprint.clone(),
            shards: self.shards.clone(),
            job,
            row,
            first_shard: self.first_shard,
            end_shard: Some(self.end_shard),
        };
        let json = serde_json::to_vec(&cp).expect("checkpoint serializes");
        let mut out = Vec::with_capacity(12 + json.len() + scales.len());
        out.extend_from_slice(CHECKPOINT_MAGIC);
        out.extend_from_slice(&(json.len() as u32).to_le_bytes());
        out.extend_from_slice(&json);
        out.extend_from_slice(scales);
        out
    }

    /// Seals the last shard (if any) and returns the manifest; an error if input is missing. For
    /// a converter of the whole pack; one of a range ends with [`StreamConverter::finish_range`].
    pub fn finish(&mut self) -> Result<Manifest> {
        if self.shard_range() != (0..self.pack_shards()) {
            bail!("this converter writes shards {:?} of {}: finish it with finish_range", self.shard_range(), self.pack_shards());
        }
        let shards = self.finish_range()?;
        debug_assert_eq!(self.pos, self.total_out);
        self.manifest(&shards)
    }

    /// Seals the range's last shard when it ends the pack, and returns the range's shard entries
    /// (those committed before a resume included); an error if input is missing.
    pub fn finish_range(&mut self) -> Result<Vec<ShardEntry>> {
        self.advance();
        if !self.range_written() {
            let j = &self.jobs[self.job.min(self.jobs.len() - 1)];
            bail!("the checkpoint data ended early: tensor '{}' in {} is incomplete", j.src, j.name);
        }
        if self.hi == self.total_out {
            self.seal();
        }
        Ok(self.shards.clone())
    }

    /// The manifest of the pack whose shards are `shards` (every range's, in order), checked
    /// against the plan's sizes.
    pub fn manifest(&self, shards: &[ShardEntry]) -> Result<Manifest> {
        let shard_size = self.shard_size as u64;
        let n = self.pack_shards();
        if shards.len() != n {
            bail!("the pack has {n} shards, {} were given", shards.len());
        }
        for (i, s) in shards.iter().enumerate() {
            let want = if i + 1 < n { shard_size } else { self.total_out - (n as u64 - 1) * shard_size };
            if s.size != want || s.file != format!("{}.bin", s.sha256) {
                bail!("shard {i} ({}) has {} bytes, {want} expected", s.file, s.size);
            }
        }
        let parts = |mut o: u64, len: u64| -> Vec<Part> {
            let (mut left, mut v) = (len, Vec::new());
            while left > 0 {
                let (i, off) = ((o / shard_size) as usize, o % shard_size);
                let n = left.min(shard_size - off);
                v.push(Part { shard: shards[i].file.clone(), offset: off, length: n });
                o += n;
                left -= n;
            }
            v
        };
        let mut o = 0;
        let mut files = Vec::new();
        for (name, data) in &self.files {
            files.push(FileEntry { name: name.clone(), length: data.len() as u64, parts: parts(o, data.len() as u64) });
            o += data.len() as u64;
        }
        let dtype_name = |d: SrcDtype| format!("{d:?}").to_lowercase();
        let tensors = self
            .jobs
            .iter()
            .map(|j| TensorEntry {
                name: j.name.clone(),
                dtype: dtype_name(j.dtype),
                shape: j.shape.clone(),
                quant: j.quant,
                length: j.len,
                parts: parts(j.out, j.len),
            })
            .collect();
        Ok(Manifest {
            format: FORMAT.into(),
            version: VERSION,
            preset: self.preset,
            config: self.config.clone(),
            files,
            tensors,
            shards: shards.to_vec(),
            total_bytes: self.total_out,
        })
    }
}

fn job(input: usize, h: &Header, name: &str, src: &str, t: &HeaderTensor, shape: Vec<usize>, quant: Quant) -> Result<Job> {
    let dtype = SrcDtype::parse(&t.dtype).ok_or_else(|| anyhow!("{}: tensor '{src}' has dtype {}; expected BF16, F16 or F32", h.label, t.dtype))?;
    let (rows, cols) = matrix_dims(&shape);
    if rows * cols == 0 {
        bail!("{}: tensor '{src}' is empty", h.label);
    }
    Ok(Job { input, name: name.into(), src: src.into(), dtype, shape, quant, rows, cols, begin: t.begin, end: t.end, out: 0, len: 0 })
}

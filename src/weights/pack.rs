//! The web weight pack: `manifest.json` plus shards of at most 32 MiB, each named by the SHA-256
//! of its contents. Tensors are stored already converted (quantized) under one preset, so the
//! browser only copies bytes into GPU buffers; tokenizer and config files travel as shard data too.

use anyhow::{anyhow, bail, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::quant::{Quant, QuantBlob};

pub const FORMAT: &str = "janusflow-pack";
/// The version written. 2 added the q4a tensor format; version 1 packs (f32/f16/q8/q4 only)
/// are still read.
pub const VERSION: u32 = 2;
pub const OLDEST_READABLE: u32 = 1;
pub const MAX_SHARD: usize = 32 << 20;
/// The smallest shard a converter writes (tests use a few hundred KiB to get several shards; far
/// smaller ones would only multiply requests and manifest entries).
pub const MIN_SHARD: usize = 64 << 10;
/// The largest side file (tokenizer.json, configs) a pack may carry; the real tokenizer is ~5 MB.
pub const MAX_FILE: u64 = 64 << 20;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Part {
    pub shard: String,
    pub offset: u64,
    pub length: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TensorEntry {
    pub name: String,
    /// dtype in the source checkpoint (bf16, f16, f32).
    pub dtype: String,
    pub shape: Vec<usize>,
    pub quant: Quant,
    pub length: u64,
    pub parts: Vec<Part>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct FileEntry {
    pub name: String,
    pub length: u64,
    pub parts: Vec<Part>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ShardEntry {
    /// `<sha256>.bin`
    pub file: String,
    pub sha256: String,
    pub size: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub version: u32,
    pub preset: Quant,
    pub config: serde_json::Value,
    pub files: Vec<FileEntry>,
    pub tensors: Vec<TensorEntry>,
    pub shards: Vec<ShardEntry>,
    pub total_bytes: u64,
}

impl Manifest {
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        // Format and version first, so a newer pack (with formats this engine does not know) is
        // named as such rather than as invalid JSON.
        let head: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| anyhow!("manifest.json is invalid: {e}"))?;
        if head.get("format").and_then(|f| f.as_str()) != Some(FORMAT) {
            bail!("manifest.json: format {} is not '{FORMAT}'", head.get("format").unwrap_or(&serde_json::Value::Null));
        }
        match head.get("version").and_then(|v| v.as_u64()) {
            Some(v) if (OLDEST_READABLE as u64..=VERSION as u64).contains(&v) => {}
            v => bail!(
                "manifest.json: pack version {} is not supported (this engine reads versions {OLDEST_READABLE} to {VERSION}; a newer pack needs a newer app)",
                v.map_or("(missing)".to_string(), |v| v.to_string())
            ),
        }
        let m: Manifest = serde_json::from_value(head).map_err(|e| anyhow!("manifest.json is invalid: {e}"))?;
        if m.version < 2 && (m.preset == Quant::Q4A || m.tensors.iter().any(|t| t.quant == Quant::Q4A)) {
            bail!("manifest.json: a version {} pack cannot hold q4a tensors", m.version);
        }
        m.validate().map_err(|e| anyhow!("manifest.json: {e}"))?;
        Ok(m)
    }

    /// Every size and reference checked before anything is allocated or fetched: shard names are
    /// content hashes (never paths or URLs), each entry's parts lie inside their shard and add up
    /// to its length, shapes cannot overflow, and the totals agree.
    fn validate(&self) -> Result<()> {
        if self.shards.is_empty() {
            bail!("the pack lists no shards");
        }
        let mut sizes = std::collections::HashMap::new();
        let mut total = 0u64;
        for s in &self.shards {
            let hash_ok = s.sha256.len() == 64 && s.sha256.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
            if !hash_ok || s.file != format!("{}.bin", s.sha256) {
                bail!("bad shard name '{}' (must be the SHA-256 of its contents, as <64 hex digits>.bin)", s.file);
            }
            if s.size == 0 || s.size > MAX_SHARD as u64 {
                bail!("shard {} has size {}, not between 1 and {MAX_SHARD}", s.file, s.size);
            }
            if sizes.insert(s.file.as_str(), s.size).is_some() {
                bail!("shard {} is listed twice", s.file);
            }
            total += s.size;
        }
        if total != self.total_bytes {
            bail!("the shards hold {total} bytes, total_bytes says {}", self.total_bytes);
        }
        let check_parts = |what: &str, name: &str, length: u64, parts: &[Part]| -> Result<()> {
            let mut sum = 0u64;
            for p in parts {
                let size = sizes.get(p.shard.as_str()).ok_or_else(|| anyhow!("{what} '{name}' refers to shard '{}', which is not listed", p.shard))?;
                if p.offset.checked_add(p.length).is_none_or(|end| end > *size) {
                    bail!("{what} '{name}' reads past the end of shard {}", p.shard);
                }
                sum += p.length;
            }
            if sum != length || length > total {
                bail!("{what} '{name}' has length {length}, its parts hold {sum}");
            }
            Ok(())
        };
        for f in &self.files {
            check_parts("file", &f.name, f.length, &f.parts)?;
            if f.length > MAX_FILE {
                bail!("file '{}' has {} bytes, more than a side file may ({MAX_FILE})", f.name, f.length);
            }
        }
        for t in &self.tensors {
            check_parts("tensor", &t.name, t.length, &t.parts)?;
            let n = t.shape.iter().try_fold(1u64, |a, &d| a.checked_mul(d as u64));
            if t.shape.len() > 4 || n.is_none_or(|n| n == 0 || n > crate::config::caps::TENSOR_ELEMENTS) {
                bail!("tensor '{}' has shape {:?}, which this engine cannot hold", t.name, t.shape);
            }
            let (rows, cols) = super::preset::matrix_dims(&t.shape);
            if t.quant.is_grouped() && cols % super::quant::GROUP != 0 {
                bail!("tensor '{}' is {} with rows of {cols} values, not whole groups", t.name, t.quant);
            }
            if t.length != QuantBlob::byte_len(t.quant, rows, cols) as u64 {
                bail!("tensor '{}' has length {}, but a {:?} {} tensor takes {}", t.name, t.length, t.shape, t.quant, QuantBlob::byte_len(t.quant, rows, cols));
            }
        }
        Ok(())
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorEntry> {
        self.tensors.iter().find(|t| t.name == name)
    }

    pub fn file(&self, name: &str) -> Option<&FileEntry> {
        self.files.iter().find(|f| f.name == name)
    }

    pub fn shard(&self, file: &str) -> Option<&ShardEntry> {
        self.shards.iter().find(|s| s.file == file)
    }
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

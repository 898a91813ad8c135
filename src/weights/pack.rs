//! The web weight pack: `manifest.json` plus shards of at most 32 MiB, each named by the SHA-256
//! of its contents. Tensors are stored already converted (quantized) under one preset, so the
//! browser only copies bytes into GPU buffers; tokenizer and config files travel as shard data too.

use anyhow::{anyhow, bail, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::quant::Quant;

pub const FORMAT: &str = "janusflow-pack";
pub const VERSION: u32 = 1;
pub const MAX_SHARD: usize = 32 << 20;

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
        let m: Manifest = serde_json::from_slice(bytes).map_err(|e| anyhow!("manifest.json is invalid: {e}"))?;
        if m.format != FORMAT {
            bail!("manifest.json: format '{}' is not '{FORMAT}'", m.format);
        }
        if m.version != VERSION {
            bail!("manifest.json: pack version {} is not supported (this engine reads version {VERSION})", m.version);
        }
        for s in &m.shards {
            if s.file != format!("{}.bin", s.sha256) || s.size as usize > MAX_SHARD {
                bail!("manifest.json: bad shard entry {}", s.file);
            }
        }
        Ok(m)
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

//! The web weight pack: `manifest.json` plus shards of at most 32 MiB, each named by the SHA-256
//! of its contents. Tensors are stored already converted (quantized) under one preset, so the
//! browser only copies bytes into GPU buffers; tokenizer and config files travel as shard data too.

use anyhow::{anyhow, bail, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::quant::{Quant, QuantBlob};

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

/// Builds a pack: bytes are appended to the current shard, which is sealed (hashed and handed to
/// `sink`) when full. Shard contents are a pure function of the input, so packs are reproducible.
/// While writing, a part names its shard by number (`#n`); `finish` puts in the real names.
pub struct PackWriter<F: FnMut(&str, &[u8]) -> Result<()>> {
    sink: F,
    /// Shard size limit (MAX_SHARD; smaller in tests so that tiny packs have several shards).
    pub shard_size: usize,
    current: Vec<u8>,
    pub files: Vec<FileEntry>,
    pub tensors: Vec<TensorEntry>,
    pub shards: Vec<ShardEntry>,
}

impl<F: FnMut(&str, &[u8]) -> Result<()>> PackWriter<F> {
    pub fn new(sink: F) -> Self {
        PackWriter { sink, shard_size: MAX_SHARD, current: Vec::new(), files: Vec::new(), tensors: Vec::new(), shards: Vec::new() }
    }

    fn write_parts(&mut self, mut data: &[u8]) -> Result<Vec<Part>> {
        let mut parts = Vec::new();
        while !data.is_empty() {
            if self.current.len() >= self.shard_size {
                self.seal()?;
            }
            let n = data.len().min(self.shard_size - self.current.len());
            parts.push(Part { shard: format!("#{}", self.shards.len()), offset: self.current.len() as u64, length: n as u64 });
            self.current.extend_from_slice(&data[..n]);
            data = &data[n..];
        }
        Ok(parts)
    }

    pub fn add_file(&mut self, name: &str, data: &[u8]) -> Result<()> {
        let parts = self.write_parts(data)?;
        self.files.push(FileEntry { name: name.into(), length: data.len() as u64, parts });
        Ok(())
    }

    pub fn add_tensor(&mut self, name: &str, dtype: &str, shape: &[usize], blob: &QuantBlob) -> Result<()> {
        let parts = self.write_parts(&blob.data)?;
        self.tensors.push(TensorEntry {
            name: name.into(),
            dtype: dtype.into(),
            shape: shape.to_vec(),
            quant: blob.quant,
            length: blob.data.len() as u64,
            parts,
        });
        Ok(())
    }

    fn seal(&mut self) -> Result<()> {
        if self.current.is_empty() {
            return Ok(());
        }
        let sha = sha256_hex(&self.current);
        let file = format!("{sha}.bin");
        (self.sink)(&file, &self.current)?;
        self.shards.push(ShardEntry { file, sha256: sha, size: self.current.len() as u64 });
        self.current.clear();
        Ok(())
    }

    /// Seals the last shard and returns the manifest.
    pub fn finish(mut self, preset: Quant, config: serde_json::Value) -> Result<Manifest> {
        self.seal()?;
        let shards = self.shards;
        let resolve = |parts: &mut Vec<Part>| {
            for p in parts {
                let i: usize = p.shard[1..].parse().expect("shard number");
                p.shard = shards[i].file.clone();
            }
        };
        for f in &mut self.files {
            resolve(&mut f.parts);
        }
        for t in &mut self.tensors {
            resolve(&mut t.parts);
        }
        let total_bytes = shards.iter().map(|s| s.size).sum();
        Ok(Manifest { format: FORMAT.into(), version: VERSION, preset, config, files: self.files, tensors: self.tensors, shards, total_bytes })
    }
}

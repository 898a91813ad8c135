//! Hugging Face checkpoint folders: `model.safetensors` or a sharded
//! `model.safetensors.index.json`, tensors in bf16, f16 or f32.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context as _, Result};
use safetensors::{Dtype, SafeTensors};

/// Memory-mapped safetensors files with a name → file index.
pub struct SafetensorsFiles {
    files: Vec<(String, memmap2::Mmap)>,
    index: HashMap<String, usize>,
}

impl SafetensorsFiles {
    /// Opens `dir/<stem>.safetensors`, or every shard listed in `dir/<stem>.safetensors.index.json`.
    pub fn open(dir: &Path, stem: &str) -> Result<Self> {
        let single = dir.join(format!("{stem}.safetensors"));
        let index_path = dir.join(format!("{stem}.safetensors.index.json"));
        let names: Vec<PathBuf> = if single.exists() {
            vec![single]
        } else if index_path.exists() {
            let json = std::fs::read(&index_path).with_context(|| format!("cannot read {}", index_path.display()))?;
            let files = index_files(&json).with_context(|| index_path.display().to_string())?;
            files.into_iter().map(|f| dir.join(f)).collect()
        } else {
            bail!("{}: neither {stem}.safetensors nor {stem}.safetensors.index.json found", dir.display());
        };
        let mut files = Vec::new();
        let mut index = HashMap::new();
        for path in names {
            let f = std::fs::File::open(&path).with_context(|| format!("cannot open {}", path.display()))?;
            // SAFETY: the file is only read; the checkpoint must not be modified while loaded.
            let map = unsafe { memmap2::Mmap::map(&f) }.with_context(|| format!("cannot map {}", path.display()))?;
            let st = SafeTensors::deserialize(&map).map_err(|e| anyhow!("{}: not a valid safetensors file (truncated or bad header): {e}", path.display()))?;
            for name in st.names() {
                index.insert(name.to_string(), files.len());
            }
            files.push((path.display().to_string(), map));
        }
        Ok(SafetensorsFiles { files, index })
    }

    /// Each file's path and bytes, in file order (the streaming converter reads these).
    pub fn raw(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.files.iter().map(|(p, m)| (p.as_str(), &m[..]))
    }

    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    pub fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.index.keys().cloned().collect();
        v.sort();
        v
    }

    /// The stored dtype of `name` (bf16, f16, f32, ...), read from the header only.
    pub fn dtype(&self, name: &str) -> Result<String> {
        let &i = self.index.get(name).ok_or_else(|| anyhow!("the checkpoint has no tensor '{name}'"))?;
        let (path, map) = &self.files[i];
        let st = SafeTensors::deserialize(map).map_err(|e| anyhow!("{path}: {e}"))?;
        let t = st.tensor(name).map_err(|e| anyhow!("{path}: tensor '{name}': {e}"))?;
        Ok(format!("{:?}", t.dtype()).to_lowercase())
    }

    /// Returns (source dtype name, shape, values as f32).
    pub fn tensor_f32(&self, name: &str) -> Result<(String, Vec<usize>, Vec<f32>)> {
        let &i = self.index.get(name).ok_or_else(|| anyhow!("the checkpoint has no tensor '{name}'"))?;
        let (path, map) = &self.files[i];
        let st = SafeTensors::deserialize(map).map_err(|e| anyhow!("{path}: {e}"))?;
        let t = st.tensor(name).map_err(|e| anyhow!("{path}: tensor '{name}': {e}"))?;
        let shape = t.shape().to_vec();
        let data = t.data();
        let vals: Vec<f32> = match t.dtype() {
            Dtype::BF16 => data.chunks_exact(2).map(|b| f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16)).collect(),
            Dtype::F16 => data.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
            Dtype::F32 => data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
            other => {
                bail!("{path}: tensor '{name}' has dtype {other:?}; expected bf16, f16 or f32")
            }
        };
        let dtype = format!("{:?}", t.dtype()).to_lowercase();
        Ok((dtype, shape, vals))
    }
}

/// The shard files a `*.safetensors.index.json` names (sorted, each once). Shards must live beside
/// the index: an entry with a path is refused, never opened.
pub fn index_files(json: &[u8]) -> Result<Vec<String>> {
    let idx: serde_json::Value = serde_json::from_slice(json).context("not valid JSON")?;
    let map = idx.get("weight_map").and_then(|m| m.as_object()).ok_or_else(|| anyhow!("no weight_map"))?;
    let mut files = Vec::new();
    for (tensor, v) in map {
        let f = v.as_str().ok_or_else(|| anyhow!("weight_map entry '{tensor}' is not a file name"))?;
        if !plain_file_name(f) {
            bail!("weight_map entry '{tensor}' names '{f}', which is not a plain file name in the same folder");
        }
        files.push(f.to_string());
    }
    files.sort();
    files.dedup();
    if files.is_empty() {
        bail!("the weight_map is empty");
    }
    Ok(files)
}

/// A file name without any path: no separators, not `.`/`..`, no drive or NUL.
pub fn plain_file_name(f: &str) -> bool {
    !f.is_empty() && f != "." && f != ".." && !f.contains(['/', '\\', ':', '\0'])
}

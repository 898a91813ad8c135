//! Where a model comes from: a Hugging Face checkpoint folder (converted on load) or a weight
//! pack (already converted). Both hand out the same [`QuantBlob`]s for the same preset.

use anyhow::{anyhow, bail, Context as _, Result};

use super::pack::Manifest;
use super::preset::{matrix_dims, quant_for};
use super::quant::{Quant, QuantBlob};
use crate::config::JanusConfig;

/// A pending shard read.
pub type ReadFuture<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Vec<u8>>> + 'a>>;

/// Byte ranges of pack shards (a folder natively; IndexedDB in the browser, hence async).
pub trait ShardStore {
    fn read<'a>(&'a self, shard: &'a str, offset: u64, len: u64) -> ReadFuture<'a>;
}

pub struct Pack {
    pub manifest: Manifest,
    store: Box<dyn ShardStore>,
}

impl Pack {
    pub fn new(manifest: Manifest, store: Box<dyn ShardStore>) -> Self {
        Pack { manifest, store }
    }
    async fn read_parts(&self, parts: &[super::pack::Part], length: u64) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(length as usize);
        for p in parts {
            out.extend_from_slice(&self.store.read(&p.shard, p.offset, p.length).await?);
        }
        if out.len() as u64 != length {
            bail!("pack entry has {} bytes, manifest says {length}", out.len());
        }
        Ok(out)
    }
}

pub enum ModelSource {
    #[cfg(not(target_arch = "wasm32"))]
    Hf {
        dir: std::path::PathBuf,
        files: super::hf::SafetensorsFiles,
    },
    Pack(Pack),
}

impl ModelSource {
    /// Opens a pack folder (has `manifest.json`) or a Hugging Face checkpoint folder.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn open(dir: &std::path::Path) -> Result<Self> {
        if !dir.is_dir() {
            bail!("model folder {} does not exist", dir.display());
        }
        let manifest_path = dir.join("manifest.json");
        if manifest_path.exists() {
            let manifest = Manifest::parse(&std::fs::read(&manifest_path)?)?;
            return Ok(ModelSource::Pack(Pack::new(manifest, Box::new(DirShards::new(dir)))));
        }
        if !dir.join("config.json").exists() {
            bail!("{} holds neither manifest.json (weight pack) nor config.json (Hugging Face checkpoint)", dir.display());
        }
        let files = super::hf::SafetensorsFiles::open(dir, "model")?;
        Ok(ModelSource::Hf { dir: dir.to_path_buf(), files })
    }

    pub fn config(&self) -> Result<JanusConfig> {
        match self {
            #[cfg(not(target_arch = "wasm32"))]
            ModelSource::Hf { dir, .. } => {
                let path = dir.join("config.json");
                let bytes = std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
                JanusConfig::from_json_str(std::str::from_utf8(&bytes).context("config.json is not UTF-8")?)
            }
            ModelSource::Pack(p) => JanusConfig::from_value(p.manifest.config.clone()),
        }
    }

    /// A side file (tokenizer.json, preprocessor_config.json, vae/config.json, ...), if present.
    pub async fn file(&self, name: &str) -> Result<Option<Vec<u8>>> {
        match self {
            #[cfg(not(target_arch = "wasm32"))]
            ModelSource::Hf { dir, .. } => {
                let p = dir.join(name);
                if p.exists() {
                    Ok(Some(std::fs::read(&p).with_context(|| format!("cannot read {}", p.display()))?))
                } else {
                    Ok(None)
                }
            }
            ModelSource::Pack(p) => match p.manifest.file(name) {
                Some(f) => Ok(Some(p.read_parts(&f.parts, f.length).await.with_context(|| format!("pack file {name}"))?)),
                None => Ok(None),
            },
        }
    }

    /// The preset a pack was converted with (None for HF folders, which take any preset).
    pub fn fixed_preset(&self) -> Option<Quant> {
        match self {
            ModelSource::Pack(p) => Some(p.manifest.preset),
            #[allow(unreachable_patterns)]
            _ => None,
        }
    }

    /// The tensor `name` converted for `preset`; its shape must be `expected`.
    pub async fn blob(&self, name: &str, expected: &[usize], preset: Quant) -> Result<QuantBlob> {
        let quant = quant_for(preset, name, expected);
        let (rows, cols) = matrix_dims(expected);
        match self {
            #[cfg(not(target_arch = "wasm32"))]
            ModelSource::Hf { files, .. } => {
                let (_, shape, vals) = files.tensor_f32(name)?;
                if shape != expected {
                    bail!("tensor '{name}' has shape {shape:?}, but config.json implies {expected:?}");
                }
                QuantBlob::quantize(quant, rows, cols, &vals).with_context(|| format!("tensor '{name}'"))
            }
            ModelSource::Pack(p) => {
                if p.manifest.preset != preset {
                    bail!("this weight pack was converted with the {} preset; {} was requested", p.manifest.preset, preset);
                }
                let t = p.manifest.tensor(name).ok_or_else(|| anyhow!("the weight pack has no tensor '{name}'"))?;
                if t.shape != expected || t.quant != quant {
                    bail!("pack tensor '{name}' is {:?} {}, expected {expected:?} {quant}", t.shape, t.quant);
                }
                let data = p.read_parts(&t.parts, t.length).await.with_context(|| format!("pack tensor '{name}'"))?;
                QuantBlob::from_bytes(quant, rows, cols, data).with_context(|| format!("pack tensor '{name}'"))
            }
        }
    }

    /// A VAE tensor stored in a pack (as `vae.<diffusers name>`), as f32 with its shape.
    pub async fn pack_vae_tensor(&self, name: &str) -> Result<Option<(Vec<usize>, Vec<f32>)>> {
        #[allow(irrefutable_let_patterns)]
        let ModelSource::Pack(p) = self
        else {
            return Ok(None);
        };
        let Some(t) = p.manifest.tensor(&format!("vae.{name}")) else { return Ok(None) };
        let (rows, cols) = matrix_dims(&t.shape);
        let data = p.read_parts(&t.parts, t.length).await.with_context(|| format!("pack tensor 'vae.{name}'"))?;
        let blob = QuantBlob::from_bytes(t.quant, rows, cols, data).with_context(|| format!("pack tensor 'vae.{name}'"))?;
        Ok(Some((t.shape.clone(), blob.dequantize())))
    }

    /// Whether this pack carries a VAE decoder.
    pub fn pack_has_vae(&self) -> bool {
        matches!(self, ModelSource::Pack(p) if p.manifest.tensor("vae.decoder.conv_in.weight").is_some())
    }

    /// Names and source dtypes of every checkpoint tensor that `convert` should keep.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn hf_files(&self) -> Option<&super::hf::SafetensorsFiles> {
        match self {
            ModelSource::Hf { files, .. } => Some(files),
            _ => None,
        }
    }
}

/// Pack shards in a local folder; each shard's SHA-256 is checked the first time it is read.
#[cfg(not(target_arch = "wasm32"))]
pub struct DirShards {
    dir: std::path::PathBuf,
    verified: std::sync::Mutex<std::collections::HashSet<String>>,
}

#[cfg(not(target_arch = "wasm32"))]
impl DirShards {
    pub fn new(dir: &std::path::Path) -> Self {
        DirShards { dir: dir.to_path_buf(), verified: Default::default() }
    }
}

#[cfg(not(target_arch = "wasm32"))]
impl ShardStore for DirShards {
    fn read<'a>(&'a self, shard: &'a str, offset: u64, len: u64) -> ReadFuture<'a> {
        Box::pin(std::future::ready(self.read_sync(shard, offset, len)))
    }
}

#[cfg(not(target_arch = "wasm32"))]
impl DirShards {
    /// The first read of a shard hashes the whole file; later reads fetch only their range.
    fn read_sync(&self, shard: &str, offset: u64, len: u64) -> Result<Vec<u8>> {
        use std::io::{Read, Seek, SeekFrom};
        if shard.contains('/') || shard.contains("..") || !shard.ends_with(".bin") {
            bail!("bad shard name '{shard}'");
        }
        let path = self.dir.join(shard);
        let mut verified = self.verified.lock().unwrap();
        if !verified.contains(shard) {
            let data = std::fs::read(&path).with_context(|| format!("cannot read shard {}", path.display()))?;
            let sha = super::pack::sha256_hex(&data);
            if format!("{sha}.bin") != shard {
                bail!("shard {} is corrupt: its SHA-256 is {sha}", path.display());
            }
            verified.insert(shard.to_string());
        }
        drop(verified);
        let mut f = std::fs::File::open(&path).with_context(|| format!("cannot open shard {}", path.display()))?;
        let size = f.metadata()?.len();
        if offset.checked_add(len).is_none_or(|end| end > size) {
            bail!("shard {shard} is shorter than the manifest says");
        }
        f.seek(SeekFrom::Start(offset))?;
        let mut out = vec![0u8; len as usize];
        f.read_exact(&mut out).with_context(|| format!("cannot read shard {}", path.display()))?;
        Ok(out)
    }
}

/// Writes a pack of the Hugging Face folder `src` under `preset` into `out`, with the VAE of
/// `MODEL/vae` when present. Returns the manifest. See [`convert_with`].
#[cfg(not(target_arch = "wasm32"))]
pub fn convert(src: &ModelSource, preset: Quant, out: &std::path::Path, progress: impl FnMut(u64, u64, &str)) -> Result<Manifest> {
    convert_with(src, None, preset, out, super::pack::MAX_SHARD, progress)
}

/// Writes a pack through the same streaming converter the browser uses (so both make identical
/// packs): shards first, each written whole then renamed, and `manifest.json` last, so a folder
/// with a manifest is always complete. `vae` defaults to `MODEL/vae` when that exists; a smaller
/// `shard_size` gives tiny models several shards (tests of multi-shard downloads).
/// `progress(bytes read, bytes to read, tensor)`.
#[cfg(not(target_arch = "wasm32"))]
pub fn convert_with(
    src: &ModelSource,
    vae: Option<&std::path::Path>,
    preset: Quant,
    out: &std::path::Path,
    shard_size: usize,
    mut progress: impl FnMut(u64, u64, &str),
) -> Result<Manifest> {
    use super::stream::{header_len, Header, Sealed, StreamConverter, SIDE_FILES};
    let ModelSource::Hf { dir, files } = src else {
        bail!("the model is already a weight pack; convert reads a Hugging Face checkpoint folder");
    };
    let vae_dir = vae.map(|p| p.to_path_buf()).or_else(|| Some(dir.join("vae")).filter(|d| d.join("config.json").exists()));
    let vae = vae_dir.as_deref().map(VaeFolder::open).transpose()?;
    let read = |p: std::path::PathBuf| std::fs::read(&p).with_context(|| format!("cannot read {}", p.display()));
    let config = read(dir.join("config.json"))?;
    let mut side = Vec::new();
    for &name in SIDE_FILES {
        let path = match (name, &vae_dir) {
            ("vae/config.json", Some(v)) => v.join("config.json"),
            ("vae/config.json", None) => continue,
            _ => dir.join(name),
        };
        if path.exists() {
            side.push((name.to_string(), read(path)?));
        }
    }
    let mut inputs: Vec<(&str, &[u8])> = files.raw().collect();
    let header = |(label, map): (&str, &[u8])| -> Result<Header> {
        let n = header_len(label, map)? as usize;
        let json = map.get(8..8 + n).ok_or_else(|| anyhow!("{label}: not a valid safetensors file (truncated header)"))?;
        Header::parse(label, json, Some(map.len() as u64))
    };
    let model: Vec<Header> = inputs.iter().map(|&i| header(i)).collect::<Result<_>>()?;
    let vae_header = match &vae {
        Some(v) => {
            let raw: Vec<(&str, &[u8])> = v.files.raw().collect();
            if raw.len() != 1 {
                bail!("the VAE must be one diffusion_pytorch_model.safetensors file");
            }
            inputs.push(raw[0]);
            Some(header(raw[0])?)
        }
        None => None,
    };
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let _ = std::fs::remove_file(out.join("manifest.json"));
    let write = |sealed: Vec<Sealed>| -> Result<()> {
        for s in sealed {
            let tmp = out.join(format!("{}.partial", s.file));
            std::fs::write(&tmp, &s.data).with_context(|| format!("cannot write {}", tmp.display()))?;
            std::fs::rename(&tmp, out.join(&s.file))?;
        }
        Ok(())
    };
    let mut conv = StreamConverter::new(preset, shard_size, &config, side, &model, vae_header.as_ref(), None)?;
    while let Some(span) = conv.next_span() {
        let data = &inputs[span.input].1[span.start as usize..span.end as usize];
        for (k, chunk) in data.chunks(4 << 20).enumerate() {
            conv.push(span.input, span.start + (k << 22) as u64, chunk)?;
            write(conv.take_sealed())?;
            let (total, done) = conv.input_bytes();
            progress(done, total, conv.current_tensor().unwrap_or(""));
        }
    }
    let manifest = conv.finish()?;
    write(conv.take_sealed())?;
    let tmp = out.join("manifest.json.partial");
    std::fs::write(&tmp, serde_json::to_vec_pretty(&manifest)?)?;
    std::fs::rename(&tmp, out.join("manifest.json"))?;
    Ok(manifest)
}

/// A VAE in the diffusers layout (`config.json` + `diffusion_pytorch_model.safetensors`), e.g.
/// `MODEL/vae` or a separate `stabilityai/sdxl-vae` folder.
#[cfg(not(target_arch = "wasm32"))]
pub struct VaeFolder {
    pub cfg: crate::config::VaeConfig,
    pub files: super::hf::SafetensorsFiles,
}

#[cfg(not(target_arch = "wasm32"))]
impl VaeFolder {
    pub fn open(dir: &std::path::Path) -> Result<Self> {
        let cfg_path = dir.join("config.json");
        let bytes = std::fs::read(&cfg_path).with_context(|| format!("cannot read the VAE config {}", cfg_path.display()))?;
        let cfg = crate::config::VaeConfig::from_json(&bytes)?;
        let files = super::hf::SafetensorsFiles::open(dir, "diffusion_pytorch_model")?;
        Ok(VaeFolder { cfg, files })
    }

    /// A decoder tensor in canonical form (`decoder_tensors` name and shape), accepting the legacy
    /// attention names (`query`/`key`/`value`/`proj_attn`) and 1×1-conv attention weights.
    pub fn canonical(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let legacy = name.replace(".to_q.", ".query.").replace(".to_k.", ".key.").replace(".to_v.", ".value.").replace(".to_out.0.", ".proj_attn.");
        for n in [name, legacy.as_str()] {
            if let Some((s, v)) = self.tensor(n)? {
                let squeezed: Vec<usize> = s.iter().copied().filter(|&d| d != 1).collect();
                let want: Vec<usize> = shape.iter().copied().filter(|&d| d != 1).collect();
                if s != shape && squeezed != want {
                    bail!("VAE tensor '{n}' has shape {s:?}, expected {shape:?}");
                }
                return Ok(v);
            }
        }
        bail!("the VAE has no tensor '{name}'")
    }

    /// A tensor by diffusers name, as f32 with its shape; `None` when absent.
    pub fn tensor(&self, name: &str) -> Result<Option<(Vec<usize>, Vec<f32>)>> {
        if !self.files.contains(name) {
            return Ok(None);
        }
        let (_, shape, v) = self.files.tensor_f32(name)?;
        Ok(Some((shape, v)))
    }
}

#[cfg(not(target_arch = "wasm32"))]
impl crate::model::vae::VaeTensors for VaeFolder {
    async fn tensor(&self, name: &str) -> Result<Option<(Vec<usize>, Vec<f32>)>> {
        VaeFolder::tensor(self, name)
    }
}

impl crate::model::vae::VaeTensors for ModelSource {
    async fn tensor(&self, name: &str) -> Result<Option<(Vec<usize>, Vec<f32>)>> {
        self.pack_vae_tensor(name).await
    }
}

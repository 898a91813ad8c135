//! `janusflow synth`: a random checkpoint of any size in the Hugging Face layout (bf16
//! `model.safetensors` with every upstream tensor, the config, a small stand-in tokenizer), so the
//! real 2B-parameter shapes can be loaded and benchmarked without the real weights.

use std::io::Write;
use std::path::Path;

use anyhow::{Context as _, Result};
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

use crate::config::{JanusConfig, VaeConfig};

/// The tiny test tokenizer (byte-level BPE with DeepSeek's special tokens) used as a stand-in.
const TOKENIZER: &[u8] = include_bytes!("../../tests/fixtures/tiny/tokenizer.json");
const TOKENIZER_CONFIG: &[u8] = include_bytes!("../../tests/fixtures/tiny/tokenizer_config.json");
const SPECIAL_TOKENS: &[u8] = include_bytes!("../../tests/fixtures/tiny/special_tokens_map.json");

/// Writes the checkpoint; returns the parameter count. `progress(bytes_done, bytes_total)`.
pub fn write_checkpoint(config_json: &str, out: &Path, seed: u64, mut progress: impl FnMut(u64, u64)) -> Result<usize> {
    let cfg = JanusConfig::from_json_str(config_json)?;
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let table = cfg.expected_tensors();
    // safetensors: u64 header length, JSON header, then the data (offsets relative to the data start).
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), serde_json::json!({"format": "pt"}));
    let mut off = 0u64;
    for (name, shape) in &table {
        let bytes = shape.iter().product::<usize>() as u64 * 2;
        header.insert(name.clone(), serde_json::json!({"dtype": "BF16", "shape": shape, "data_offsets": [off, off + bytes]}));
        off += bytes;
    }
    let mut h = serde_json::to_vec(&serde_json::Value::Object(header))?;
    h.resize(h.len().next_multiple_of(8), b' ');
    let tmp = out.join("model.safetensors.partial");
    let mut f = std::io::BufWriter::with_capacity(8 << 20, std::fs::File::create(&tmp)?);
    f.write_all(&(h.len() as u64).to_le_bytes())?;
    f.write_all(&h)?;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut done = 0u64;
    let mut params = 0usize;
    let mut buf = Vec::new();
    for (name, shape) in &table {
        let n: usize = shape.iter().product();
        params += n;
        let fan_in: usize = if shape.len() > 1 { shape[1..].iter().product() } else { 1 };
        let vector = shape.iter().filter(|&&d| d > 1).count() <= 1;
        // Norm weights ≈ 1, biases ≈ 0, matrices uniform with the variance of 1/fan_in.
        let (center, amp) = if vector && name.contains("norm") {
            (1.0f32, 0.05f32)
        } else if vector {
            (0.0, 0.02)
        } else if name.contains("embed_tokens") || name.ends_with("pos_embed") {
            (0.0, 1.0)
        } else {
            (0.0, (3.0 / fan_in as f32).sqrt())
        };
        buf.clear();
        for _ in 0..n {
            let u = (rng.next_u32() >> 8) as f32 / (1u32 << 24) as f32 * 2.0 - 1.0;
            let v = center + amp * u;
            buf.extend_from_slice(&((v.to_bits() >> 16) as u16).to_le_bytes());
        }
        f.write_all(&buf)?;
        done += buf.len() as u64;
        progress(done, off);
    }
    f.flush()?;
    drop(f);
    std::fs::rename(&tmp, out.join("model.safetensors"))?;
    std::fs::write(out.join("config.json"), config_json)?;
    std::fs::write(out.join("tokenizer.json"), TOKENIZER)?;
    std::fs::write(out.join("tokenizer_config.json"), TOKENIZER_CONFIG)?;
    std::fs::write(out.join("special_tokens_map.json"), SPECIAL_TOKENS)?;
    // The image processor's settings as upstream writes them, sized for this config's encoder.
    let preprocessor = serde_json::json!({
        "background_color": [127, 127, 127], "do_normalize": true, "image_mean": [0.5, 0.5, 0.5],
        "image_processor_type": "VLMImageProcessor", "image_size": cfg.siglip.image_size, "image_std": [0.5, 0.5, 0.5],
        "min_size": 14, "processor_class": "VLChatProcessor", "rescale_factor": 1.0 / 255.0,
    });
    let processor = serde_json::json!({
        "add_special_token": false, "ignore_id": -100, "image_end_tag": "<end_of_image>",
        "image_gen_tag": "<｜begin▁of▁generation｜>", "image_start_tag": "<begin_of_image>", "image_tag": "<image_placeholder>",
        "mask_prompt": true, "num_image_tokens": cfg.siglip.tokens(), "processor_class": "VLChatProcessor", "sft_format": "deepseek",
    });
    std::fs::write(out.join("preprocessor_config.json"), serde_json::to_string_pretty(&preprocessor)?)?;
    std::fs::write(out.join("processor_config.json"), serde_json::to_string_pretty(&processor)?)?;
    params += write_vae(&out.join("vae"), &VaeConfig::sdxl(), seed ^ 0x5eed)?;
    Ok(params)
}

/// Writes a random SDXL-VAE decoder (f32, diffusers names, as `stabilityai/sdxl-vae` stores it)
/// with its `config.json`; returns the parameter count.
pub fn write_vae(dir: &Path, cfg: &VaeConfig, seed: u64) -> Result<usize> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let table = cfg.decoder_tensors();
    let mut header = serde_json::Map::new();
    let mut off = 0u64;
    for (name, shape) in &table {
        let bytes = shape.iter().product::<usize>() as u64 * 4;
        header.insert(name.clone(), serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [off, off + bytes]}));
        off += bytes;
    }
    let mut h = serde_json::to_vec(&serde_json::Value::Object(header))?;
    h.resize(h.len().next_multiple_of(8), b' ');
    let tmp = dir.join("diffusion_pytorch_model.safetensors.partial");
    let mut f = std::io::BufWriter::with_capacity(8 << 20, std::fs::File::create(&tmp)?);
    f.write_all(&(h.len() as u64).to_le_bytes())?;
    f.write_all(&h)?;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut params = 0;
    for (name, shape) in &table {
        let n: usize = shape.iter().product();
        params += n;
        let fan_in: usize = if shape.len() > 1 { shape[1..].iter().product() } else { 1 };
        let (center, amp) = if shape.len() == 1 && name.contains("norm") {
            (1.0f32, 0.05f32)
        } else if shape.len() == 1 {
            (0.0, 0.02)
        } else {
            (0.0, (3.0 / fan_in as f32).sqrt())
        };
        for _ in 0..n {
            let u = (rng.next_u32() >> 8) as f32 / (1u32 << 24) as f32 * 2.0 - 1.0;
            f.write_all(&(center + amp * u).to_le_bytes())?;
        }
    }
    f.flush()?;
    drop(f);
    std::fs::rename(&tmp, dir.join("diffusion_pytorch_model.safetensors"))?;
    let c = serde_json::json!({
        "_class_name": "AutoencoderKL",
        "act_fn": "silu",
        "block_out_channels": cfg.block_out_channels,
        "in_channels": 3,
        "latent_channels": cfg.latent_channels,
        "layers_per_block": cfg.layers_per_block,
        "norm_num_groups": cfg.norm_groups,
        "out_channels": cfg.out_channels,
        "scaling_factor": cfg.scaling_factor,
        "up_block_types": vec!["UpDecoderBlock2D"; cfg.block_out_channels.len()],
    });
    std::fs::write(dir.join("config.json"), serde_json::to_vec_pretty(&c)?)?;
    Ok(params)
}

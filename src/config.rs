//! `config.json` of a JanusFlow checkpoint (spec §1.2 and §9), with the LlamaConfig defaults
//! filled in, every derived dimension computed once, and the full expected tensor table.

use anyhow::{anyhow, bail, Context as _, Result};
use serde_json::Value;

#[derive(Clone, Debug, PartialEq)]
pub struct LlmConfig {
    pub hidden: usize,
    pub intermediate: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub vocab: usize,
    pub max_positions: usize,
    pub rms_eps: f32,
    pub rope_theta: f64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct SiglipConfig {
    pub image_size: usize,
    pub patch: usize,
    pub width: usize,
    /// Blocks actually built (and stored): min(L, L + select_layer + 1).
    pub layers: usize,
    pub heads: usize,
    pub mlp_hidden: usize,
}

impl SiglipConfig {
    pub fn tokens(&self) -> usize {
        (self.image_size / self.patch).pow(2)
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct GenConfig {
    pub in_channels: usize,  // latent channels (4)
    pub enc_channels: usize, // encoder width (768)
    pub dec_in: usize,       // decoder LLM-branch width (768)
    pub dec_channels: usize, // decoder ConvNeXt width (LLM branch + skip)
    pub out_channels: usize, // 4
    pub blocks: usize,       // ConvNeXt blocks in each mid block
    pub kernel: usize,       // patchify kernel = stride (2)
    pub image_size: usize,   // generated image side (384)
    /// VAE downsampling factor 2^(len(block_out_channels) − 1) (SDXL-VAE: 8), from vae/config.json.
    pub vae_factor: usize,
}

impl GenConfig {
    /// Latent side (48 for the real model).
    pub fn latent_size(&self) -> usize {
        self.image_size / self.vae_factor
    }
    /// Generation tokens per image (576).
    pub fn tokens(&self) -> usize {
        (self.latent_size() / self.kernel).pow(2)
    }
}

/// The diffusers `AutoencoderKL` settings the decoder needs (`vae/config.json`, spec §3.7).
#[derive(Clone, Debug, PartialEq)]
pub struct VaeConfig {
    pub block_out_channels: Vec<usize>,
    pub layers_per_block: usize,
    pub latent_channels: usize,
    pub out_channels: usize,
    pub norm_groups: usize,
    pub scaling_factor: f32,
    pub shift_factor: f32,
    pub mid_attention: bool,
}

impl VaeConfig {
    /// SDXL-VAE (`stabilityai/sdxl-vae`).
    pub fn sdxl() -> Self {
        VaeConfig {
            block_out_channels: vec![128, 256, 512, 512],
            layers_per_block: 2,
            latent_channels: 4,
            out_channels: 3,
            norm_groups: 32,
            scaling_factor: 0.13025,
            shift_factor: 0.0,
            mid_attention: true,
        }
    }

    pub fn from_json(bytes: &[u8]) -> Result<Self> {
        let v: Value = serde_json::from_slice(bytes).context("vae/config.json is not valid JSON")?;
        let d = Self::sdxl();
        let num = |k: &str, dflt: usize| -> Result<usize> {
            match v.get(k) {
                None | Some(Value::Null) => Ok(dflt),
                Some(x) => x
                    .as_u64()
                    .filter(|&n| n > 0 && n <= caps::WIDTH as u64)
                    .map(|n| n as usize)
                    .ok_or_else(|| anyhow!("vae/config.json: `{k}` must be a whole number between 1 and {}", caps::WIDTH)),
            }
        };
        let blocks = match v.get("block_out_channels") {
            None => d.block_out_channels.clone(),
            Some(a) => a
                .as_array()
                .and_then(|a| a.iter().map(|x| x.as_u64().map(|n| n as usize)).collect::<Option<Vec<_>>>())
                .ok_or_else(|| anyhow!("vae/config.json: `block_out_channels` must be a list of whole numbers"))?,
        };
        let c = VaeConfig {
            layers_per_block: num("layers_per_block", d.layers_per_block)?,
            latent_channels: num("latent_channels", d.latent_channels)?,
            out_channels: num("out_channels", d.out_channels)?,
            norm_groups: num("norm_num_groups", d.norm_groups)?,
            scaling_factor: v.get("scaling_factor").and_then(Value::as_f64).unwrap_or(d.scaling_factor as f64) as f32,
            shift_factor: v.get("shift_factor").and_then(Value::as_f64).unwrap_or(0.0) as f32,
            mid_attention: v.get("mid_block_add_attention").and_then(Value::as_bool).unwrap_or(true),
            block_out_channels: blocks,
        };
        if c.block_out_channels.is_empty()
            || c.block_out_channels.len() > caps::VAE_LEVELS
            || c.block_out_channels.iter().any(|&b| b == 0 || b > caps::WIDTH || b % c.norm_groups != 0)
            || c.layers_per_block > caps::BLOCKS
            || c.latent_channels > caps::CHANNELS
            || c.out_channels > caps::CHANNELS
            || !(c.scaling_factor.is_finite() && c.scaling_factor > 0.0)
            || !c.shift_factor.is_finite()
        {
            bail!(
                "vae/config.json: inconsistent settings (block_out_channels {:?}, norm_num_groups {}, scaling_factor {})",
                c.block_out_channels,
                c.norm_groups,
                c.scaling_factor
            );
        }
        Ok(c)
    }

    pub fn factor(&self) -> usize {
        1 << (self.block_out_channels.len() - 1)
    }

    /// The decoder's tensors (diffusers names, linear attention weights), `post_quant_conv` included.
    pub fn decoder_tensors(&self) -> Vec<(String, Vec<usize>)> {
        let mut t: Vec<(String, Vec<usize>)> = Vec::new();
        let mut conv = |t: &mut Vec<(String, Vec<usize>)>, p: String, cin: usize, cout: usize, k: usize| {
            t.push((format!("{p}.weight"), vec![cout, cin, k, k]));
            t.push((format!("{p}.bias"), vec![cout]));
        };
        let norm = |t: &mut Vec<(String, Vec<usize>)>, p: String, c: usize| {
            t.push((format!("{p}.weight"), vec![c]));
            t.push((format!("{p}.bias"), vec![c]));
        };
        let resnet = |t: &mut Vec<(String, Vec<usize>)>,
                      conv: &mut dyn FnMut(&mut Vec<(String, Vec<usize>)>, String, usize, usize, usize),
                      p: String,
                      cin: usize,
                      cout: usize| {
            norm(t, format!("{p}.norm1"), cin);
            conv(t, format!("{p}.conv1"), cin, cout, 3);
            norm(t, format!("{p}.norm2"), cout);
            conv(t, format!("{p}.conv2"), cout, cout, 3);
            if cin != cout {
                conv(t, format!("{p}.conv_shortcut"), cin, cout, 1);
            }
        };
        let z = self.latent_channels;
        let rev: Vec<usize> = self.block_out_channels.iter().rev().copied().collect();
        let c0 = rev[0];
        conv(&mut t, "post_quant_conv".into(), z, z, 1);
        conv(&mut t, "decoder.conv_in".into(), z, c0, 3);
        resnet(&mut t, &mut conv, "decoder.mid_block.resnets.0".into(), c0, c0);
        if self.mid_attention {
            let a = "decoder.mid_block.attentions.0";
            norm(&mut t, format!("{a}.group_norm"), c0);
            for l in ["to_q", "to_k", "to_v", "to_out.0"] {
                t.push((format!("{a}.{l}.weight"), vec![c0, c0]));
                t.push((format!("{a}.{l}.bias"), vec![c0]));
            }
        }
        resnet(&mut t, &mut conv, "decoder.mid_block.resnets.1".into(), c0, c0);
        let mut prev = c0;
        for (i, &c) in rev.iter().enumerate() {
            for j in 0..=self.layers_per_block {
                resnet(&mut t, &mut conv, format!("decoder.up_blocks.{i}.resnets.{j}"), if j == 0 { prev } else { c }, c);
            }
            if i + 1 < rev.len() {
                conv(&mut t, format!("decoder.up_blocks.{i}.upsamplers.0.conv"), c, c, 3);
            }
            prev = c;
        }
        norm(&mut t, "decoder.conv_norm_out".into(), prev);
        conv(&mut t, "decoder.conv_out".into(), prev, self.out_channels, 3);
        t
    }
}

#[derive(Clone, Debug)]
pub struct JanusConfig {
    pub llm: LlmConfig,
    pub siglip: SiglipConfig,
    pub gen: GenConfig,
    pub raw: Value,
}

fn get<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(v, |v, k| v.get(k))
}

/// Upper bounds on every size a config may ask for: generous for any sane variant of the model
/// (the real one in brackets), small enough that a hostile or mistyped config.json fails here
/// with a message naming the field, instead of as a huge allocation or a wrapped product later.
pub mod caps {
    pub const HIDDEN: usize = 16384; // 2048
    pub const INTERMEDIATE: usize = 65536; // 5632
    pub const LAYERS: usize = 256; // 24
    pub const HEADS: usize = 256; // 16
    pub const VOCAB: usize = 1 << 20; // 102400
    pub const POSITIONS: usize = 1 << 20; // 16384
    pub const IMAGE: usize = 4096; // 384
    pub const WIDTH: usize = 16384; // SigLIP 1024, UViT 768
    pub const CHANNELS: usize = 64; // latent 4
    pub const BLOCKS: usize = 64; // 2
    pub const KERNEL: usize = 16; // 2
    pub const VAE_LEVELS: usize = 8; // 4
    /// The largest single tensor, in elements (the real model's largest holds 210 M); its f32
    /// bytes still fit wasm32's 32-bit sizes.
    pub const TENSOR_ELEMENTS: u64 = 1 << 29;
}

fn usize_at(v: &Value, path: &str, max: usize) -> Result<usize> {
    let n = get(v, path)
        .ok_or_else(|| anyhow!("config.json: missing '{path}'"))?
        .as_u64()
        .filter(|&n| n > 0)
        .ok_or_else(|| anyhow!("config.json: '{path}' must be a positive integer"))?;
    if n > max as u64 {
        bail!("config.json: '{path}' is {n}, more than this engine supports ({max})");
    }
    Ok(n as usize)
}

fn opt_usize(v: &Value, path: &str, max: usize) -> Result<Option<usize>> {
    match get(v, path) {
        None | Some(Value::Null) => Ok(None),
        Some(_) => usize_at(v, path, max).map(Some),
    }
}

/// A finite number greater than zero (epsilons, RoPE base, ratios), or `default` when absent.
fn opt_f64(v: &Value, path: &str, default: f64) -> Result<f64> {
    match get(v, path) {
        None | Some(Value::Null) => Ok(default),
        Some(x) => x.as_f64().filter(|x| x.is_finite() && *x > 0.0).ok_or_else(|| anyhow!("config.json: '{path}' must be a finite number > 0")),
    }
}

/// Known SigLIP presets: (patch, width, layers, heads, mlp_ratio).
fn siglip_preset(name: &str) -> Option<(usize, usize, usize, usize, f64)> {
    match name {
        "siglip_large_patch16_384" | "siglip_large_patch16_256" => Some((16, 1024, 24, 16, 4.0)),
        "siglip_so400m_patch14_384" => Some((14, 1152, 27, 16, 3.7362)),
        _ => None,
    }
}

impl JanusConfig {
    pub fn from_json_str(s: &str) -> Result<Self> {
        let raw: Value = serde_json::from_str(s).context("config.json is not valid JSON")?;
        Self::from_value(raw)
    }

    pub fn from_value(raw: Value) -> Result<Self> {
        let l = "language_config";
        let hidden = usize_at(&raw, &format!("{l}.hidden_size"), caps::HIDDEN)?;
        let heads = usize_at(&raw, &format!("{l}.num_attention_heads"), caps::HEADS)?;
        let kv_heads = opt_usize(&raw, &format!("{l}.num_key_value_heads"), caps::HEADS)?.unwrap_or(heads);
        if hidden % heads != 0 {
            bail!("config.json: hidden_size {hidden} is not divisible by num_attention_heads {heads}");
        }
        if heads % kv_heads != 0 {
            bail!("config.json: num_attention_heads {heads} is not a multiple of num_key_value_heads {kv_heads}");
        }
        if kv_heads != heads {
            bail!(
                "config.json: grouped-query attention (num_key_value_heads {kv_heads} ≠ {heads}) is not supported; JanusFlow uses plain multi-head attention"
            );
        }
        let head_dim = hidden / heads;
        if head_dim % 4 != 0 || head_dim > 256 {
            bail!("config.json: head dim {head_dim} must be a multiple of 4 (the attention kernel reads keys as vec4) and at most 256");
        }
        let llm = LlmConfig {
            hidden,
            intermediate: usize_at(&raw, &format!("{l}.intermediate_size"), caps::INTERMEDIATE)?,
            layers: usize_at(&raw, &format!("{l}.num_hidden_layers"), caps::LAYERS)?,
            heads,
            kv_heads,
            head_dim,
            vocab: usize_at(&raw, &format!("{l}.vocab_size"), caps::VOCAB)?,
            max_positions: opt_usize(&raw, &format!("{l}.max_position_embeddings"), caps::POSITIONS)?.unwrap_or(2048),
            rms_eps: opt_f64(&raw, &format!("{l}.rms_norm_eps"), 1e-6)? as f32,
            rope_theta: opt_f64(&raw, &format!("{l}.rope_theta"), 10000.0)?,
        };
        if get(&raw, &format!("{l}.rope_scaling")).is_some_and(|v| !v.is_null()) {
            bail!("config.json: rope_scaling is not supported");
        }
        if get(&raw, &format!("{l}.tie_word_embeddings")).and_then(Value::as_bool) == Some(true) {
            bail!("config.json: tied word embeddings are not supported (JanusFlow has a separate lm_head)");
        }

        let u = "vision_und_enc_config.params";
        let name = get(&raw, &format!("{u}.model_name")).and_then(Value::as_str).unwrap_or("siglip_large_patch16_384");
        let preset = siglip_preset(name);
        let pick = |key: &str, idx: usize| -> Result<usize> {
            let max = [caps::IMAGE, caps::WIDTH, caps::LAYERS, caps::HEADS][idx];
            match opt_usize(&raw, &format!("{u}.{key}"), max)? {
                Some(v) => Ok(v),
                None => preset.map(|p| [p.0, p.1, p.2, p.3][idx]).ok_or_else(|| anyhow!("config.json: unknown SigLIP model '{name}' and no explicit '{key}'")),
            }
        };
        let patch = pick("patch_size", 0)?;
        let width = pick("width", 1)?;
        let total_layers = pick("layers", 2)?;
        let sheads = pick("heads", 3)?;
        let mlp_ratio = opt_f64(&raw, &format!("{u}.mlp_ratio"), preset.map(|p| p.4).unwrap_or(4.0))?;
        let image_size = opt_usize(&raw, &format!("{u}.image_size"), caps::IMAGE)?.unwrap_or(384);
        if mlp_ratio > 16.0 {
            bail!("config.json: '{u}.mlp_ratio' is {mlp_ratio}, more than this engine supports (16)");
        }
        let select_layer = match get(&raw, &format!("{u}.select_layer")) {
            None | Some(Value::Null) => -1,
            Some(v) => v.as_i64().ok_or_else(|| anyhow!("config.json: '{u}.select_layer' must be a whole number"))?,
        };
        // Negative counts from the end (−1: all blocks); positive is a block count.
        let total = total_layers as i64;
        let layers = if select_layer <= 0 { total.min(total.saturating_add(select_layer).saturating_add(1)) } else { select_layer };
        if layers <= 0 || layers > total || patch > image_size || image_size % patch != 0 || width % sheads != 0 || (width / sheads) % 4 != 0 {
            bail!("config.json: inconsistent SigLIP settings (image_size {image_size}, patch {patch}, width {width}, heads {sheads}, select_layer {select_layer})");
        }
        let siglip =
            SiglipConfig { image_size, patch, width, layers: layers as usize, heads: sheads, mlp_hidden: ((width as f64 * mlp_ratio) as usize).max(1) };

        let e = "vision_gen_enc_config.params";
        let d = "vision_gen_dec_config.params";
        let last = |path: &str| -> Result<usize> {
            get(&raw, path)
                .and_then(Value::as_array)
                .and_then(|a| a.last())
                .and_then(Value::as_u64)
                .filter(|&v| v > 0 && v <= caps::WIDTH as u64)
                .map(|v| v as usize)
                .ok_or_else(|| anyhow!("config.json: '{path}' must be a list ending in a positive integer ≤ {}", caps::WIDTH))
        };
        let enc_channels = last(&format!("{e}.block_out_channels"))?;
        let dec_in = usize_at(&raw, &format!("{d}.in_channels"), caps::WIDTH)?;
        let kernel = opt_usize(&raw, &format!("{e}.kernel_size"), caps::KERNEL)?.unwrap_or(2);
        for (who, p) in [("vision_gen_enc_config", e), ("vision_gen_dec_config", d)] {
            if let Some(h) = opt_usize(&raw, &format!("{p}.hidden_size"), caps::HIDDEN)? {
                if h != hidden {
                    bail!("config.json: {who}.params.hidden_size {h} differs from the language model's {hidden}");
                }
            }
        }
        let gen = GenConfig {
            in_channels: opt_usize(&raw, &format!("{e}.input_channels"), caps::CHANNELS)?.unwrap_or(4),
            enc_channels,
            dec_in,
            dec_channels: dec_in + enc_channels,
            out_channels: opt_usize(&raw, &format!("{d}.out_channels"), caps::CHANNELS)?.unwrap_or(4),
            blocks: opt_usize(&raw, &format!("{e}.layers_in_middle"), caps::BLOCKS)?.unwrap_or(2),
            kernel,
            image_size: opt_usize(&raw, "gen_image_size", caps::IMAGE)?.unwrap_or(384),
            vae_factor: 8,
        };
        let c = JanusConfig { llm, siglip, gen, raw };
        // Every shape product checked once here, so later size arithmetic cannot wrap.
        for (name, shape) in c.expected_tensors() {
            let n = shape.iter().try_fold(1u64, |a, &d| a.checked_mul(d as u64));
            if n.is_none_or(|n| n > caps::TENSOR_ELEMENTS) {
                bail!("config.json: tensor '{name}' would have shape {shape:?}, more than this engine supports");
            }
        }
        Ok(c)
    }

    /// Every tensor of `model.safetensors` with its shape, in upstream names (spec §1.3–1.5),
    /// including the unused SigLIP `attn_pool.*`.
    pub fn expected_tensors(&self) -> Vec<(String, Vec<usize>)> {
        let mut t: Vec<(String, Vec<usize>)> = Vec::new();
        let mut add = |name: String, shape: &[usize]| t.push((name, shape.to_vec()));
        let c = &self.llm;
        let lm = "language_model.model";
        add(format!("{lm}.embed_tokens.weight"), &[c.vocab, c.hidden]);
        for i in 0..c.layers {
            let p = format!("{lm}.layers.{i}");
            add(format!("{p}.input_layernorm.weight"), &[c.hidden]);
            for w in ["q_proj", "k_proj", "v_proj", "o_proj"] {
                add(format!("{p}.self_attn.{w}.weight"), &[c.hidden, c.hidden]);
            }
            add(format!("{p}.post_attention_layernorm.weight"), &[c.hidden]);
            add(format!("{p}.mlp.gate_proj.weight"), &[c.intermediate, c.hidden]);
            add(format!("{p}.mlp.up_proj.weight"), &[c.intermediate, c.hidden]);
            add(format!("{p}.mlp.down_proj.weight"), &[c.hidden, c.intermediate]);
        }
        add(format!("{lm}.norm.weight"), &[c.hidden]);
        add("language_model.lm_head.weight".into(), &[c.vocab, c.hidden]);

        let s = &self.siglip;
        let (w, m) = (s.width, s.mlp_hidden);
        let v = "vision_und_enc_model.vision_tower";
        add(format!("{v}.patch_embed.proj.weight"), &[w, 3, s.patch, s.patch]);
        add(format!("{v}.patch_embed.proj.bias"), &[w]);
        add(format!("{v}.pos_embed"), &[1, s.tokens(), w]);
        for i in 0..s.layers {
            let p = format!("{v}.blocks.{i}");
            for (n, shape) in [
                ("norm1.weight", vec![w]),
                ("norm1.bias", vec![w]),
                ("attn.qkv.weight", vec![3 * w, w]),
                ("attn.qkv.bias", vec![3 * w]),
                ("attn.proj.weight", vec![w, w]),
                ("attn.proj.bias", vec![w]),
                ("norm2.weight", vec![w]),
                ("norm2.bias", vec![w]),
                ("mlp.fc1.weight", vec![m, w]),
                ("mlp.fc1.bias", vec![m]),
                ("mlp.fc2.weight", vec![w, m]),
                ("mlp.fc2.bias", vec![w]),
            ] {
                add(format!("{p}.{n}"), &shape);
            }
        }
        add(format!("{v}.norm.weight"), &[w]);
        add(format!("{v}.norm.bias"), &[w]);
        for (n, shape) in [
            ("latent", vec![1, 1, w]),
            ("q.weight", vec![w, w]),
            ("q.bias", vec![w]),
            ("kv.weight", vec![2 * w, w]),
            ("kv.bias", vec![2 * w]),
            ("proj.weight", vec![w, w]),
            ("proj.bias", vec![w]),
            ("norm.weight", vec![w]),
            ("norm.bias", vec![w]),
            ("mlp.fc1.weight", vec![m, w]),
            ("mlp.fc1.bias", vec![m]),
            ("mlp.fc2.weight", vec![w, m]),
            ("mlp.fc2.bias", vec![w]),
        ] {
            add(format!("{v}.attn_pool.{n}"), &shape);
        }
        let h = c.hidden;
        add("vision_und_enc_aligner.weight".into(), &[h, w]);
        add("vision_und_enc_aligner.bias".into(), &[h]);
        add("beg_of_und_embed".into(), &[1, h]);

        let g = &self.gen;
        let e = "vision_gen_enc_model";
        let tproj = g.enc_channels; // sinusoid width = encoder width (768)
        add(format!("{e}.time_embed.linear_1.weight"), &[h, tproj]);
        add(format!("{e}.time_embed.linear_1.bias"), &[h]);
        add(format!("{e}.time_embed.linear_2.weight"), &[h, h]);
        add(format!("{e}.time_embed.linear_2.bias"), &[h]);
        add(format!("{e}.in_conv.weight"), &[g.enc_channels, g.in_channels, g.kernel, g.kernel]);
        add(format!("{e}.in_conv.bias"), &[g.enc_channels]);
        let convnext = |add: &mut dyn FnMut(String, &[usize]), p: String, ch: usize| {
            add(format!("{p}.depthwise.weight"), &[ch, 1, 7, 7]);
            add(format!("{p}.depthwise.bias"), &[ch]);
            add(format!("{p}.norm.weight"), &[ch]);
            add(format!("{p}.channelwise_linear_1.weight"), &[4 * ch, ch]);
            add(format!("{p}.channelwise_linear_1.bias"), &[4 * ch]);
            add(format!("{p}.channelwise_norm.weight"), &[1, 1, 1, 4 * ch]);
            add(format!("{p}.channelwise_norm.bias"), &[1, 1, 1, 4 * ch]);
            add(format!("{p}.channelwise_linear_2.weight"), &[ch, 4 * ch]);
            add(format!("{p}.channelwise_linear_2.bias"), &[ch]);
            add(format!("{p}.cond_embeds_mapper.weight"), &[2 * ch, h]);
            add(format!("{p}.cond_embeds_mapper.bias"), &[2 * ch]);
        };
        for j in 0..g.blocks {
            convnext(&mut add, format!("{e}.mid_block.res_blocks.{j}"), g.enc_channels);
        }
        add("vision_gen_enc_aligner.weight".into(), &[h, g.enc_channels]);
        add("vision_gen_enc_aligner.bias".into(), &[h]);
        let d = "vision_gen_dec_model";
        add(format!("{d}.input_norm.weight"), &[g.dec_in]);
        for j in 0..g.blocks {
            convnext(&mut add, format!("{d}.mid_block.res_blocks.{j}"), g.dec_channels);
        }
        add(format!("{d}.out_convs.0.norm.weight"), &[g.dec_channels]);
        add(format!("{d}.out_convs.0.unpatch_conv.weight"), &[g.out_channels * g.kernel * g.kernel, g.dec_channels, 1, 1]);
        add(format!("{d}.out_convs.0.unpatch_conv.bias"), &[g.out_channels * g.kernel * g.kernel]);
        add("vision_gen_dec_aligner_norm.weight".into(), &[h]);
        add("vision_gen_dec_aligner.weight".into(), &[g.dec_in, h]);
        add("vision_gen_dec_aligner.bias".into(), &[g.dec_in]);
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_errors() {
        let bad = r#"{"language_config": {"hidden_size": 30, "num_attention_heads": 4}}"#;
        assert!(JanusConfig::from_json_str(bad).unwrap_err().to_string().contains("not divisible"));
        assert!(JanusConfig::from_json_str("{").is_err());
    }
}

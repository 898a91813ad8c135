//! Which format each tensor takes under a quantization preset (shared by the HF loader and
//! `convert`, so that a pack holds exactly what loading the HF folder produces).

use super::quant::{Quant, GROUP};

/// True for tensors that are never loaded (SigLIP's unused attention-pool head).
pub fn skipped(name: &str) -> bool {
    name.contains(".attn_pool.")
}

/// The format of `name` (shape `shape`) under `preset`:
/// - language-model matrices (every linear layer, `embed_tokens`, `lm_head`): the preset itself,
///   but `lm_head` under `q4a` is q8: the output layer decides every next token, and 4 bits there
///   cost most of q4a's error on the trained fixture (KL 0.052 → 0.0035 against f32 for 13 % more
///   bytes read per token; `benchmarks/quant-ablation-trained-2026-11-28.md`), as llama.cpp's
///   Q4_K_M keeps its output layer at 6 bits;
/// - SigLIP matrices: q8 for the q4/q8 presets (the encoder is small and precision-sensitive);
/// - other matrices and convolutions: f16 (f32 under the f32 preset);
/// - vectors (norm weights, biases) and embeddings added to activations: f32 always.
pub fn quant_for(preset: Quant, name: &str, shape: &[usize]) -> Quant {
    let vector = shape.iter().filter(|&&d| d > 1).count() <= 1
        || name.ends_with(".bias")
        || name.contains("norm")
        || name.ends_with("pos_embed")
        || name == "beg_of_und_embed";
    if vector || preset == Quant::F32 {
        return Quant::F32;
    }
    let cols: usize = shape[1..].iter().product();
    let q = if name == "language_model.lm_head.weight" && preset == Quant::Q4A {
        Quant::Q8
    } else if name.starts_with("language_model.") {
        preset
    } else if name.starts_with("vision_und_enc_model.") && shape.len() == 2 {
        if preset == Quant::F16 {
            Quant::F16
        } else {
            Quant::Q8
        }
    } else {
        Quant::F16
    };
    if q.is_grouped() && cols % GROUP != 0 {
        Quant::F16
    } else {
        q
    }
}

/// rows × cols view of a tensor shape (first dim × the rest).
pub fn matrix_dims(shape: &[usize]) -> (usize, usize) {
    match shape {
        [] => (1, 1),
        [n] => (1, *n),
        [r, rest @ ..] => (*r, rest.iter().product()),
    }
}

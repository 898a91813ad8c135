//! Checkpoint reading (Hugging Face safetensors folders and web weight packs) and quantization.

pub mod quant;

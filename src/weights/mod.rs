//! Checkpoint reading (Hugging Face safetensors folders and web weight packs) and quantization.

#[cfg(not(target_arch = "wasm32"))]
pub mod hf;
pub mod pack;
pub mod preset;
pub mod quant;
pub mod source;
pub mod stream;
#[cfg(not(target_arch = "wasm32"))]
pub mod synth;

pub use source::ModelSource;

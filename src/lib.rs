//! JanusFlow Web: DeepSeek's JanusFlow-1.3B on WebGPU, natively (wgpu) and in the browser (wasm).
//!
//! Layers, each using only those below it: `gpu` (device, buffers, WGSL launchers) →
//! `config`, `weights`, `text` (inputs) → `model` (one struct per network part) → `engine`.

#[cfg(not(target_arch = "wasm32"))]
pub mod bench;
pub mod config;
pub mod engine;
pub mod error;
pub mod gpu;
pub mod image_io;
pub mod model;
#[cfg(not(target_arch = "wasm32"))]
pub mod npy;
pub mod text;
#[cfg(target_arch = "wasm32")]
pub mod web;
pub mod weights;

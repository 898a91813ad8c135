//! The network parts, one struct per part with `load` and `forward`.

pub mod llm;
pub mod siglip;
pub mod uvit;
pub mod vae;

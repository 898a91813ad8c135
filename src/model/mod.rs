//! The network parts, one struct per part with `load` and `forward`.

pub mod llm;
pub mod siglip;
pub mod uvit;
pub mod vae;

use std::sync::Arc;

use anyhow::Result;

use crate::gpu::{Gpu, Tensor, Weight};
use crate::weights::quant::Quant;
use crate::weights::ModelSource;

/// Reads tensors of one model source under one preset and uploads them (awaiting each read, so
/// that in the browser weights stream from storage to the GPU one tensor at a time).
pub struct Loader<'a> {
    pub gpu: &'a Gpu,
    pub src: &'a ModelSource,
    pub preset: Quant,
}

impl Loader<'_> {
    /// A matrix (any shape viewed as rows × the rest) in the preset's format for it.
    pub async fn mat(&self, name: &str, shape: &[usize]) -> Result<Arc<Weight>> {
        Weight::upload(self.gpu, name, &self.src.blob(name, shape, self.preset).await?)
    }
    /// Any tensor as dense f32 (after the preset's rounding).
    pub async fn dense(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let blob = self.src.blob(name, shape, self.preset).await?;
        Ok(Tensor::from_f32(self.gpu, name, &[shape.iter().product()], &blob.dequantize()))
    }
    /// A vector [n] as f32.
    pub async fn vector(&self, name: &str, n: usize) -> Result<Tensor> {
        self.dense(name, &[n]).await
    }
}

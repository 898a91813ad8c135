//! GPU-resident tensors: f32 activations and (possibly quantized) weight matrices split into
//! row chunks that each fit one storage binding.

use std::sync::Arc;

use anyhow::{bail, Result};

use super::Gpu;
use crate::weights::quant::{Quant, QuantBlob};

/// A dense f32 buffer with a logical shape (row-major).
pub struct Tensor {
    pub buf: wgpu::Buffer,
    pub shape: Vec<usize>,
}

impl Tensor {
    pub fn zeros(gpu: &Gpu, label: &str, shape: &[usize]) -> Self {
        let n: usize = shape.iter().product();
        Tensor { buf: gpu.storage_buffer(label, n as u64 * 4), shape: shape.to_vec() }
    }
    pub fn from_f32(gpu: &Gpu, label: &str, shape: &[usize], data: &[f32]) -> Self {
        assert_eq!(shape.iter().product::<usize>(), data.len());
        Tensor { buf: gpu.storage_buffer_init(label, bytemuck::cast_slice(data)), shape: shape.to_vec() }
    }
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One row range of a weight matrix in its own buffer.
pub struct WeightChunk {
    pub row0: usize,
    pub rows: usize,
    pub buf: wgpu::Buffer,
    /// Word offset of the group scales inside `buf` (quantized formats).
    pub soff: u32,
    pub bytes: u64,
}

/// A weight matrix [n, k] (torch Linear layout: out × in) on the GPU.
pub struct Weight {
    pub name: String,
    pub quant: Quant,
    pub n: usize,
    pub k: usize,
    pub chunks: Vec<WeightChunk>,
}

impl Weight {
    /// Uploads a quantized blob, splitting rows so that no chunk exceeds the binding budget.
    pub fn upload(gpu: &Gpu, name: &str, blob: &QuantBlob) -> Result<Arc<Self>> {
        Self::upload_with_budget(gpu, name, blob, gpu.max_binding())
    }

    /// As [`Weight::upload`] with an explicit per-chunk byte budget (tests exercise chunking with it).
    pub fn upload_with_budget(gpu: &Gpu, name: &str, blob: &QuantBlob, max: u64) -> Result<Arc<Self>> {
        // The device self-check probes the products in every format its weights take.
        gpu.note_weight_format(blob.quant);
        Self::upload_chunks(gpu, name, blob, max)
    }

    /// As [`Weight::upload`], but not counted among the device's weight formats (the self-check's
    /// own probe weights).
    pub(crate) fn upload_probe(gpu: &Gpu, blob: &QuantBlob) -> Result<Arc<Self>> {
        Self::upload_chunks(gpu, "selfcheck", blob, gpu.max_binding())
    }

    fn upload_chunks(gpu: &Gpu, name: &str, blob: &QuantBlob, max: u64) -> Result<Arc<Self>> {
        let (n, k) = (blob.rows, blob.cols);
        if k % 4 != 0 {
            bail!("tensor {name}: inner dimension {k} is not a multiple of 4");
        }
        // Chunks are padded to whole 16 B quads below: keep the padded size within the budget.
        let max = max & !15;
        let row_bytes = blob.row_bytes() as u64;
        // Multiples of 4 rows: even counts keep the f16 scale pairs of every chunk word-aligned,
        // and a decode product's sums of squares cover whole row quads (matvec.wgsl, NORM_COPY).
        let mut rows_per = ((max / row_bytes.max(1)) as usize).max(4) & !3;
        if rows_per >= n {
            rows_per = n;
        }
        let mut chunks = Vec::new();
        let mut row0 = 0;
        while row0 < n {
            let rows = rows_per.min(n - row0);
            let (data, soff) = blob.chunk_bytes(row0, rows);
            // Whole 16 B quads (the buffer's zeroed tail, not a grown copy of a chunk of up to
            // 128 MiB): the GPU-shape matrix–vector kernels bind chunks as vec4<u32> (W_VEC4 in
            // quant.wgsl), which would drop a short last quad of scales.
            let buf = gpu.storage_buffer(&format!("{name}[{row0}..]"), data.len().next_multiple_of(16) as u64);
            gpu.queue.write_buffer(&buf, 0, &data);
            chunks.push(WeightChunk { row0, rows, buf, soff, bytes: data.len() as u64 });
            row0 += rows;
        }
        Ok(Arc::new(Weight { name: name.to_string(), quant: blob.quant, n, k, chunks }))
    }

    pub fn bytes(&self) -> u64 {
        self.chunks.iter().map(|c| c.bytes).sum()
    }
}

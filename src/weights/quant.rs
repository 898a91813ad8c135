//! Weight formats and their byte layouts (the layout every shader decodes, see shaders/quant.wgsl).
//!
//! A matrix of `rows × cols` (torch layout, row-major) becomes one blob:
//!   payload for all rows (f32, f16, i8 or 4-bit) followed, for q8/q4, by one f16 scale per group of
//!   32 consecutive elements of a row, padded to a whole word. Quantization is symmetric.

use anyhow::{bail, Result};
use half::f16;
use serde::{Deserialize, Serialize};

pub const GROUP: usize = 32;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Quant {
    F32,
    F16,
    Q8,
    Q4,
}

impl Quant {
    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "f32" => Quant::F32,
            "f16" => Quant::F16,
            "q8" => Quant::Q8,
            "q4" => Quant::Q4,
            _ => bail!("unknown quantization '{s}' (expected q4, q8, f16 or f32)"),
        })
    }
    pub fn name(self) -> &'static str {
        match self {
            Quant::F32 => "f32",
            Quant::F16 => "f16",
            Quant::Q8 => "q8",
            Quant::Q4 => "q4",
        }
    }
    /// The shader define that selects this format.
    pub fn define(self) -> &'static str {
        match self {
            Quant::F32 => "F32",
            Quant::F16 => "F16",
            Quant::Q8 => "Q8",
            Quant::Q4 => "Q4",
        }
    }
    pub fn is_grouped(self) -> bool {
        matches!(self, Quant::Q8 | Quant::Q4)
    }
    /// Payload bytes for `n` elements (without scales).
    fn payload_bytes(self, n: usize) -> usize {
        match self {
            Quant::F32 => n * 4,
            Quant::F16 => n * 2,
            Quant::Q8 => n,
            Quant::Q4 => n / 2,
        }
    }
}

impl std::fmt::Display for Quant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A matrix in one of the formats, ready to upload.
#[derive(Clone, Debug, PartialEq)]
pub struct QuantBlob {
    pub quant: Quant,
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<u8>,
}

impl QuantBlob {
    pub fn quantize(quant: Quant, rows: usize, cols: usize, x: &[f32]) -> Result<Self> {
        if rows.checked_mul(cols) != Some(x.len()) {
            bail!("{} values for a {rows}×{cols} matrix", x.len());
        }
        if let Some(i) = x.iter().position(|v| !v.is_finite()) {
            bail!("value {} of {} is {} (the weights are damaged)", i, x.len(), x[i]);
        }
        if quant.is_grouped() && cols % GROUP != 0 {
            bail!("{quant} needs rows that are a multiple of {GROUP} elements (got {cols})");
        }
        let n = rows * cols;
        let mut data = Vec::with_capacity(Self::byte_len(quant, rows, cols));
        match quant {
            Quant::F32 => data.extend_from_slice(bytemuck::cast_slice(x)),
            Quant::F16 => {
                for &v in x {
                    data.extend_from_slice(&f16::from_f32(v).to_le_bytes());
                }
            }
            Quant::Q8 | Quant::Q4 => {
                // Each group: its scale and its packed levels (16 or 32 bytes).
                let group = |g: &[f32]| -> (f16, Vec<u8>) {
                    if quant == Quant::Q8 {
                        let (d, q) = quantize_q8(g);
                        (d, q.iter().map(|&v| v as u8).collect())
                    } else {
                        let (d, q) = quantize_q4(g);
                        (d, q.chunks_exact(2).map(|p| p[0] | (p[1] << 4)).collect())
                    }
                };
                // Whole tensors (loading an HF folder) use every core natively; results are
                // the same as in order.
                #[cfg(not(target_arch = "wasm32"))]
                let groups: Vec<(f16, Vec<u8>)> = if n >= 1 << 16 {
                    use rayon::prelude::*;
                    x.par_chunks_exact(GROUP).map(group).collect()
                } else {
                    x.chunks_exact(GROUP).map(group).collect()
                };
                #[cfg(target_arch = "wasm32")]
                let groups: Vec<(f16, Vec<u8>)> = x.chunks_exact(GROUP).map(group).collect();
                let mut scales = Vec::with_capacity(n / GROUP * 2);
                for (d, q) in groups {
                    scales.extend_from_slice(&d.to_le_bytes());
                    data.extend_from_slice(&q);
                }
                data.extend_from_slice(&scales);
            }
        }
        data.resize(data.len().next_multiple_of(4), 0);
        Ok(QuantBlob { quant, rows, cols, data })
    }

    pub fn byte_len(quant: Quant, rows: usize, cols: usize) -> usize {
        Self::byte_len_unpadded(quant, rows, cols).next_multiple_of(4)
    }

    /// Payload plus scales, before the final padding to a whole word.
    pub fn byte_len_unpadded(quant: Quant, rows: usize, cols: usize) -> usize {
        let n = rows * cols;
        let s = if quant.is_grouped() { n / GROUP * 2 } else { 0 };
        quant.payload_bytes(n) + s
    }

    /// Wraps bytes read from a weight pack, checking the length.
    pub fn from_bytes(quant: Quant, rows: usize, cols: usize, data: Vec<u8>) -> Result<Self> {
        let want = Self::byte_len(quant, rows, cols);
        if data.len() != want {
            bail!("expected {want} bytes for a {rows}×{cols} {quant} tensor, found {}", data.len());
        }
        let blob = QuantBlob { quant, rows, cols, data };
        blob.check_finite()?;
        Ok(blob)
    }

    /// Fails on a NaN or infinite value (f32, f16) or group scale (q8, q4): damaged weights
    /// would otherwise turn every answer into garbage without a word.
    pub fn check_finite(&self) -> Result<()> {
        let n = self.rows * self.cols;
        let bad16 = |b: &[u8]| u16::from_le_bytes([b[0], b[1]]) & 0x7c00 == 0x7c00;
        let (what, first) = match self.quant {
            Quant::F32 => ("value", self.data[..n * 4].chunks_exact(4).position(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) & 0x7f80_0000 == 0x7f80_0000)),
            Quant::F16 => ("value", self.data[..n * 2].chunks_exact(2).position(bad16)),
            Quant::Q8 | Quant::Q4 => {
                let payload = self.quant.payload_bytes(n);
                ("group scale", self.data[payload..payload + n / GROUP * 2].chunks_exact(2).position(bad16))
            }
        };
        match first {
            Some(i) => bail!("{what} {i} is NaN or infinite (the weights are damaged)"),
            None => Ok(()),
        }
    }

    /// Bytes per row (payload + scales), for sizing chunks.
    pub fn row_bytes(&self) -> usize {
        self.quant.payload_bytes(self.cols) + if self.quant.is_grouped() { self.cols / GROUP * 2 } else { 0 }
    }

    /// The bytes of rows [row0, row0 + rows) as a standalone blob, and the word offset of its scales.
    /// `row0` must be even for quantized formats (keeps scale pairs word-aligned).
    pub fn chunk_bytes(&self, row0: usize, rows: usize) -> (Vec<u8>, u32) {
        let payload_all = self.quant.payload_bytes(self.rows * self.cols);
        let pr = self.quant.payload_bytes(self.cols);
        if row0 == 0 && rows == self.rows {
            return (self.data.clone(), (payload_all / 4) as u32);
        }
        let mut out = self.data[row0 * pr..(row0 + rows) * pr].to_vec();
        out.resize(out.len().next_multiple_of(4), 0);
        let soff = (out.len() / 4) as u32;
        if self.quant.is_grouped() {
            let gpr = self.cols / GROUP;
            let s0 = payload_all + row0 * gpr * 2;
            out.extend_from_slice(&self.data[s0..s0 + rows * gpr * 2]);
            out.resize(out.len().next_multiple_of(4), 0);
        }
        (out, soff)
    }

    /// A matrix made of rows of other matrices with the same format and row length, in the order
    /// given as (matrix, row) pairs; bytes are copied, never re-quantized. The fused decode path
    /// stacks Q|K|V and interleaves gate|up this way at upload (the pack format is unchanged).
    pub fn from_rows(parts: &[&QuantBlob], order: impl Iterator<Item = (usize, usize)>) -> Result<Self> {
        let (quant, cols) = (parts[0].quant, parts[0].cols);
        if parts.iter().any(|b| b.quant != quant || b.cols != cols) {
            bail!("matrices stacked together must share their format and row length");
        }
        let pr = quant.payload_bytes(cols);
        if quant == Quant::Q4 && cols % 2 != 0 {
            bail!("q4 rows must hold an even number of values");
        }
        let sr = if quant.is_grouped() { cols / GROUP * 2 } else { 0 };
        let (mut payload, mut scales, mut rows) = (Vec::new(), Vec::new(), 0);
        for (b, r) in order {
            let blob = parts[b];
            payload.extend_from_slice(&blob.data[r * pr..(r + 1) * pr]);
            let s0 = quant.payload_bytes(blob.rows * cols) + r * sr;
            scales.extend_from_slice(&blob.data[s0..s0 + sr]);
            rows += 1;
        }
        payload.extend_from_slice(&scales);
        payload.resize(payload.len().next_multiple_of(4), 0);
        Ok(QuantBlob { quant, rows, cols, data: payload })
    }

    /// Decodes back to f32 (tests and CPU references).
    pub fn dequantize(&self) -> Vec<f32> {
        let n = self.rows * self.cols;
        match self.quant {
            Quant::F32 => bytemuck::pod_collect_to_vec(&self.data[..n * 4]),
            Quant::F16 => self.data[..n * 2].chunks_exact(2).map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
            Quant::Q8 | Quant::Q4 => {
                let payload = self.quant.payload_bytes(n);
                let scale = |g: usize| {
                    let b = &self.data[payload + g * 2..payload + g * 2 + 2];
                    f16::from_le_bytes([b[0], b[1]]).to_f32()
                };
                (0..n)
                    .map(|e| {
                        let q = if self.quant == Quant::Q8 { self.data[e] as i8 as f32 } else { ((self.data[e / 2] >> ((e % 2) * 4)) & 15) as f32 - 8.0 };
                        q * scale(e / GROUP)
                    })
                    .collect()
            }
        }
    }
}

fn quantize_q8(g: &[f32]) -> (f16, Vec<i8>) {
    let amax = g.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = f16::from_f32(amax / 127.0);
    let df = d.to_f32();
    let q = g.iter().map(|&v| if df == 0.0 { 0 } else { (v / df).round().clamp(-127.0, 127.0) as i8 }).collect();
    (d, q)
}

/// Round half away from zero, without a libm call (`f32::round` is one on baseline x86-64 and
/// dominated conversion time). The same IEEE operations give the same levels natively and in wasm.
#[inline]
fn round_level(x: f32) -> i32 {
    (x + 0.5f32.copysign(x)) as i32
}

/// Independent partial sums per group (in a fixed order, so results are the same everywhere):
/// they break the add-latency chain and let the compiler use SIMD for the whole search.
const LANES: usize = 8;

/// Symmetric 4-bit with a least-squares scale: several candidate scales around Q4_0's
/// (largest-magnitude value → −8) are tried, and for each the rounded levels are refitted with the
/// scale that minimises the squared error; the best candidate wins. Stored level = q + 8.
fn quantize_q4(g: &[f32]) -> (f16, [u8; GROUP]) {
    let g: &[f32; GROUP] = g.try_into().expect("a whole group");
    let mx = g.iter().fold(0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
    if mx == 0.0 {
        return (f16::ZERO, [8; GROUP]);
    }
    let (mut best_err, mut best_d, mut best_q) = (f32::MAX, f16::ZERO, [0i32; GROUP]);
    let mut q = [0i32; GROUP];
    for step in -10..=10 {
        let iscale = -(8.0 + step as f32 * 0.1) / mx;
        let (mut sx, mut sq) = ([0f32; LANES], [0i32; LANES]);
        for (c, lanes) in g.chunks_exact(LANES).enumerate() {
            for (k, &v) in lanes.iter().enumerate() {
                let l = round_level(v * iscale).clamp(-8, 7);
                q[c * LANES + k] = l;
                sx[k] += v * l as f32;
                sq[k] += l * l;
            }
        }
        let sqq: i32 = sq.iter().sum();
        if sqq == 0 {
            continue;
        }
        let sxq: f32 = sx.iter().sum();
        // f32 → f16 on purpose: `half` converts f64 via f32 where the CPU has F16C and directly
        // elsewhere (wasm); one rounding path keeps browser-made packs identical to native ones.
        let d = f16::from_f32(sxq / sqq as f32);
        let df = d.to_f32();
        if df == 0.0 {
            continue;
        }
        // Re-round with the stored (f16) scale so the levels are optimal for what the GPU sees.
        let mut e = [0f32; LANES];
        for (c, lanes) in g.chunks_exact(LANES).enumerate() {
            for (k, &v) in lanes.iter().enumerate() {
                let l = round_level(v / df).clamp(-8, 7);
                q[c * LANES + k] = l;
                let r = v - l as f32 * df;
                e[k] += r * r;
            }
        }
        let err: f32 = e.iter().sum();
        if err < best_err {
            (best_err, best_d, best_q) = (err, d, q);
        }
    }
    if best_err == f32::MAX {
        // Every candidate scale underflowed f16: the group is all but zero.
        return (f16::ZERO, [8; GROUP]);
    }
    (best_d, best_q.map(|l| (l + 8) as u8))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_error_is_bounded() {
        let x: Vec<f32> = (0..64 * 96).map(|i| ((i * 7919 % 1000) as f32 / 500.0 - 1.0) * 0.3).collect();
        for (q, tol) in [(Quant::F32, 0.0), (Quant::F16, 1e-3), (Quant::Q8, 0.3 / 127.0), (Quant::Q4, 0.3 / 7.0)] {
            let b = QuantBlob::quantize(q, 64, 96, &x).unwrap();
            assert_eq!(b.data.len(), QuantBlob::byte_len(q, 64, 96));
            let y = b.dequantize();
            let err = x.iter().zip(&y).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
            assert!(err <= tol * 1.01 + 1e-7, "{q}: {err}");
        }
    }

    #[test]
    fn chunks_reassemble() {
        let x: Vec<f32> = (0..10 * 64).map(|i| (i as f32).sin()).collect();
        let b = QuantBlob::quantize(Quant::Q4, 10, 64, &x).unwrap();
        let (c, soff) = b.chunk_bytes(4, 6);
        let sub = QuantBlob::quantize(Quant::Q4, 6, 64, &x[4 * 64..]).unwrap();
        assert_eq!(c, sub.data);
        assert_eq!(soff as usize, 6 * 32 / 4);
    }

    #[test]
    fn rows_stack_and_interleave_exactly() {
        for q in [Quant::F32, Quant::F16, Quant::Q8, Quant::Q4] {
            let mk = |seed: f32, rows: usize| {
                let x: Vec<f32> = (0..rows * 64).map(|i| (i as f32 * 0.37 + seed).sin()).collect();
                QuantBlob::quantize(q, rows, 64, &x).unwrap()
            };
            let (a, b) = (mk(0.0, 3), mk(1.0, 3));
            let stacked = QuantBlob::from_rows(&[&a, &b], (0..3).map(|r| (0, r)).chain((0..3).map(|r| (1, r)))).unwrap();
            let want: Vec<f32> = a.dequantize().into_iter().chain(b.dequantize()).collect();
            assert_eq!(stacked.dequantize(), want, "{q}");
            let inter = QuantBlob::from_rows(&[&a, &b], (0..6).map(|r| (r % 2, r / 2))).unwrap();
            let (da, db, di) = (a.dequantize(), b.dequantize(), inter.dequantize());
            for r in 0..6 {
                let src = if r % 2 == 0 { &da } else { &db };
                assert_eq!(di[r * 64..(r + 1) * 64], src[(r / 2) * 64..(r / 2 + 1) * 64], "{q} row {r}");
            }
            assert_eq!(inter.data.len(), QuantBlob::byte_len(q, 6, 64));
        }
    }
}

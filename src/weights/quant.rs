//! Weight formats and their byte layouts (the layout every shader decodes, see shaders/quant.wgsl).
//!
//! A matrix of `rows × cols` (torch layout, row-major) becomes one blob:
//!   payload for all rows (f32, f16, i8 or 4-bit) followed by the scales, padded to a whole word:
//!   - q8, q4: one f16 scale per group of 32 consecutive elements of a row (symmetric);
//!   - q4a: per row, one word holding two f16 (d, dmin), then one u16 per group holding two bytes
//!     (sc, m), padded to a whole word per row. The group's weight is `q · (d·sc) − dmin·m` with
//!     `q` in 0..15: asymmetric groups with 8-bit sub-scales under one f16 pair per row (the idea
//!     of llama.cpp's Q4_K, with the row as super-block), 4.52 bits per weight at 2048 columns,
//!     the same bytes as q4 to within 0.4 %.

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
    Q4A,
}

impl Quant {
    /// Every format, in declaration order.
    pub const ALL: [Quant; 5] = [Quant::F32, Quant::F16, Quant::Q8, Quant::Q4, Quant::Q4A];

    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "f32" => Quant::F32,
            "f16" => Quant::F16,
            "q8" => Quant::Q8,
            "q4" => Quant::Q4,
            "q4a" => Quant::Q4A,
            _ => bail!("unknown quantization '{s}' (expected q4a, q4, q8, f16 or f32)"),
        })
    }
    pub fn name(self) -> &'static str {
        match self {
            Quant::F32 => "f32",
            Quant::F16 => "f16",
            Quant::Q8 => "q8",
            Quant::Q4 => "q4",
            Quant::Q4A => "q4a",
        }
    }
    /// The shader define that selects this format.
    pub fn define(self) -> &'static str {
        match self {
            Quant::F32 => "F32",
            Quant::F16 => "F16",
            Quant::Q8 => "Q8",
            Quant::Q4 => "Q4",
            Quant::Q4A => "Q4A",
        }
    }
    /// Formats with 32-element groups (rows must hold a whole number of groups).
    pub fn is_grouped(self) -> bool {
        matches!(self, Quant::Q8 | Quant::Q4 | Quant::Q4A)
    }
    /// Formats whose weights are 4-bit levels (two per byte).
    pub fn is_4bit(self) -> bool {
        matches!(self, Quant::Q4 | Quant::Q4A)
    }
    /// Scale bytes of one row of `cols` elements (0 for f32/f16). q8/q4 keep their groups'
    /// scales contiguous over the whole matrix, so a row's share is exact only for an even group
    /// count; every use multiplies it by a row count, and the totals pad to a word.
    pub fn scale_row_bytes(self, cols: usize) -> usize {
        match self {
            Quant::F32 | Quant::F16 => 0,
            Quant::Q8 | Quant::Q4 => cols / GROUP * 2,
            Quant::Q4A => q4a_row_words(cols) * 4,
        }
    }
    /// Payload bytes for `n` elements (without scales).
    fn payload_bytes(self, n: usize) -> usize {
        match self {
            Quant::F32 => n * 4,
            Quant::F16 => n * 2,
            Quant::Q8 => n,
            Quant::Q4 | Quant::Q4A => n / 2,
        }
    }
}

/// Words of q4a scales per row: the (d, dmin) word and one u16 per group, rounded up to a word.
pub fn q4a_row_words(cols: usize) -> usize {
    1 + (cols / GROUP).div_ceil(2)
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
            Quant::Q4A => {
                #[cfg(not(target_arch = "wasm32"))]
                let out: Vec<(Vec<u8>, Vec<u8>)> = if n >= 1 << 16 {
                    use rayon::prelude::*;
                    x.par_chunks_exact(cols).map(quantize_q4a_row).collect()
                } else {
                    x.chunks_exact(cols).map(quantize_q4a_row).collect()
                };
                #[cfg(target_arch = "wasm32")]
                let out: Vec<(Vec<u8>, Vec<u8>)> = x.chunks_exact(cols).map(quantize_q4a_row).collect();
                for (payload, _) in &out {
                    data.extend_from_slice(payload);
                }
                for (_, scales) in &out {
                    data.extend_from_slice(scales);
                }
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
        quant.payload_bytes(rows * cols) + rows * quant.scale_row_bytes(cols)
    }

    /// Byte offset of the scales: the payload's length (a whole number of words for q4a, whose
    /// rows hold whole 32-element groups, so every row's scale words are aligned).
    fn scale_offset(&self) -> usize {
        self.quant.payload_bytes(self.rows * self.cols)
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
            Quant::Q4A => {
                let (s0, rw) = (self.scale_offset(), q4a_row_words(self.cols) * 4);
                let bad = (0..self.rows).position(|r| self.data[s0 + r * rw..s0 + r * rw + 4].chunks_exact(2).any(bad16));
                ("row scale of row", bad)
            }
        };
        match first {
            Some(i) => bail!("{what} {i} is NaN or infinite (the weights are damaged)"),
            None => Ok(()),
        }
    }

    /// Bytes per row (payload + scales), for sizing chunks.
    pub fn row_bytes(&self) -> usize {
        self.quant.payload_bytes(self.cols) + self.quant.scale_row_bytes(self.cols)
    }

    /// The bytes of rows [row0, row0 + rows) as a standalone blob, and the word offset of its scales.
    /// `row0` must be even for quantized formats (keeps scale pairs word-aligned).
    pub fn chunk_bytes(&self, row0: usize, rows: usize) -> (Vec<u8>, u32) {
        let payload_all = self.scale_offset();
        let pr = self.quant.payload_bytes(self.cols);
        if row0 == 0 && rows == self.rows {
            return (self.data.clone(), (payload_all / 4) as u32);
        }
        let mut out = self.data[row0 * pr..(row0 + rows) * pr].to_vec();
        out.resize(out.len().next_multiple_of(4), 0);
        let soff = (out.len() / 4) as u32;
        let sr = self.quant.scale_row_bytes(self.cols);
        if sr > 0 {
            let s0 = payload_all + row0 * sr;
            out.extend_from_slice(&self.data[s0..s0 + rows * sr]);
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
        if quant.is_4bit() && cols % 2 != 0 {
            bail!("4-bit rows must hold an even number of values");
        }
        let sr = quant.scale_row_bytes(cols);
        let (mut payload, mut scales, mut rows) = (Vec::new(), Vec::new(), 0);
        for (b, r) in order {
            let blob = parts[b];
            payload.extend_from_slice(&blob.data[r * pr..(r + 1) * pr]);
            let s0 = blob.scale_offset() + r * sr;
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
            Quant::Q4A => {
                let (s0, rw) = (self.scale_offset(), q4a_row_words(self.cols) * 4);
                let h = |o: usize| f16::from_le_bytes([self.data[o], self.data[o + 1]]).to_f32();
                (0..n)
                    .map(|e| {
                        let (r, k) = (e / self.cols, e % self.cols);
                        let base = s0 + r * rw;
                        let (d, dmin) = (h(base), h(base + 2));
                        let (sc, m) = (self.data[base + 4 + (k / GROUP) * 2], self.data[base + 4 + (k / GROUP) * 2 + 1]);
                        let q = ((self.data[e / 2] >> ((e % 2) * 4)) & 15) as f32;
                        q * (d * sc as f32) - dmin * m as f32
                    })
                    .collect()
            }
        }
    }
}

/// One group's asymmetric 4-bit fit: `x ≈ scale · l − min` with levels `l` in 0..15, `min ≥ 0`,
/// minimising Σ w·(error)² with weights `w`. Candidate level assignments come from 11 inverse
/// scales around 15 / (max − min); for each, scale and min are refitted by weighted least squares
/// (min clamped to ≥ 0: the group's range always covers 0 or starts above it) and the candidate's
/// error follows from the same sums, so a candidate costs one pass with no division; the best
/// wins. Returns (scale, min).
fn fit_q4a_group(x: &[f32], w: &[f32]) -> (f32, f32) {
    let (mut lo, mut hi) = (x[0], x[0]);
    let (mut sw, mut swx, mut swxx) = ([0f32; LANES], [0f32; LANES], [0f32; LANES]);
    for (xs, ws) in x.chunks_exact(LANES).zip(w.chunks_exact(LANES)) {
        for k in 0..LANES {
            lo = lo.min(xs[k]);
            hi = hi.max(xs[k]);
            sw[k] += ws[k];
            swx[k] += ws[k] * xs[k];
            swxx[k] += ws[k] * xs[k] * xs[k];
        }
    }
    let (sw, swx, swxx): (f32, f32, f32) = (sw.iter().sum(), swx.iter().sum(), swxx.iter().sum());
    let lo = lo.min(0.0);
    if hi == lo {
        return (0.0, -lo);
    }
    let (mut best, mut best_s, mut best_m) = (f32::MAX, (hi - lo) / 15.0, -lo);
    for step in 0..=10 {
        let iscale = (14.0 + 0.2 * step as f32) / (hi - lo);
        let (mut sl, mut sl2, mut sxl) = ([0f32; LANES], [0f32; LANES], [0f32; LANES]);
        for (xs, ws) in x.chunks_exact(LANES).zip(w.chunks_exact(LANES)) {
            for k in 0..LANES {
                let l = round_level((xs[k] - lo) * iscale).clamp(0, 15) as f32;
                let wl = ws[k] * l;
                sl[k] += wl;
                sl2[k] += wl * l;
                sxl[k] += wl * xs[k];
            }
        }
        let (sl, sl2, sxl): (f32, f32, f32) = (sl.iter().sum(), sl2.iter().sum(), sxl.iter().sum());
        let det = sw * sl2 - sl * sl;
        if det <= 0.0 {
            continue;
        }
        let mut scale = (sw * sxl - swx * sl) / det;
        let mut offset = (sl2 * swx - sl * sxl) / det; // x ≈ scale·l + offset
        if offset > 0.0 {
            offset = 0.0;
            scale = sxl / sl2;
        }
        if !(scale > 0.0) {
            continue;
        }
        // Σ w·(scale·l + offset − x)², expanded over the sums above.
        let e = scale * scale * sl2 + 2.0 * scale * offset * sl - 2.0 * scale * sxl + offset * offset * sw - 2.0 * offset * swx + swxx;
        if e < best {
            (best, best_s, best_m) = (e, scale, -offset);
        }
    }
    (best_s, best_m)
}

/// Level of `v` for a group's (scale, min), given 1 / scale (0 when the scale is 0).
#[inline]
fn q4a_level(v: f32, min: f32, inv_scale: f32) -> i32 {
    round_level((v + min) * inv_scale).clamp(0, 15)
}

/// One row in q4a: every group fitted (weights |x| + the row's RMS, which favours the large
/// weights a trained network relies on), then the groups' scales and mins quantized to 8-bit codes
/// under the row's f16 (d, dmin), each group taking the best of the 3 × 3 codes around the nearest
/// for its weighted error, with the levels re-rounded against what the GPU will see.
/// Returns (payload: cols/2 bytes, scales: `q4a_row_words(cols)` words).
fn quantize_q4a_row(x: &[f32]) -> (Vec<u8>, Vec<u8>) {
    let cols = x.len();
    let ss: f32 = x.iter().map(|v| v * v).sum();
    let rms = (ss / cols as f32).sqrt();
    let w: Vec<f32> = x.iter().map(|v| rms + v.abs()).collect();
    let fits: Vec<(f32, f32)> = x.chunks_exact(GROUP).zip(w.chunks_exact(GROUP)).map(|(g, wg)| fit_q4a_group(g, wg)).collect();
    let smax = fits.iter().fold(0f32, |m, f| m.max(f.0));
    let mmax = fits.iter().fold(0f32, |m, f| m.max(f.1));
    let d = f16::from_f32(smax / 255.0);
    let dmin = f16::from_f32(mmax / 255.0);
    let (df, dminf) = (d.to_f32(), dmin.to_f32());
    let mut scales = Vec::with_capacity(q4a_row_words(cols) * 4);
    scales.extend_from_slice(&d.to_le_bytes());
    scales.extend_from_slice(&dmin.to_le_bytes());
    let mut payload = vec![0u8; cols / 2];
    let code = |v: f32, unit: f32| if unit > 0.0 { round_level(v / unit).clamp(0, 255) } else { 0 };
    for (gi, ((g, wg), &(s, m))) in x.chunks_exact(GROUP).zip(w.chunks_exact(GROUP)).zip(&fits).enumerate() {
        let (c_s, c_m) = (code(s, df), code(m, dminf));
        let mut best = (f32::MAX, 0u8, 0u8);
        for sc in (c_s - 1).max(0)..=(c_s + 1).min(255) {
            let se = df * sc as f32;
            let inv = if se > 0.0 { 1.0 / se } else { 0.0 };
            for mc in (c_m - 1).max(0)..=(c_m + 1).min(255) {
                let me = dminf * mc as f32;
                let mut e = [0f32; LANES];
                for (xs, ws) in g.chunks_exact(LANES).zip(wg.chunks_exact(LANES)) {
                    for k in 0..LANES {
                        let r = q4a_level(xs[k], me, inv) as f32 * se - me - xs[k];
                        e[k] += ws[k] * r * r;
                    }
                }
                let e: f32 = e.iter().sum();
                if e < best.0 {
                    best = (e, sc as u8, mc as u8);
                }
            }
        }
        let (_, sc, mc) = best;
        scales.push(sc);
        scales.push(mc);
        let (se, me) = (df * sc as f32, dminf * mc as f32);
        let inv = if se > 0.0 { 1.0 / se } else { 0.0 };
        for (j, &v) in g.iter().enumerate() {
            payload[(gi * GROUP + j) / 2] |= (q4a_level(v, me, inv) as u8) << ((j % 2) * 4);
        }
    }
    scales.resize(q4a_row_words(cols) * 4, 0);
    (payload, scales)
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
        for (q, tol) in [(Quant::F32, 0.0), (Quant::F16, 1e-3), (Quant::Q8, 0.3 / 127.0), (Quant::Q4, 0.3 / 7.0), (Quant::Q4A, 0.6 / 15.0)] {
            let b = QuantBlob::quantize(q, 64, 96, &x).unwrap();
            assert_eq!(b.data.len(), QuantBlob::byte_len(q, 64, 96));
            let y = b.dequantize();
            let err = x.iter().zip(&y).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
            assert!(err <= tol * 1.01 + 1e-7, "{q}: {err}");
        }
    }

    /// q4a's fit: a group that already lies on an asymmetric 4-bit grid (as in a model shipped
    /// in Q4_1) comes back almost exactly, where a symmetric format cannot follow it.
    #[test]
    fn q4a_follows_asymmetric_groups() {
        let mut x = Vec::new();
        for g in 0..64 {
            let (d, m) = (0.01 + 0.0003 * g as f32, -0.05 - 0.001 * (g % 7) as f32);
            x.extend((0..32).map(|j| ((j * 7 + g) % 16) as f32 * d + m));
        }
        let err = |q: Quant| {
            let y = QuantBlob::quantize(q, 1, x.len(), &x).unwrap().dequantize();
            x.iter().zip(&y).map(|(a, b)| (a - b) * (a - b)).sum::<f32>() / x.len() as f32
        };
        let (a, s) = (err(Quant::Q4A), err(Quant::Q4));
        assert!(a < s / 20.0, "q4a mse {a} vs q4 {s}");
    }

    #[test]
    fn chunks_reassemble() {
        let x: Vec<f32> = (0..10 * 64).map(|i| (i as f32).sin()).collect();
        for q in [Quant::Q4, Quant::Q4A] {
            let b = QuantBlob::quantize(q, 10, 64, &x).unwrap();
            let (c, soff) = b.chunk_bytes(4, 6);
            let sub = QuantBlob::quantize(q, 6, 64, &x[4 * 64..]).unwrap();
            assert_eq!(c, sub.data, "{q}");
            assert_eq!(soff as usize, 6 * 32 / 4, "{q}");
        }
    }

    #[test]
    fn rows_stack_and_interleave_exactly() {
        for q in [Quant::F32, Quant::F16, Quant::Q8, Quant::Q4, Quant::Q4A] {
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

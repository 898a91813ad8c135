//! One Rust launcher per WGSL kernel family. Launchers only record work into a [`Recorder`];
//! offsets and sizes are in f32 elements unless stated otherwise.

use std::sync::Arc;

use super::recorder::{grid, Recorder};
use super::shader;
use super::{Gpu, Weight};

fn pipeline(gpu: &Gpu, file: &str, defines: &[&str]) -> Arc<wgpu::ComputePipeline> {
    let key = format!("{file}:{}", defines.join(":"));
    gpu.pipeline(&key, || shader::source(file, defines))
}

/// Activation rows at or below this use the matrix–vector kernel.
pub const MATVEC_MAX_ROWS: usize = 4;

/// Where a matrix product writes: `y[y_off + m·y_stride + n]`, overwritten or accumulated.
#[derive(Clone, Copy)]
pub struct Out<'a> {
    pub buf: &'a wgpu::Buffer,
    pub off: usize,
    pub stride: usize,
    pub add: bool,
}

/// An activation fused into the output stage of a matrix product (applied after the bias,
/// before an accumulate).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Act {
    None,
    /// Exact (erf) GELU.
    Gelu,
    Silu,
}

/// y[m, :] (+)= x[m, :] · Wᵀ (+ bias) for m in 0..rows; `x` holds rows of `w.k` elements.
pub fn linear(rec: &mut Recorder, w: &Weight, bias: Option<&wgpu::Buffer>, x: &wgpu::Buffer, x_off: usize, rows: usize, out: Out) {
    linear_act(rec, w, bias, x, x_off, rows, out, Act::None)
}

/// [`linear`] with an activation applied to each output element.
#[allow(clippy::too_many_arguments)]
pub fn linear_act(rec: &mut Recorder, w: &Weight, bias: Option<&wgpu::Buffer>, x: &wgpu::Buffer, x_off: usize, rows: usize, out: Out, act: Act) {
    assert!(x_off % 4 == 0, "activation offsets must be multiples of 4");
    let vec = rows <= MATVEC_MAX_ROWS;
    let mut defines = vec![w.quant.define()];
    if out.add {
        defines.push("ADD");
    }
    if bias.is_some() {
        defines.push("BIAS");
    }
    match act {
        Act::None => {}
        Act::Gelu => defines.push("GELU"),
        Act::Silu => defines.push("SILU"),
    }
    let p = pipeline(rec.gpu, if vec { "matvec.wgsl" } else { "matmul.wgsl" }, &defines);
    for c in &w.chunks {
        let params = [rows as u32, c.rows as u32, w.k as u32, x_off as u32, out.off as u32, out.stride as u32, c.row0 as u32, c.soff];
        let mut bufs: Vec<&wgpu::Buffer> = vec![&c.buf, x, out.buf];
        if let Some(b) = bias {
            bufs.push(b);
        }
        let wg = if vec { [(c.rows as u32).div_ceil(8), rows as u32, 1] } else { [(c.rows as u32).div_ceil(128), (rows as u32).div_ceil(128), 1] };
        rec.dispatch(p.clone(), &params, &bufs, wg);
    }
}

/// RMSNorm of `rows` rows of length `d`.
#[allow(clippy::too_many_arguments)]
pub fn rmsnorm(rec: &mut Recorder, x: &wgpu::Buffer, x_off: usize, rows: usize, d: usize, weight: &wgpu::Buffer, eps: f32, y: &wgpu::Buffer, y_off: usize) {
    rmsnorm_strided(rec, x, x_off, rows, d, weight, eps, y, y_off, d)
}

/// [`rmsnorm`] writing output rows `y_stride` apart (into part of wider rows).
#[allow(clippy::too_many_arguments)]
pub fn rmsnorm_strided(
    rec: &mut Recorder,
    x: &wgpu::Buffer,
    x_off: usize,
    rows: usize,
    d: usize,
    weight: &wgpu::Buffer,
    eps: f32,
    y: &wgpu::Buffer,
    y_off: usize,
    y_stride: usize,
) {
    let p = pipeline(rec.gpu, "norm.wgsl", &[]);
    rec.dispatch(p, &[d as u32, x_off as u32, y_off as u32, eps.to_bits(), y_stride as u32], &[x, weight, y], [rows as u32, 1, 1]);
}

/// LayerNorm (with affine weight and bias) of `rows` rows of length `d`.
#[allow(clippy::too_many_arguments)]
pub fn layernorm(
    rec: &mut Recorder,
    x: &wgpu::Buffer,
    x_off: usize,
    rows: usize,
    d: usize,
    weight: &wgpu::Buffer,
    bias: &wgpu::Buffer,
    eps: f32,
    y: &wgpu::Buffer,
    y_off: usize,
) {
    let p = pipeline(rec.gpu, "norm.wgsl", &["LAYERNORM"]);
    rec.dispatch(p, &[d as u32, x_off as u32, y_off as u32, eps.to_bits(), d as u32], &[x, weight, y, bias], [rows as u32, 1, 1]);
}

/// Rotate-half RoPE in place on `t` rows of `h` heads × `d`, positions pos0.., from `table`.
#[allow(clippy::too_many_arguments)]
pub fn rope(rec: &mut Recorder, x: &wgpu::Buffer, x_off: usize, t: usize, h: usize, d: usize, pos0: usize, row_stride: usize, table: &wgpu::Buffer) {
    let p = pipeline(rec.gpu, "rope.wgsl", &[]);
    let n = (t * h * d / 2) as u32;
    rec.dispatch(p, &[t as u32, h as u32, d as u32, pos0 as u32, x_off as u32, row_stride as u32], &[x, table], grid(n.div_ceil(256)));
}

/// Geometry of one attention call.
#[derive(Clone, Copy, Debug)]
pub struct AttnShape {
    pub t: usize,
    pub heads: usize,
    pub head_dim: usize,
    /// Causal: position of query row 0. `None`: bidirectional over `n_keys`.
    pub causal_pos0: Option<usize>,
    pub n_keys: usize,
    pub q_stride: usize,
    pub kv_stride: usize,
    /// Elements per output row (≥ heads · head_dim).
    pub o_stride: usize,
}

#[allow(clippy::too_many_arguments)]
pub fn attention(
    rec: &mut Recorder,
    s: AttnShape,
    q: &wgpu::Buffer,
    q_off: usize,
    k: &wgpu::Buffer,
    k_off: usize,
    v: &wgpu::Buffer,
    v_off: usize,
    o: &wgpu::Buffer,
    o_off: usize,
) {
    assert!(s.head_dim <= 256);
    let p = pipeline(rec.gpu, "attention.wgsl", &[]);
    let scale = 1.0 / (s.head_dim as f32).sqrt();
    let params = [
        s.t as u32,
        s.heads as u32,
        s.head_dim as u32,
        s.causal_pos0.unwrap_or(0) as u32,
        s.n_keys as u32,
        s.causal_pos0.is_some() as u32,
        q_off as u32,
        o_off as u32,
        s.q_stride as u32,
        s.kv_stride as u32,
        k_off as u32,
        v_off as u32,
        scale.to_bits(),
        s.o_stride as u32,
    ];
    rec.dispatch(p, &params, &[q, k, v, o], [s.t as u32, s.heads as u32, 1]);
}

/// y = silu(a) · b over `n` elements.
pub fn swiglu(rec: &mut Recorder, a: &wgpu::Buffer, b: &wgpu::Buffer, y: &wgpu::Buffer, n: usize) {
    let p = pipeline(rec.gpu, "elementwise.wgsl", &["SWIGLU"]);
    rec.dispatch(p, &[n as u32, 0, 0, 0, 0, 0, 0], &[a, b, y], grid((n as u32).div_ceil(256)));
}

/// y[y_off..] += a[a_off..] over `n` elements.
pub fn add(rec: &mut Recorder, a: &wgpu::Buffer, a_off: usize, y: &wgpu::Buffer, y_off: usize, n: usize) {
    let p = pipeline(rec.gpu, "elementwise.wgsl", &["ADD"]);
    rec.dispatch(p, &[n as u32, a_off as u32, 0, y_off as u32, 0, 0, 0], &[a, y], grid((n as u32).div_ceil(256)));
}

/// y[y_off + i] = silu(a[a_off + i]) over `n` elements.
pub fn silu(rec: &mut Recorder, a: &wgpu::Buffer, a_off: usize, y: &wgpu::Buffer, y_off: usize, n: usize) {
    let p = pipeline(rec.gpu, "elementwise.wgsl", &["SILU"]);
    rec.dispatch(p, &[n as u32, a_off as u32, 0, y_off as u32, 0, 0, 0], &[a, y], grid((n as u32).div_ceil(256)));
}

/// FiLM in place over `rows` rows of `cols`: y = y·(1 + scale) + shift, `film[film_off..]` = [scale | shift].
pub fn film(rec: &mut Recorder, film: &wgpu::Buffer, film_off: usize, y: &wgpu::Buffer, y_off: usize, rows: usize, cols: usize) {
    let p = pipeline(rec.gpu, "elementwise.wgsl", &["FILM"]);
    let n = rows * cols;
    rec.dispatch(p, &[n as u32, film_off as u32, 0, y_off as u32, cols as u32, 0, 0], &[film, y], grid((n as u32).div_ceil(256)));
}

/// Copies `rows` rows of `cols` elements: y[y_off + r·y_stride + c] = a[a_off + r·a_stride + c].
#[allow(clippy::too_many_arguments)]
pub fn copy_rows(
    rec: &mut Recorder,
    a: &wgpu::Buffer,
    a_off: usize,
    a_stride: usize,
    y: &wgpu::Buffer,
    y_off: usize,
    y_stride: usize,
    rows: usize,
    cols: usize,
) {
    let p = pipeline(rec.gpu, "elementwise.wgsl", &["COPY_ROWS"]);
    let n = rows * cols;
    rec.dispatch(p, &[n as u32, a_off as u32, 0, y_off as u32, cols as u32, a_stride as u32, y_stride as u32], &[a, y], grid((n as u32).div_ceil(256)));
}

/// Depthwise k×k convolution (zero padding k/2, stride 1, bias) over `b` channels-last maps [h·w, c].
#[allow(clippy::too_many_arguments)]
pub fn depthwise(
    rec: &mut Recorder,
    x: &wgpu::Buffer,
    b: usize,
    h: usize,
    w: usize,
    c: usize,
    k: usize,
    weight: &wgpu::Buffer,
    bias: &wgpu::Buffer,
    y: &wgpu::Buffer,
) {
    let p = pipeline(rec.gpu, "depthwise.wgsl", &[]);
    let n = (b * h * w * c) as u32;
    rec.dispatch(p, &[b as u32, h as u32, w as u32, c as u32, k as u32, (k / 2) as u32], &[x, weight, bias, y], grid(n.div_ceil(256)));
}

/// Bytes of the statistics buffer [`grn`] needs.
pub fn grn_stats_bytes(b: usize, c: usize) -> u64 {
    (b * (c + 1) * 4) as u64
}

/// Global response norm in place over `b` channels-last maps of `rows` × `c` (γ, β per channel).
#[allow(clippy::too_many_arguments)]
pub fn grn(rec: &mut Recorder, y: &wgpu::Buffer, b: usize, rows: usize, c: usize, gamma: &wgpu::Buffer, beta: &wgpu::Buffer, stats: &wgpu::Buffer) {
    let params = [b as u32, rows as u32, c as u32];
    let p1 = pipeline(rec.gpu, "grn.wgsl", &["STATS"]);
    rec.dispatch(p1, &params, &[y, stats], [(c as u32).div_ceil(64), b as u32, 1]);
    let p2 = pipeline(rec.gpu, "grn.wgsl", &["MEAN"]);
    rec.dispatch(p2, &params, &[stats], [b as u32, 1, 1]);
    let p3 = pipeline(rec.gpu, "grn.wgsl", &["APPLY"]);
    rec.dispatch(p3, &params, &[stats, gamma, beta, y], grid(((b * rows * c) as u32).div_ceil(256)));
}

/// The latent [cz, s, s] as patch rows [(s/2)², cz·4] (2×2 patchify conv columns).
pub fn patchify(rec: &mut Recorder, z: &wgpu::Buffer, s: usize, cz: usize, rows: &wgpu::Buffer) {
    let p = pipeline(rec.gpu, "flow.wgsl", &["PATCHIFY"]);
    let n = (cz * s * s) as u32;
    rec.dispatch(p, &[s as u32, cz as u32, 0, 0, 0, 0], &[z, rows], [n.div_ceil(256), 1, 1]);
}

/// Guidance + Euler step in place on z [cz, s, s] from velocity token rows (cond rows at 0,
/// uncond rows at `v_off`); optionally writes the RGBA8 preview of x̂₁ at time `t`.
#[allow(clippy::too_many_arguments)]
pub fn cfg_euler(
    rec: &mut Recorder,
    v: &wgpu::Buffer,
    v_off: usize,
    z: &wgpu::Buffer,
    s: usize,
    cz: usize,
    w: f32,
    dt: f32,
    t: f32,
    preview: Option<&wgpu::Buffer>,
) {
    let params = [s as u32, cz as u32, w.to_bits(), dt.to_bits(), t.to_bits(), v_off as u32];
    let n = (s * s) as u32;
    match preview {
        Some(rgba) => rec.dispatch(pipeline(rec.gpu, "flow.wgsl", &["EULER", "PREVIEW"]), &params, &[v, z, rgba], [n.div_ceil(256), 1, 1]),
        None => rec.dispatch(pipeline(rec.gpu, "flow.wgsl", &["EULER"]), &params, &[v, z], [n.div_ceil(256), 1, 1]),
    }
}

/// Gathers embedding rows for `t` token ids into y[y_off..] ([t, w.k]).
pub fn embedding(rec: &mut Recorder, w: &Weight, ids: &wgpu::Buffer, ids_off: usize, t: usize, y: &wgpu::Buffer, y_off: usize) {
    let p = pipeline(rec.gpu, "embedding.wgsl", &[w.quant.define()]);
    for c in &w.chunks {
        let params = [t as u32, w.k as u32, c.row0 as u32, c.rows as u32, c.soff, y_off as u32, ids_off as u32];
        rec.dispatch(p.clone(), &params, &[&c.buf, ids, y], [(w.k as u32 / 4).div_ceil(64), t as u32, 1]);
    }
}

pub const TOPK_MAX: usize = 64;
const TOPK_CHUNK: usize = 2048;

/// Scratch size (bytes) that [`topk`] needs for `n` logits.
pub fn topk_scratch_bytes(n: usize) -> u64 {
    (n.div_ceil(TOPK_CHUNK) * TOPK_MAX * 8) as u64
}

/// Writes the `k` largest logits of x[x_off .. x_off + n] into `out` as (f32 bits, index) pairs, best first.
pub fn topk(rec: &mut Recorder, x: &wgpu::Buffer, x_off: usize, n: usize, k: usize, scratch: &wgpu::Buffer, out: &wgpu::Buffer) {
    assert!((1..=TOPK_MAX).contains(&k));
    let groups = n.div_ceil(TOPK_CHUNK);
    let p1 = pipeline(rec.gpu, "topk.wgsl", &["PASS1"]);
    rec.dispatch(p1, &[n as u32, k as u32, x_off as u32], &[x, scratch], [groups as u32, 1, 1]);
    let p2 = pipeline(rec.gpu, "topk.wgsl", &["PASS2"]);
    rec.dispatch(p2, &[(groups * k) as u32, k as u32, 0], &[scratch, out], [1, 1, 1]);
}

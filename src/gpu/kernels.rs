//! One Rust launcher per WGSL kernel family. Launchers only record work into a [`Recorder`];
//! offsets and sizes are in f32 elements unless stated otherwise.

use std::sync::Arc;

use super::recorder::{grid, Range, Recorder};
use super::shader;
use super::{Gpu, Weight};
use crate::weights::quant::Quant;

fn pipeline(gpu: &Gpu, file: &str, defines: &[&str]) -> Arc<wgpu::ComputePipeline> {
    let key = format!("{file}:{}", defines.join(":"));
    gpu.pipeline(&key, || shader::source(file, defines))
}

/// Declares the `#[repr(C)]` mirror of a WGSL `Params` block: 4-byte fields (u32 or f32) in the
/// shader's order, which the declaration checks by size.
macro_rules! wgsl_params {
    ($(#[$doc:meta])* $name:ident { $($field:ident: $ty:ty,)* }) => {
        $(#[$doc])*
        #[repr(C)]
        #[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
        struct $name {
            $($field: $ty,)*
        }
        const _: () = assert!(std::mem::size_of::<$name>() == 4 * [$(stringify!($field)),*].len(), "one 4-byte field per WGSL Params member");
    };
}

/// A parameter block as the words the recorder uploads.
fn words<P: bytemuck::Pod>(params: &P) -> &[u32] {
    bytemuck::cast_slice(std::slice::from_ref(params))
}

/// [`pipeline`] for a kernel that includes reduce.wgsl: with the adapter's subgroup width as
/// SUBGROUPS where its reductions may use subgroup operations.
fn pipeline_reducing(gpu: &Gpu, file: &str, defines: &[&str]) -> Arc<wgpu::ComputePipeline> {
    match gpu.subgroup_reduce() {
        Some(w) => {
            let sg = format!("SUBGROUPS={w}");
            let all: Vec<&str> = defines.iter().copied().chain([sg.as_str()]).collect();
            pipeline(gpu, file, &all)
        }
        None => pipeline(gpu, file, defines),
    }
}

/// Vec4 per chunk of the activation row the GPU-shape matrix–vector kernels stage in workgroup
/// memory where [`Gpu::stage_x`] is on (STAGE_X in matvec_rows.wgsl): 2048 activations, 9 KiB with
/// the padding, so the default 16 KiB of workgroup memory holds it beside the row sums.
const STAGE_X: u32 = 512;

/// The defines of the GPU-shape matrix–vector kernels' row walk for `w` (matvec_rows.wgsl), the
/// same for `linear` and the fused decode products:
/// - 4-bit formats read whole groups per lane (Q4_GROUPS); q8, and f16 rows of whole runs, 16 B
///   runs (WIDE_RUNS); both bind `w` as 16 B quads (W_VEC4 in quant.wgsl), one load per group or
///   run;
/// - SUBGROUPS: the width the row sums may use, where a 32-lane row holds whole subgroups;
/// - LOADS: the passes of loads per batch; STAGE_X: the activation chunk, where staging is chosen.
fn row_walk(gpu: &Gpu, w: &Weight) -> Vec<String> {
    let mut d: Vec<String> = Vec::new();
    if w.quant.is_4bit() {
        d.extend(["Q4_GROUPS".into(), "W_VEC4".into()]);
    } else if w.quant == Quant::Q8 || (w.quant == Quant::F16 && w.k.is_multiple_of(8)) {
        d.extend(["WIDE_RUNS".into(), "W_VEC4".into()]);
    }
    d.extend(gpu.subgroup_reduce().filter(|&width| width <= 32).map(|width| format!("SUBGROUPS={width}")));
    d.push(format!("LOADS={}", gpu.matvec_loads()));
    d.extend(gpu.stage_x().then(|| format!("STAGE_X={STAGE_X}")));
    d
}

/// Lanes per workgroup of the CPU-rasteriser matrix–vector kernels, each lane owning four output
/// rows (matvec_lanes.wgsl): 64 rows per workgroup.
const LANE_WG: u32 = 16;

/// Activation rows per lane of the CPU-rasteriser prefill kernel (LANE_M in matvec.wgsl).
const LANE_M: u32 = 16;

/// Workgroups of the lane-rows matrix–vector kernels for a chunk of `rows` output rows.
fn lane_groups(rows: usize) -> u32 {
    (rows as u32).div_ceil(4 * LANE_WG)
}

/// Activation rows at or below this use the matrix–vector kernel.
pub const MATVEC_MAX_ROWS: usize = 4;

/// Activation rows at or below this (and above MATVEC_MAX_ROWS) use the small matmul tile on
/// GPUs; CPU adapters take the lane product up to here even with 8-lane subgroups.
pub const SMALL_TILE_MAX_ROWS: usize = 32;

/// A place in a buffer: `buf` from element `off` on.
#[derive(Clone, Copy)]
pub struct View<'a> {
    pub buf: &'a wgpu::Buffer,
    pub off: usize,
}

impl<'a> View<'a> {
    pub fn at(buf: &'a wgpu::Buffer, off: usize) -> Self {
        Self { buf, off }
    }
}

/// Where a matrix product writes: `y[y_off + m·y_stride + n]`, overwritten or accumulated.
#[derive(Clone, Copy)]
pub struct Out<'a> {
    pub buf: &'a wgpu::Buffer,
    pub off: usize,
    pub stride: usize,
    pub add: bool,
}

/// Where a writer of the residual stream also puts each new element times the weight of the
/// RMSNorm that follows (`yg = y · g`, laid out as its output) and the sums of the new row's
/// squares over each 4 elements (`ssq`, element e's quad at e / 4; the output offset must be a
/// multiple of 4), so the decode path's fused products need no norm pass (see matvec_fused.wgsl).
#[derive(Clone, Copy)]
pub struct NormCopy<'a> {
    pub g: &'a wgpu::Buffer,
    pub yg: &'a wgpu::Buffer,
    pub ssq: &'a wgpu::Buffer,
}

/// An activation fused into the output stage of a matrix product (applied after the bias,
/// before an accumulate).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Act {
    None,
    /// Exact (erf) GELU.
    Gelu,
    Silu,
    /// silu(gate) · up over (gate, up) row pairs, halving the width: only through [`linear_swiglu`].
    SwiGluPairs,
    /// RoPE and the KV-cache write over stacked Q|K|V rotation pairs: only through [`linear_rope`].
    RopePairs,
}

impl Act {
    /// Whether the output stage takes whole column quads (two row pairs).
    fn pairs(self) -> bool {
        matches!(self, Act::SwiGluPairs | Act::RopePairs)
    }
}

/// The kernel family a matrix product of some number of activation rows takes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Product {
    /// CPU rasterisers: barrier-free lanes of four weight rows (matvec_lanes.wgsl), times LANE_M
    /// activation rows above MATVEC_MAX_ROWS.
    Lanes,
    /// CPU rasterisers with 8-lane subgroups, prompts: the SG8 register tile (gemm_sg8.wgsl).
    Sg8,
    /// GPUs, up to MATVEC_MAX_ROWS rows: 32 lanes per output row (matvec_rows.wgsl).
    Matvec,
    /// GPUs: the 64×64 (16×64) tile (gemm_tile64.wgsl).
    Tile,
}

/// CPU rasterisers: the SG8 register tile for prompts where the adapter has 8-lane subgroups;
/// otherwise barrier-free lane kernels for every row count: on lavapipe a 32-row tile for a
/// short prompt cost as much as 20 one-row products, and the 128×128 tile's barriers cost
/// SwiftShader 2.6× its prefill.
fn product_kernel(gpu: &Gpu, rows: usize) -> Product {
    match (gpu.gpu_tuned(), rows <= MATVEC_MAX_ROWS) {
        (true, true) => Product::Matvec,
        (true, false) => Product::Tile,
        (false, _) if rows > SMALL_TILE_MAX_ROWS && gpu.sg8() => Product::Sg8,
        (false, _) => Product::Lanes,
    }
}

/// Whether `kind` can combine row pairs in its output stage (SwiGLU, RoPE): it hands over whole
/// column quads (the SG8 tile's lane holds columns 8 apart, the GPU matvec one column per row of
/// lanes), and every chunk of `w` holds whole quads.
fn pairs_in_quads(kind: Product, w: &Weight) -> bool {
    matches!(kind, Product::Lanes | Product::Tile) && whole_quads(w)
}

/// Whether every chunk of `w` holds whole row quads (uploads cut chunks at multiples of 4 rows,
/// so this holds when the row count is a multiple of 4).
pub fn whole_quads(w: &Weight) -> bool {
    w.chunks.iter().all(|c| c.row0.is_multiple_of(4) && c.rows.is_multiple_of(4))
}

/// The MLP's gate|up product and SwiGLU over `rows` activation rows: the rows of `w` are (gate_j,
/// up_j) pairs, and y[r, j] = silu(gate_j) · up_j ([rows, w.n / 2]). In the product's output
/// stage where the kernel allows it (one dispatch, no [rows, w.n] round trip); otherwise through
/// `gu` ([rows, w.n]) and a gating pass.
pub fn linear_swiglu(rec: &mut Recorder, w: &Weight, x: &wgpu::Buffer, x_off: usize, rows: usize, gu: &wgpu::Buffer, y: &wgpu::Buffer) {
    let kind = product_kernel(rec.gpu, rows);
    if pairs_in_quads(kind, w) {
        linear_impl(rec, kind, w, None, x, x_off, rows, Out { buf: y, off: 0, stride: w.n / 2, add: false }, Act::SwiGluPairs, None, None);
    } else {
        linear_impl(rec, kind, w, None, x, x_off, rows, Out { buf: gu, off: 0, stride: w.n, add: false }, Act::None, None, None);
        swiglu_pairs(rec, gu, y, rows * w.n / 2);
    }
}

/// The stacked Q|K|V product ([`qkv_row_order`]) of the sequences' rows (in order, from x_off)
/// with RoPE and the cache write: q to `q` ([rows, heads·head_dim]), k and v into each sequence's
/// cache slots. In the product's output stage where the kernel takes column quads, for one or
/// two sequences (with distinct caches); otherwise through `qkv` ([rows, 3·heads·head_dim]) and a
/// [`rope_scatter`] pass per sequence. Both take two rotation pairs at a time: `head_dim` must be
/// a multiple of 4 (config.rs refuses other head dims).
#[allow(clippy::too_many_arguments)]
pub fn linear_rope(
    rec: &mut Recorder,
    w: &Weight,
    x: &wgpu::Buffer,
    x_off: usize,
    heads: usize,
    head_dim: usize,
    table: &wgpu::Buffer,
    seqs: &[RopeSeq],
    qkv: &wgpu::Buffer,
    q: &wgpu::Buffer,
) {
    let rows: usize = seqs.iter().map(|s| s.rows).sum();
    let hd = heads * head_dim;
    assert!(w.n == 3 * hd && head_dim.is_multiple_of(4), "linear_rope: a stacked Q|K|V weight of head dims that are multiples of 4");
    assert!(seqs.iter().all(|s| s.kv.format == seqs[0].kv.format), "linear_rope: one cache format for all sequences");
    // Two sequences bind their caches side by side, which must then be distinct buffers.
    let distinct = match seqs {
        [_] => true,
        [a, b] => a.kv.k != b.kv.k && a.kv.v != b.kv.v && a.kv.k != b.kv.v && a.kv.v != b.kv.k,
        _ => false,
    };
    let kind = product_kernel(rec.gpu, rows);
    if distinct && pairs_in_quads(kind, w) {
        let rope = RopeOut { heads, head_dim, table, seqs };
        linear_impl(rec, kind, w, None, x, x_off, rows, Out { buf: q, off: 0, stride: hd, add: false }, Act::RopePairs, None, Some(rope));
        return;
    }
    linear_impl(rec, kind, w, None, x, x_off, rows, Out { buf: qkv, off: 0, stride: 3 * hd, add: false }, Act::None, None, None);
    let mut row0 = 0;
    for s in seqs {
        rope_scatter(rec, qkv, row0 * 3 * hd, s.rows, heads, head_dim, s.pos0, table, q, row0 * hd, s.kv, s.slot0);
        row0 += s.rows;
    }
}

/// Output rows × columns of one GPU-shape matrix-product workgroup (see gemm_tile64.wgsl).
fn gemm_tile(small: bool) -> (u32, u32) {
    if small {
        (16, 64)
    } else {
        (64, 64)
    }
}

/// y[m, :] (+)= x[m, :] · Wᵀ (+ bias) for m in 0..rows; `x` holds rows of `w.k` elements.
pub fn linear(rec: &mut Recorder, w: &Weight, bias: Option<&wgpu::Buffer>, x: &wgpu::Buffer, x_off: usize, rows: usize, out: Out) {
    linear_act(rec, w, bias, x, x_off, rows, out, Act::None)
}

/// [`linear`] with an activation applied to each output element.
#[allow(clippy::too_many_arguments)]
pub fn linear_act(rec: &mut Recorder, w: &Weight, bias: Option<&wgpu::Buffer>, x: &wgpu::Buffer, x_off: usize, rows: usize, out: Out, act: Act) {
    linear_impl(rec, product_kernel(rec.gpu, rows), w, bias, x, x_off, rows, out, act, None, None)
}

/// One activation row: y += x · Wᵀ into the residual stream, also writing y · g for the norm that
/// follows (`copy`, at the output's offsets).
pub fn linear_residual(rec: &mut Recorder, w: &Weight, x: &wgpu::Buffer, x_off: usize, y: View, copy: NormCopy) {
    assert!(y.off % 4 == 0 && w.chunks.iter().all(|c| c.row0 % 4 == 0), "linear_residual: the sums of squares need whole row quads");
    let out = Out { buf: y.buf, off: y.off, stride: w.n, add: true };
    linear_impl(rec, product_kernel(rec.gpu, 1), w, None, x, x_off, 1, out, Act::None, Some(copy), None)
}

/// The `Params` block of matvec.wgsl and matmul.wgsl (linear_params.wgsl).
#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct LinearParams {
    m: u32,
    n: u32,
    k: u32,
    x_off: u32,
    y_off: u32,
    y_stride: u32,
    row0: u32,
    soff: u32,
    // ROPE_PAIRS (see RopeOut).
    heads: u32,
    head_dim: u32,
    rows0: u32,
    pos0: u32,
    slot0: u32,
    pos1: u32,
    slot1: u32,
}

/// How a KV cache stores its elements (kv_cache.wgsl).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum KvFormat {
    /// f32 (the default: exact against the reference).
    #[default]
    F32,
    /// f16 pairs packed in u32 words (the opt-in `fast` setting): half the memory and half the
    /// bytes attention reads per key, with keys and values rounded to f16 once, when written.
    F16,
}

impl KvFormat {
    /// The shader define that selects this storage, if any.
    fn define(self) -> Option<&'static str> {
        (self == KvFormat::F16).then_some("KV_F16")
    }

    /// Bytes per cache element.
    pub fn bytes(self) -> u64 {
        match self {
            KvFormat::F32 => 4,
            KvFormat::F16 => 2,
        }
    }
}

/// `v` as an f16 cache stores it: neighbouring elements (2j, 2j + 1) rounded to f16 and packed in
/// word j, low half first, saturating at ±65504 (kv_cache.wgsl's `kv_pair`; benchmarks and tests
/// fill caches with it).
pub fn kv_f16_words(v: &[f32]) -> Vec<u32> {
    let h = |x: f32| half::f16::from_f32(x.clamp(-65504.0, 65504.0)).to_bits() as u32;
    v.chunks(2).map(|p| h(p[0]) | h(p.get(1).copied().unwrap_or(0.0)) << 16).collect()
}

/// One layer's key and value caches ([slots, heads·head_dim] each) and how they store elements.
#[derive(Clone, Copy)]
pub struct Kv<'a> {
    pub k: &'a wgpu::Buffer,
    pub v: &'a wgpu::Buffer,
    pub format: KvFormat,
}

/// Where a stacked Q|K|V product's RoPE epilogue writes (Act::RopePairs): the rotation table, and
/// per sequence (at most two, in row order) its caches, rows, first position and first slot.
struct RopeOut<'a> {
    heads: usize,
    head_dim: usize,
    table: &'a wgpu::Buffer,
    seqs: &'a [RopeSeq<'a>],
}

/// One sequence's rows of a stacked Q|K|V product (see [`linear_rope`]).
#[derive(Clone, Copy)]
pub struct RopeSeq<'a> {
    pub kv: Kv<'a>,
    pub rows: usize,
    pub pos0: usize,
    pub slot0: usize,
}

#[allow(clippy::too_many_arguments)]
fn linear_impl(
    rec: &mut Recorder,
    kind: Product,
    w: &Weight,
    bias: Option<&wgpu::Buffer>,
    x: &wgpu::Buffer,
    x_off: usize,
    rows: usize,
    out: Out,
    act: Act,
    copy: Option<NormCopy>,
    rope: Option<RopeOut>,
) {
    assert!(x_off % 4 == 0, "activation offsets must be multiples of 4");
    // `kind` is the one read of the tuning flag: the shaders and the grid must agree.
    let tuned = matches!(kind, Product::Matvec | Product::Tile);
    let vec = rows <= MATVEC_MAX_ROWS;
    let small = !vec && rows <= SMALL_TILE_MAX_ROWS;
    assert!(copy.is_none() || (rows == 1 && out.add && bias.is_none() && act == Act::None), "the norm copy is for one residual row");
    assert!(!act.pairs() || (pairs_in_quads(kind, w) && bias.is_none() && !out.add), "linear_swiglu and linear_rope decide where pairs are fused");
    assert_eq!(act == Act::RopePairs, rope.is_some());
    let sg8 = kind == Product::Sg8;
    let lanes = kind == Product::Lanes;
    let lane_m = lanes && !vec;
    let lane_wg = format!("LANE_WG={LANE_WG}");
    let lane_m_define = format!("LANE_M={LANE_M}");
    let mut defines = vec![w.quant.define()];
    if lanes {
        defines.extend(["LANE_ROWS", lane_wg.as_str()]);
        if lane_m {
            defines.push(lane_m_define.as_str());
        }
    } else if small {
        defines.push("SMALL_M");
    }
    // The 128×128 tile where chosen, for products of more than 64 rows.
    let big = kind == Product::Tile && rows > 64 && rec.gpu.tile128();
    let (tile_m, tile_n) = if sg8 {
        SG8_TILE
    } else if big {
        (128, 128)
    } else {
        gemm_tile(small)
    };
    let walk = if vec && !lanes { row_walk(rec.gpu, w) } else { Vec::new() };
    defines.extend(walk.iter().map(String::as_str));
    if tuned && !vec {
        defines.push("GPU_TILE");
        if big {
            defines.push("TILE128");
        }
        if rec.gpu.f16_math() {
            defines.push("F16_MATH");
        }
    }
    if sg8 {
        defines.push("SG8");
    }
    if out.add {
        defines.push("ADD");
    }
    if bias.is_some() {
        defines.push("BIAS");
    }
    if copy.is_some() {
        defines.push("NORM_COPY");
    }
    match act {
        Act::None => {}
        Act::Gelu => defines.push("GELU"),
        Act::Silu => defines.push("SILU"),
        Act::SwiGluPairs => defines.push("SWIGLU_PAIRS"),
        Act::RopePairs => defines.push("ROPE_PAIRS"),
    }
    if let Some(r) = &rope {
        if r.seqs.len() == 2 {
            defines.push("TWO_SEQS");
        }
        defines.extend(r.seqs[0].kv.format.define());
    }
    let p = pipeline(rec.gpu, if vec || lanes { "matvec.wgsl" } else { "matmul.wgsl" }, &defines);
    // Activation buffers over the binding limit (the VAE's maps, of which the mid-block's
    // attention uses a few MiB) are bound as windows around what the product reads and writes.
    let (xr, x_off) = window(rec.gpu, x, x_off, x_off + rows * w.k);
    let plain = !act.pairs() && copy.is_none();
    let (yr, y_off) = if plain { window(rec.gpu, out.buf, out.off, out.off + (rows - 1) * out.stride + w.n) } else { ((out.buf, 0, None), out.off) };
    for c in &w.chunks {
        let mut params = LinearParams {
            m: rows as u32,
            n: c.rows as u32,
            k: w.k as u32,
            x_off: x_off as u32,
            y_off: y_off as u32,
            y_stride: out.stride as u32,
            row0: c.row0 as u32,
            soff: c.soff,
            ..Default::default()
        };
        let mut bufs: Vec<Range> = vec![(&c.buf, 0, None), xr, yr];
        let whole = |b| (b, 0, None);
        bufs.extend(bias.map(whole));
        if let Some(r) = &rope {
            let s0 = r.seqs[0];
            let s1 = r.seqs.get(1).copied().unwrap_or(s0);
            params = LinearParams {
                heads: r.heads as u32,
                head_dim: r.head_dim as u32,
                rows0: s0.rows as u32,
                pos0: s0.pos0 as u32,
                slot0: s0.slot0 as u32,
                pos1: s1.pos0 as u32,
                slot1: s1.slot0 as u32,
                ..params
            };
            bufs.extend([r.table, s0.kv.k, s0.kv.v].map(whole));
            if r.seqs.len() == 2 {
                bufs.extend([s1.kv.k, s1.kv.v].map(whole));
            }
        }
        if let Some(NormCopy { g, yg, ssq }) = copy {
            bufs.extend([g, yg, ssq].map(whole));
        }
        let wg = if lanes {
            [lane_groups(c.rows), if lane_m { (rows as u32).div_ceil(LANE_M) } else { rows as u32 }, 1]
        } else if vec {
            [(c.rows as u32).div_ceil(8), rows as u32, 1]
        } else {
            [(c.rows as u32).div_ceil(tile_n), (rows as u32).div_ceil(tile_m), 1]
        };
        rec.dispatch_ranges(p.clone(), words(&params), &bufs, wg);
    }
}

/// The binding of f32 elements [first, end) of `buf`, and the first one's index within it: the
/// whole buffer where it is within the binding limit, else a window starting at a 256-byte
/// boundary (the storage offset alignment), whole vec4s long.
fn window<'b>(gpu: &Gpu, buf: &'b wgpu::Buffer, first: usize, end: usize) -> (Range<'b>, usize) {
    if buf.size() <= gpu.max_binding() {
        return ((buf, 0, None), first);
    }
    let start = (first as u64 * 4) & !255;
    let size = (end as u64 * 4 - start).next_multiple_of(16).min(buf.size() - start);
    ((buf, start, Some(size)), first - start as usize / 4)
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
    let p = pipeline_reducing(rec.gpu, "norm.wgsl", &[]);
    let params = NormParams { d: d as u32, x_off: x_off as u32, y_off: y_off as u32, eps, y_stride: y_stride as u32 };
    rec.dispatch(p, words(&params), &[x, weight, y], [rows as u32, 1, 1]);
}

wgsl_params! {
    /// The `Params` block of norm.wgsl.
    NormParams { d: u32, x_off: u32, y_off: u32, eps: f32, y_stride: u32, }
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
    let p = pipeline_reducing(rec.gpu, "norm.wgsl", &["LAYERNORM"]);
    let params = NormParams { d: d as u32, x_off: x_off as u32, y_off: y_off as u32, eps, y_stride: d as u32 };
    rec.dispatch(p, words(&params), &[x, weight, y, bias], [rows as u32, 1, 1]);
}

/// Stacked Q|K|V rows ([t, 3·h·d] from one matrix product in [`qkv_row_order`], at `x_off`) → RoPE on q and k from
/// position `pos0`; q to `q[q_off..]` ([t, h·d]), k and v into cache slots `slot0..` of `kv`.
/// `d` must be a multiple of 4 (each thread takes two neighbouring rotation pairs).
#[allow(clippy::too_many_arguments)]
pub fn rope_scatter(
    rec: &mut Recorder,
    x: &wgpu::Buffer,
    x_off: usize,
    t: usize,
    h: usize,
    d: usize,
    pos0: usize,
    table: &wgpu::Buffer,
    q: &wgpu::Buffer,
    q_off: usize,
    kv: Kv,
    slot0: usize,
) {
    assert!(d.is_multiple_of(4), "rope_scatter: head dims are multiples of 4");
    let defines: Vec<&str> = kv.format.define().into_iter().collect();
    let p = pipeline(rec.gpu, "rope.wgsl", &defines);
    let n = (t * 3 * h * d / 4) as u32;
    let params = RopeParams {
        t: t as u32,
        h: h as u32,
        d: d as u32,
        pos0: pos0 as u32,
        x_off: x_off as u32,
        row_stride: (3 * h * d) as u32,
        q_off: q_off as u32,
        slot0: slot0 as u32,
    };
    rec.dispatch(p, words(&params), &[x, table, q, kv.k, kv.v], grid(n.div_ceil(256)));
}

wgsl_params! {
    /// The `Params` block of rope.wgsl.
    RopeParams { t: u32, h: u32, d: u32, pos0: u32, x_off: u32, row_stride: u32, q_off: u32, slot0: u32, }
}

/// The rows of [Wq; Wk; Wv] ([3·hidden, hidden], as (matrix, row) pairs) in the order the stacked
/// weight is stored: within each head, rotation pairs (i, i + head_dim/2) side by side, so one
/// workgroup of [`norm_matvec`] and one thread of [`rope_scatter`] hold both halves of a pair.
pub fn qkv_row_order(hidden: usize, head_dim: usize) -> impl Iterator<Item = (usize, usize)> {
    let half = head_dim / 2;
    (0..3).flat_map(move |m| (0..hidden).map(move |j| (m, (j / head_dim) * head_dim + (j % head_dim) / 2 + (j % 2) * half)))
}

/// What a fused decode product does after its RMSNorm prologue (see matvec_fused.wgsl).
pub enum Fused<'a> {
    /// Stacked Q|K|V of `heads` heads of `head_dim`: RoPE at `pos` from `table`, q to
    /// `q[q_off..]`, k and v into cache slot `slot` of `kv`.
    Qkv { heads: usize, head_dim: usize, pos: usize, table: &'a wgpu::Buffer, q: &'a wgpu::Buffer, q_off: usize, kv: Kv<'a>, slot: usize },
    /// Interleaved gate|up rows: silu(gate) · up into `y[y_off..]`.
    GateUp { y: &'a wgpu::Buffer, y_off: usize },
    /// The product itself into `y[y_off..]`.
    Plain { y: &'a wgpu::Buffer, y_off: usize },
}

/// Whether `w` can take [`norm_matvec`]'s pairing epilogues (QKV, GATE_UP): the row pairs they
/// combine must not straddle two weight chunks (uploads cut chunks at even rows, so this holds).
pub fn pairs_fusable(w: &Weight) -> bool {
    w.chunks.iter().all(|c| c.row0 % 2 == 0 && c.rows % 2 == 0)
}

/// The normalised activation row a fused decode product takes (see matvec_fused.wgsl).
#[derive(Clone, Copy)]
pub enum NormIn<'a> {
    /// Already normalised (norm.wgsl).
    Normed(View<'a>),
    /// `xg = x · g` at `off` and the sums of x² over each 4 elements at `off / 4` (written by the
    /// residual's writer, [`NormCopy`]): the product's dot takes xg and is scaled by
    /// 1/sqrt(mean(x²) + eps). The row length and `off` must be multiples of 16.
    Prescaled { xg: &'a wgpu::Buffer, ssq: &'a wgpu::Buffer, off: usize, eps: f32 },
}

/// The `Params` block of matvec_fused.wgsl.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct FusedParams {
    k: u32,
    n: u32,
    row0: u32,
    soff: u32,
    x_off: u32,
    eps: f32,
    hd: u32,
    d: u32,
    pos: u32,
    y_off: u32,
    kv_off: u32,
}

/// One normalised activation row → `w` → the epilogue of `f`, in one dispatch per weight chunk.
/// Check [`pairs_fusable`] first.
pub fn norm_matvec(rec: &mut Recorder, w: &Weight, input: NormIn, f: Fused) {
    let (x, r, x_off, eps, norm) = match input {
        NormIn::Normed(v) => (v.buf, v.buf, v.off, 0.0, "NORMED"),
        NormIn::Prescaled { xg, ssq, off, eps } => {
            assert!(w.k % 16 == 0 && off % 16 == 0, "norm_matvec: prescaled rows add up K/4 partial sums four at a time");
            (xg, ssq, off, eps, "PRESCALED")
        }
    };
    assert!(x_off % 4 == 0 && (matches!(f, Fused::Plain { .. }) || pairs_fusable(w)), "norm_matvec: unaligned activation row or weight chunks");
    let (mode, hd, d, pos, y_off, kv_off) = match &f {
        Fused::Qkv { heads, head_dim, pos, q_off, slot, .. } => ("QKV", heads * head_dim, *head_dim, *pos, *q_off, slot * heads * head_dim),
        Fused::GateUp { y_off, .. } => ("GATE_UP", 0, 0, 0, *y_off, 0),
        Fused::Plain { y_off, .. } => ("PLAIN", 0, 0, 0, *y_off, 0),
    };
    let tuned = rec.gpu.gpu_tuned();
    let mut defines = vec![mode, w.quant.define(), norm];
    if let Fused::Qkv { kv, head_dim, .. } = &f {
        assert!(head_dim.is_multiple_of(4) && whole_quads(w), "norm_matvec: QKV takes whole row quads");
        defines.extend(kv.format.define());
    }
    // CPU rasterisers take four rows per lane (matvec_lanes.wgsl).
    let walk = if tuned { row_walk(rec.gpu, w) } else { vec!["LANE_ROWS".into(), format!("LANE_WG={LANE_WG}")] };
    defines.extend(walk.iter().map(String::as_str));
    let p = pipeline(rec.gpu, "matvec_fused.wgsl", &defines);
    for c in &w.chunks {
        let params = FusedParams {
            k: w.k as u32,
            n: c.rows as u32,
            row0: c.row0 as u32,
            soff: c.soff,
            x_off: x_off as u32,
            eps,
            hd: hd as u32,
            d: d as u32,
            pos: pos as u32,
            y_off: y_off as u32,
            kv_off: kv_off as u32,
        };
        // NORMED binds its input again in the residual's unused slot.
        let mut bufs: Vec<&wgpu::Buffer> = vec![&c.buf, x, r];
        match &f {
            Fused::Qkv { table, q, kv, .. } => bufs.extend([*table, *q, kv.k, kv.v]),
            Fused::GateUp { y, .. } | Fused::Plain { y, .. } => bufs.push(y),
        }
        let groups = if tuned { (c.rows as u32).div_ceil(8) } else { lane_groups(c.rows) };
        rec.dispatch(p.clone(), words(&params), &bufs, [groups, 1, 1]);
    }
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
    /// How the keys and values are stored (f16 only in a KV cache of the `fast` setting).
    pub kv: KvFormat,
}

impl AttnShape {
    /// Keys the last query row sees (the most any row reads).
    pub fn keys(&self) -> usize {
        self.causal_pos0.map(|p0| p0 + self.t).unwrap_or(self.n_keys)
    }
}

/// The `Params` block of attention.wgsl and attention_tiled.wgsl, field for field.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct AttnParams {
    t: u32,
    heads: u32,
    head_dim: u32,
    pos0: u32,
    n_keys: u32,
    causal: u32,
    q_off: u32,
    o_off: u32,
    q_stride: u32,
    kv_stride: u32,
    k_off: u32,
    v_off: u32,
    scale: f32,
    o_stride: u32,
    chunk: u32,
    chunks: u32,
}
const _: () = assert!(std::mem::size_of::<AttnParams>() == 16 * 4, "one 4-byte field per WGSL Params member");

/// Which attention kernel serves a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttnKernel {
    /// One workgroup per (query row, head) over all its keys (attention.wgsl).
    Rows,
    /// The same, with the keys also split into chunks whose partials a second pass combines: for
    /// decoding on GPUs, where (row, head) pairs alone are far too few workgroups.
    Split,
    /// Tiles of query rows sharing each loaded key and value (attention_tiled.wgsl).
    Tiled,
}

/// Query rows at or above this take the query-tiled kernel (below, most of a 16-row tile is idle).
pub const ATTN_TILED_MIN_ROWS: usize = 8;

/// On GPU kernel shapes, the fewest tiled workgroups (tiles × heads) worth the tiled kernel.
const ATTN_TILED_MIN_GROUPS: usize = 128;

/// The kernel [`attention`] uses for `s` on this adapter and kernel-shape set.
pub fn attention_kernel(gpu: &Gpu, s: &AttnShape, v_off: usize) -> AttnKernel {
    // Decoding gives only t·heads workgroups, far too few for a GPU, while each scans the whole
    // cache: then the keys are split into chunks too and the chunks' partials combined. (A CPU
    // rasteriser is already busy with that many workgroups; the extra pass would only cost.)
    if gpu.gpu_tuned() && s.t * s.heads < 256 && s.keys().div_ceil(ATTN_CHUNK) > 1 {
        AttnKernel::Split
    } else if s.t >= ATTN_TILED_MIN_ROWS && v_off % 4 == 0 && (!gpu.gpu_tuned() || s.t.div_ceil(ATTN_TILE_ROWS as usize) * s.heads >= ATTN_TILED_MIN_GROUPS) {
        // On GPUs only where the tiles still fill the machine (the 16×16-latent VAE mid-block,
        // one head of 256 rows, would be 16 workgroups against 256 row workgroups).
        AttnKernel::Tiled
    } else {
        AttnKernel::Rows
    }
}

/// Lanes per query row and keys per tile of the query-tiled kernel for a head dim: at most 32
/// accumulated output dims per lane, and the workgroup memory under WebGPU's 16 KiB default.
fn attn_tile(head_dim: usize) -> (usize, usize) {
    match head_dim {
        0..=64 => (4, 32),
        65..=256 => (8, 32),
        _ => (16, 16),
    }
}

/// Scaled dot-product attention of `s.t` query rows over their keys (causal over a cache, or
/// bidirectional), with the kernel [`attention_kernel`] picks.
pub fn attention(rec: &mut Recorder, s: AttnShape, q: View, k: View, v: View, o: View) {
    let kernel = attention_kernel(rec.gpu, &s, v.off);
    attention_using(rec, kernel, s, q, k, v, o)
}

/// [`attention`] with the kernel chosen by the caller (tests and benchmarks compare them).
pub fn attention_using(rec: &mut Recorder, kernel: AttnKernel, s: AttnShape, q: View, k: View, v: View, o: View) {
    let (View { buf: q, off: q_off }, View { buf: k, off: k_off }, View { buf: v, off: v_off }, View { buf: o, off: o_off }) = (q, k, v, o);
    assert!(s.head_dim <= 512 && s.head_dim % 4 == 0 && s.kv_stride % 4 == 0 && k_off % 4 == 0, "attention reads keys as vec4");
    assert!(kernel != AttnKernel::Tiled || v_off % 4 == 0, "the query-tiled kernel reads values as vec4");
    assert!(s.kv == KvFormat::F32 || v_off.is_multiple_of(2), "f16 values are read in pairs");
    let scale = 1.0 / (s.head_dim as f32).sqrt();
    let keys = s.keys();
    // At most a fixed number of chunks: long contexts get longer chunks (in steps of 16 keys, so
    // the count stays near the most) rather than more partials for the combine pass to read.
    let chunk = keys.div_ceil(ATTN_MAX_SPLITS).next_multiple_of(16).max(ATTN_CHUNK);
    let chunks = keys.div_ceil(chunk);
    let params = AttnParams {
        t: s.t as u32,
        heads: s.heads as u32,
        head_dim: s.head_dim as u32,
        pos0: s.causal_pos0.unwrap_or(0) as u32,
        n_keys: s.n_keys as u32,
        causal: s.causal_pos0.is_some() as u32,
        q_off: q_off as u32,
        o_off: o_off as u32,
        q_stride: s.q_stride as u32,
        kv_stride: s.kv_stride as u32,
        k_off: k_off as u32,
        v_off: v_off as u32,
        scale,
        o_stride: s.o_stride as u32,
        chunk: chunk as u32,
        chunks: chunks as u32,
    };
    let params: &[u32] = words(&params);
    let kv = s.kv.define();
    match kernel {
        AttnKernel::Split => {
            let part = rec.gpu.scratch("attention-partials", (s.t * s.heads * chunks * (s.head_dim + 2) * 4) as u64);
            let split: Vec<&str> = ["SPLIT"].into_iter().chain(kv).collect();
            rec.dispatch(pipeline_reducing(rec.gpu, "attention.wgsl", &split), params, &[q, k, v, &part], [s.t as u32, s.heads as u32, chunks as u32]);
            rec.dispatch(pipeline(rec.gpu, "attention.wgsl", &["COMBINE"]), params, &[&part, o], [s.t as u32, s.heads as u32, 1]);
        }
        AttnKernel::Rows => {
            let defines: Vec<&str> = kv.into_iter().collect();
            rec.dispatch(pipeline_reducing(rec.gpu, "attention.wgsl", &defines), params, &[q, k, v, o], [s.t as u32, s.heads as u32, 1])
        }
        AttnKernel::Tiled => {
            let (tpq, bk) = attn_tile(s.head_dim);
            let sizes = [format!("BQ={ATTN_TILE_ROWS}"), format!("HD={}", s.head_dim), format!("TPQ={tpq}"), format!("BK={bk}")];
            let defines: Vec<&str> = sizes.iter().map(String::as_str).chain(kv).collect();
            let rows = (s.t as u32).div_ceil(ATTN_TILE_ROWS);
            rec.dispatch(pipeline(rec.gpu, "attention_tiled.wgsl", &defines), params, &[q, k, v, o], [rows, s.heads as u32, 1]);
        }
    }
}

/// Query rows per workgroup of the query-tiled kernel (its BQ).
const ATTN_TILE_ROWS: u32 = 16;

/// Keys per workgroup when attention is split over the keys, up to ATTN_MAX_SPLITS chunks; past
/// that the chunks grow.
const ATTN_CHUNK: usize = 64;
const ATTN_MAX_SPLITS: usize = 32;

wgsl_params! {
    /// The `Params` block of elementwise.wgsl (one layout for every operation; unused fields 0).
    EltParams { n: u32, a_off: u32, b_off: u32, y_off: u32, cols: u32, a_stride: u32, y_stride: u32, }
}

/// y[i] = silu(a[2i]) · a[2i + 1] for i < n: the MLP gate over interleaved gate|up outputs.
pub fn swiglu_pairs(rec: &mut Recorder, a: &wgpu::Buffer, y: &wgpu::Buffer, n: usize) {
    let p = pipeline(rec.gpu, "elementwise.wgsl", &["SWIGLU_PAIRS"]);
    rec.dispatch(p, words(&EltParams { n: n as u32, ..Default::default() }), &[a, y], grid((n as u32).div_ceil(256)));
}

/// y[y_off..] += a[a_off..] over `n` elements.
pub fn add(rec: &mut Recorder, a: &wgpu::Buffer, a_off: usize, y: &wgpu::Buffer, y_off: usize, n: usize) {
    let p = pipeline(rec.gpu, "elementwise.wgsl", &["ADD"]);
    let params = EltParams { n: n as u32, a_off: a_off as u32, y_off: y_off as u32, ..Default::default() };
    rec.dispatch(p, words(&params), &[a, y], grid((n as u32).div_ceil(256)));
}

/// y[y_off + i] = silu(a[a_off + i]) over `n` elements.
pub fn silu(rec: &mut Recorder, a: &wgpu::Buffer, a_off: usize, y: &wgpu::Buffer, y_off: usize, n: usize) {
    let p = pipeline(rec.gpu, "elementwise.wgsl", &["SILU"]);
    let params = EltParams { n: n as u32, a_off: a_off as u32, y_off: y_off as u32, ..Default::default() };
    rec.dispatch(p, words(&params), &[a, y], grid((n as u32).div_ceil(256)));
}

/// FiLM in place over `rows` rows of `cols`: y = y·(1 + scale) + shift, `film[film_off..]` = [scale | shift].
pub fn film(rec: &mut Recorder, film: &wgpu::Buffer, film_off: usize, y: &wgpu::Buffer, y_off: usize, rows: usize, cols: usize) {
    let p = pipeline(rec.gpu, "elementwise.wgsl", &["FILM"]);
    let n = rows * cols;
    let params = EltParams { n: n as u32, a_off: film_off as u32, y_off: y_off as u32, cols: cols as u32, ..Default::default() };
    rec.dispatch(p, words(&params), &[film, y], grid((n as u32).div_ceil(256)));
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
    let params =
        EltParams { n: n as u32, a_off: a_off as u32, b_off: 0, y_off: y_off as u32, cols: cols as u32, a_stride: a_stride as u32, y_stride: y_stride as u32 };
    rec.dispatch(p, words(&params), &[a, y], grid((n as u32).div_ceil(256)));
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
    let params = DepthwiseParams { b: b as u32, h: h as u32, w: w as u32, c: c as u32, k: k as u32, pad: (k / 2) as u32 };
    rec.dispatch(p, words(&params), &[x, weight, bias, y], grid(n.div_ceil(256)));
}

wgsl_params! {
    /// The `Params` block of depthwise.wgsl.
    DepthwiseParams { b: u32, h: u32, w: u32, c: u32, k: u32, pad: u32, }
}

/// Bytes of the statistics buffer [`grn`] needs.
pub fn grn_stats_bytes(b: usize, c: usize) -> u64 {
    (b * (c + 1) * 4) as u64
}

/// Global response norm in place over `b` channels-last maps of `rows` × `c` (γ, β per channel).
#[allow(clippy::too_many_arguments)]
pub fn grn(rec: &mut Recorder, y: &wgpu::Buffer, b: usize, rows: usize, c: usize, gamma: &wgpu::Buffer, beta: &wgpu::Buffer, stats: &wgpu::Buffer) {
    let params = GrnParams { b: b as u32, rows: rows as u32, c: c as u32 };
    let p1 = pipeline(rec.gpu, "grn.wgsl", &["STATS"]);
    rec.dispatch(p1, words(&params), &[y, stats], [(c as u32).div_ceil(64), b as u32, 1]);
    let p2 = pipeline_reducing(rec.gpu, "grn.wgsl", &["MEAN"]);
    rec.dispatch(p2, words(&params), &[stats], [b as u32, 1, 1]);
    let p3 = pipeline(rec.gpu, "grn.wgsl", &["APPLY"]);
    rec.dispatch(p3, words(&params), &[stats, gamma, beta, y], grid(((b * rows * c) as u32).div_ceil(256)));
}

wgsl_params! {
    /// The `Params` block of grn.wgsl.
    GrnParams { b: u32, rows: u32, c: u32, }
}

/// The latent [cz, s, s] as patch rows [(s/2)², cz·4] (2×2 patchify conv columns).
pub fn patchify(rec: &mut Recorder, z: &wgpu::Buffer, s: usize, cz: usize, rows: &wgpu::Buffer) {
    let p = pipeline(rec.gpu, "flow.wgsl", &["PATCHIFY"]);
    let n = (cz * s * s) as u32;
    rec.dispatch(p, words(&FlowParams { s: s as u32, cz: cz as u32, ..Default::default() }), &[z, rows], [n.div_ceil(256), 1, 1]);
}

wgsl_params! {
    /// The `Params` block of flow.wgsl.
    FlowParams { s: u32, cz: u32, w: f32, dt: f32, t: f32, v_off: u32, }
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
    let params = FlowParams { s: s as u32, cz: cz as u32, w, dt, t, v_off: v_off as u32 };
    let params = words(&params);
    let n = (s * s) as u32;
    match preview {
        Some(rgba) => rec.dispatch(pipeline(rec.gpu, "flow.wgsl", &["EULER", "PREVIEW"]), params, &[v, z, rgba], [n.div_ceil(256), 1, 1]),
        None => rec.dispatch(pipeline(rec.gpu, "flow.wgsl", &["EULER"]), params, &[v, z], [n.div_ceil(256), 1, 1]),
    }
}

/// Gathers embedding rows for `t` token ids into y[y_off..] ([t, w.k]); with `copy`, also the rows
/// times the first RMSNorm's weight (a decoded token's first fused product reads them).
#[allow(clippy::too_many_arguments)]
pub fn embedding(rec: &mut Recorder, w: &Weight, ids: &wgpu::Buffer, ids_off: usize, t: usize, y: &wgpu::Buffer, y_off: usize, copy: Option<NormCopy>) {
    assert!(y_off % 4 == 0, "embedding: unaligned output");
    let mut defines = vec![w.quant.define()];
    if copy.is_some() {
        defines.push("NORM_COPY");
    }
    let p = pipeline(rec.gpu, "embedding.wgsl", &defines);
    for c in &w.chunks {
        let params = EmbeddingParams {
            t: t as u32,
            k: w.k as u32,
            row0: c.row0 as u32,
            rows: c.rows as u32,
            soff: c.soff,
            y_off: y_off as u32,
            ids_off: ids_off as u32,
        };
        let mut bufs = vec![&c.buf, ids, y];
        if let Some(NormCopy { g, yg, ssq }) = copy {
            bufs.extend([g, yg, ssq]);
        }
        rec.dispatch(p.clone(), words(&params), &bufs, [(w.k as u32 / 4).div_ceil(64), t as u32, 1]);
    }
}

wgsl_params! {
    /// The `Params` block of embedding.wgsl.
    EmbeddingParams { t: u32, k: u32, row0: u32, rows: u32, soff: u32, y_off: u32, ids_off: u32, }
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
    rec.dispatch(p1, words(&TopkParams { n: n as u32, k: k as u32, x_off: x_off as u32 }), &[x, scratch], [groups as u32, 1, 1]);
    let p2 = pipeline(rec.gpu, "topk.wgsl", &["PASS2"]);
    rec.dispatch(p2, words(&TopkParams { n: (groups * k) as u32, k: k as u32, x_off: 0 }), &[scratch, out], [1, 1, 1]);
}

wgsl_params! {
    /// The `Params` block of topk.wgsl.
    TopkParams { n: u32, k: u32, x_off: u32, }
}

/// A channels-last feature map [h, w, c] held in one buffer.
#[derive(Clone, Copy)]
pub struct Map<'a> {
    pub buf: &'a wgpu::Buffer,
    pub h: usize,
    pub w: usize,
    pub c: usize,
}

impl Map<'_> {
    pub fn row_bytes(&self) -> u64 {
        (self.w * self.c * 4) as u64
    }
}

/// Output rows × columns of one workgroup of the SG8 tile (gemm_sg8.wgsl: SG_PER_WG subgroups of
/// SG_PIXELS × SG_COLS), in the convolution and the matrix product.
const SG8_TILE: (u32, u32) = (8 * 16, 32);

/// Stride-1, zero-padded ks×ks convolution y (+)= conv(x̃) + bias over channels-last maps, where
/// x̃ is x, optionally nearest-upsampled ×2 (`upsample`).
/// `w` is [Cout, ks·ks·Cin] (taps major, input channels minor). Works in bands of output rows so
/// that every bound window stays within the device's binding limit. Kernel shapes: the 64×64
/// matrix tile on GPUs; on CPU rasterisers the subgroup kernel where subgroups are 8 lanes wide,
/// else barrier-free lanes of 4 channels × LANE_M pixels.
#[allow(clippy::too_many_arguments)]
pub fn conv2d(rec: &mut Recorder, w: &Weight, ks: usize, bias: &wgpu::Buffer, x: Map, upsample: bool, y: Map, add: bool) {
    let up = if upsample { 2 } else { 1 };
    assert_eq!((x.h * up, x.w * up, x.c), (y.h, y.w, w.k / (ks * ks)), "conv2d shapes");
    assert_eq!(w.n, y.c);
    assert!(x.c % 4 == 0, "conv2d input channels must be a multiple of 4");
    let pad = ks / 2;
    let max = rec.gpu.max_binding();
    // Input rows (of x) that output rows r0..r1 read.
    let in_rows = |r0: usize, r1: usize| (r0.saturating_sub(pad) / up, ((r1 + pad).min(y.h) - 1) / up + 1);
    // A band of b output rows reads at most (b + 2·pad)/up + 2 input rows.
    let fits = |b: usize| (((b + 2 * pad) / up + 2).min(x.h)) as u64 * x.row_bytes() <= max && b as u64 * y.row_bytes() <= max;
    let mut band = y.h;
    while band > 1 && !fits(band) {
        band = band.div_ceil(2);
    }
    let mut defines = vec![w.quant.define(), "BIAS"];
    if add {
        defines.push("ADD");
    }
    if upsample {
        defines.push("UPSAMPLE");
    }
    let tuned = rec.gpu.gpu_tuned();
    let sg8 = !tuned && rec.gpu.sg8();
    // CPU rasterisers without 8-lane subgroups: barrier-free lanes of 4 channels × LANE_M pixels.
    let lane_sizes = [format!("LANE_WG={LANE_WG}"), format!("LANE_M={LANE_M}")];
    let (tile_m, tile_n) = if sg8 {
        defines.push("SG8");
        SG8_TILE
    } else if tuned {
        defines.push("GPU_TILE");
        gemm_tile(false)
    } else {
        defines.extend(["LANE_ROWS", lane_sizes[0].as_str(), lane_sizes[1].as_str()]);
        (LANE_M, 4 * LANE_WG)
    };
    let p = pipeline(rec.gpu, "conv.wgsl", &defines);
    let mut r0 = 0;
    while r0 < y.h {
        let r1 = (r0 + band).min(y.h);
        let (i0, i1) = in_rows(r0, r1);
        let xr = (x.buf, i0 as u64 * x.row_bytes(), Some((i1 - i0) as u64 * x.row_bytes()));
        let yr = (y.buf, r0 as u64 * y.row_bytes(), Some((r1 - r0) as u64 * y.row_bytes()));
        assert!(xr.1 % 256 == 0 && yr.1 % 256 == 0, "conv2d band offsets must be 256-byte aligned");
        let m = (r1 - r0) * y.w;
        for c in &w.chunks {
            let params = ConvParams {
                m: m as u32,
                n: c.rows as u32,
                k: w.k as u32,
                cin: x.c as u32,
                w_out: y.w as u32,
                h_conv: y.h as u32,
                out_row0: r0 as u32,
                in_row0: i0 as u32,
                w_in: x.w as u32,
                ks: ks as u32,
                pad: pad as u32,
                y_off: 0,
                y_stride: y.c as u32,
                row0: c.row0 as u32,
                soff: c.soff,
            };
            let bufs = [(&c.buf, 0, None), xr, yr, (bias, 0, None)];
            rec.dispatch_ranges(p.clone(), words(&params), &bufs, [(c.rows as u32).div_ceil(tile_n), (m as u32).div_ceil(tile_m), 1]);
        }
        r0 = r1;
    }
}

wgsl_params! {
    /// The `Params` block of conv.wgsl.
    ConvParams {
        m: u32,
        n: u32,
        k: u32,
        cin: u32,
        w_out: u32,
        h_conv: u32,
        out_row0: u32,
        in_row0: u32,
        w_in: u32,
        ks: u32,
        pad: u32,
        y_off: u32,
        y_stride: u32,
        row0: u32,
        soff: u32,
    }
}

wgsl_params! {
    /// The `Params` block of groupnorm.wgsl.
    GroupNormParams { p: u32, c: u32, cpg: u32, chunk: u32, part0: u32, parts: u32, eps: f32, }
}

const GN_CHUNK: usize = 1024;

/// Bytes of the partials buffer [`groupnorm_stats`] needs for a map of `pixels` and `groups`.
pub fn groupnorm_partials_bytes(pixels: usize, groups: usize) -> u64 {
    (pixels.div_ceil(GN_CHUNK) * groups * 16) as u64
}

/// GroupNorm statistics of `x` into `stats` ([groups] (mean, 1/sqrt(var + eps))).
pub fn groupnorm_stats(rec: &mut Recorder, x: Map, groups: usize, eps: f32, partials: &wgpu::Buffer, stats: &wgpu::Buffer) {
    let (pixels, c) = (x.h * x.w, x.c);
    let cpg = c / groups;
    let per_window = ((rec.gpu.max_binding() / (c as u64 * 4)) as usize / GN_CHUNK).max(1) * GN_CHUNK;
    let p1 = pipeline_reducing(rec.gpu, "groupnorm.wgsl", &["STATS"]);
    let mut px0 = 0;
    while px0 < pixels {
        let n = per_window.min(pixels - px0);
        let params = GroupNormParams { p: n as u32, c: c as u32, cpg: cpg as u32, chunk: GN_CHUNK as u32, part0: (px0 / GN_CHUNK) as u32, parts: 0, eps };
        let xr = (x.buf, (px0 * c * 4) as u64, Some((n * c * 4) as u64));
        rec.dispatch_ranges(p1.clone(), words(&params), &[xr, (partials, 0, None)], [n.div_ceil(GN_CHUNK) as u32, groups as u32, 1]);
        px0 += n;
    }
    let p2 = pipeline(rec.gpu, "groupnorm.wgsl", &["FINAL"]);
    let params = GroupNormParams { c: c as u32, cpg: cpg as u32, chunk: GN_CHUNK as u32, parts: pixels.div_ceil(GN_CHUNK) as u32, eps, ..Default::default() };
    rec.dispatch(p2, words(&params), &[partials, stats], [(groups as u32).div_ceil(64), 1, 1]);
}

/// Pixel rows of invocations per [`groupnorm_apply`] window (groupnorm.wgsl APPLY: each
/// invocation loops over the pixels this many apart); a multiple of its workgroup's 16.
const GN_APPLY_PIXEL_SLOTS: usize = 16 * 1024;

/// The GroupNorm of `x` (statistics from [`groupnorm_stats`]), then SiLU when `silu`, written to
/// `y` or, with `y` None, over `x` in place. Works in windows of pixels within the binding limit.
#[allow(clippy::too_many_arguments)]
pub fn groupnorm_apply(
    rec: &mut Recorder,
    x: Map,
    groups: usize,
    stats: &wgpu::Buffer,
    gamma: &wgpu::Buffer,
    beta: &wgpu::Buffer,
    y: Option<&wgpu::Buffer>,
    silu: bool,
) {
    let (pixels, c) = (x.h * x.w, x.c);
    assert!(c % 4 == 0, "groupnorm_apply reads channels as vec4");
    let mut defines = vec!["APPLY"];
    if silu {
        defines.push("SILU");
    }
    if y.is_none() {
        defines.push("INPLACE");
    }
    let p = pipeline(rec.gpu, "groupnorm.wgsl", &defines);
    // Window starts stay 256-byte aligned (storage binding offsets must be).
    let per_window = ((rec.gpu.max_binding() / (c as u64 * 4)) as usize / 64).max(1) * 64;
    let mut px0 = 0;
    while px0 < pixels {
        let n = per_window.min(pixels - px0);
        let params = GroupNormParams { p: n as u32, c: c as u32, cpg: (c / groups) as u32, ..Default::default() };
        let win = |b| (b, (px0 * c * 4) as u64, Some((n * c * 4) as u64));
        let mut bufs = vec![win(x.buf), (stats, 0, None), (gamma, 0, None), (beta, 0, None)];
        if let Some(y) = y {
            bufs.push(win(y));
        }
        let wg = [(c as u32 / 4).div_ceil(16), (n.min(GN_APPLY_PIXEL_SLOTS) as u32).div_ceil(16), 1];
        rec.dispatch_ranges(p.clone(), words(&params), &bufs, wg);
        px0 += n;
    }
}

#[cfg(test)]
mod tests {
    /// The grids of the SG8 convolution and product assume gemm_sg8.wgsl's tile; they must change together.
    #[test]
    fn sg8_tile_matches_the_shader() {
        let src = super::shader::source("matmul.wgsl", &["F16", "BIAS", "SG8"]);
        for line in ["const SG_LANES: u32 = 8u;", "const SG_PIXELS: u32 = 2u * SG_LANES;", "const SG_COLS: u32 = 4u * SG_LANES;", "const SG_PER_WG: u32 = 8u;"]
        {
            assert!(src.contains(line), "conv.wgsl no longer has `{line}`");
        }
        assert_eq!(super::SG8_TILE, (8 * 2 * 8, 4 * 8));
    }
}

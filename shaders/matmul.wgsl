// Tiled matrix–matrix product for prefill and batched work: y[m, row0 + n] (+)= x[m, :] · W[n, :] (+ b).
// The tiling is in gemm_tile64.wgsl (64×64 tiles, GPU_TILE, for real GPUs; gemm_tile128.wgsl's
// 128×128 with TILE128, where chosen) or gemm_sg8.wgsl (SG8:
// 128 × 32 per workgroup in 8-lane subgroups' registers, for CPU rasterisers with 8-lane
// subgroups); other CPU rasterisers take matvec.wgsl's lane kernels. Accumulation is f32.
// Defines: one of F32/F16/Q8/Q4/Q4A (weight format, see quant.wgsl); ADD; BIAS; GELU/SILU;
// SWIGLU_PAIRS or ROPE_PAIRS [TWO_SEQS] (GPU_TILE only; see linear_out.wgsl); SMALL_M; GPU_TILE
// or SG8.

//#include linear_params.wgsl

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> w: array<u32>;            // weight chunk [N, K], packed
@group(0) @binding(2) var<storage, read> x: array<vec4<f32>>;      // activations [M, K]
@group(0) @binding(3) var<storage, read_write> y: array<f32>;      // output [M, y_stride]
#if BIAS
@group(0) @binding(4) var<storage, read> bias: array<f32>;         // [row0 + N]
#endif

//#include quant.wgsl
//#include linear_out.wgsl

// The cursor interface of gemm_tile64.wgsl: here just a position.
struct XCursor {
    m: u32,
    k: u32,
}

fn x_start(m: u32, k: u32) -> XCursor {
    return XCursor(m, k);
}

fn x_advance(c: ptr<function, XCursor>, dk: u32) {
    (*c).k += dk;
}

fn x_load(c: XCursor) -> vec4<f32> {
    return x[(p.x_off + c.m * p.K + c.k) / 4u];
}

#if SG8
//#include gemm_sg8.wgsl

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(subgroup_id) sg: u32, @builtin(subgroup_invocation_id) lane: u32) {
    let m0 = (wid.y * SG_PER_WG + sg) * SG_PIXELS;
    let n0 = wid.x * SG_COLS + lane;
    // The lane's two rows of x; rows past M read the last row (their results are not stored).
    let xa = (p.x_off + min(m0 + lane, p.M - 1u) * p.K) / 4u;
    let xb = (p.x_off + min(m0 + lane + SG_LANES, p.M - 1u) * p.K) / 4u;
    var acc: Sg8Acc;
    for (var k = 0u; k < p.K; k += 4u) {
        sg8_step(&acc, x[xa + k / 4u], x[xb + k / 4u], n0, k);
    }
    sg8_store(acc, m0, n0);
}
#else
#if TILE128
//#include gemm_tile128.wgsl
#else
//#include gemm_tile64.wgsl
#endif
#endif

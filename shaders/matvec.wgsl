// Matrix–vector product for decoding and, on CPU rasterisers without 8-lane subgroups, for every
// product: y[m, row0 + n] (+)= x[m, :] · W[n, :] (+ b). Memory-bound for few rows: each weight
// word is read once per activation row (LANE_M: once per LANE_M rows).
// GPU shapes (M ≤ 4): a workgroup owns 8 output rows, 32 lanes per row striding along K
// (matvec_rows.wgsl: subgroupAdd with SUBGROUPS, a workgroup tree without).
// Defines: one of F32/F16/Q8/Q4/Q4A (weight format, see quant.wgsl); ADD (accumulate into y);
// BIAS; GELU/SILU; SWIGLU_PAIRS or ROPE_PAIRS [TWO_SEQS] (lane kernels; see linear_out.wgsl);
// NORM_COPY (with ADD, without BIAS, one activation row, chunks starting at multiples of 4 rows):
// also write y · g (see linear_out.wgsl) and the sum of the new y² over
// each 4 rows, from which the next fused product gets its RMSNorm scale (matvec_fused.wgsl);
// Q4_GROUPS (4-bit formats, GPU shapes): a whole 32-weight group per lane (q4_group_words): 16 B
// loads, contiguous across lanes, one scale per group; WIDE_RUNS (q8, f16; GPU shapes): the same
// for runs of 16 B; STAGE_X (GPU shapes): activations staged in workgroup memory (matvec_rows.wgsl);
// LANE_ROWS (CPU rasterisers): four whole rows per lane and no barrier (see matvec_lanes.wgsl),
// LANE_WG lanes per workgroup, grid y = M; with LANE_M (more than 4 activation rows): LANE_M
// activation rows per lane as well, grid y = ceil(M / LANE_M).

//#include linear_params.wgsl

@group(0) @binding(0) var<uniform> p: Params;
#if W_VEC4
@group(0) @binding(1) var<storage, read> w: array<vec4<u32>>;      // weight chunk [N, K], packed, as 16 B quads
#else
@group(0) @binding(1) var<storage, read> w: array<u32>;            // weight chunk [N, K], packed
#endif
@group(0) @binding(2) var<storage, read> x: array<vec4<f32>>;      // activations [M, K] (f32, as vec4)
@group(0) @binding(3) var<storage, read_write> y: array<f32>;      // output [M, y_stride]
#if BIAS
@group(0) @binding(4) var<storage, read> bias: array<f32>;         // [row0 + N] full bias vector
#endif
#if NORM_COPY
@group(0) @binding(4) var<storage, read> g: array<f32>;            // next RMSNorm weight [row0 + N]
@group(0) @binding(5) var<storage, read_write> yg: array<f32>;     // y · g, laid out as y
@group(0) @binding(6) var<storage, read_write> ssq: array<f32>;    // Σ y² of each 4 rows, laid out as y / 4 (one activation row)
#endif

//#include quant.wgsl
//#include linear_out.wgsl

#if LANE_ROWS
//#include matvec_lanes.wgsl

#if LANE_M
// CPU rasterisers without 8-lane subgroups, more than 4 activation rows (prefill): each lane owns
// four weight rows × LANE_M activation rows and walks K alone, applying each decoded weight quad to
// its LANE_M rows; no workgroup memory, no barrier. Grid y = ceil(M / LANE_M).
@compute @workgroup_size(LANE_WG)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let n = gid.x * 4u;
    if (n >= p.N) {
        return;
    }
    let m0 = gid.y * LANE_M;
    let r = lane_rows(n, p.N);
    // Rows past M read row M − 1 again (always in bounds) and are never stored.
    var xr: array<u32, LANE_M>;
    for (var j = 0u; j < LANE_M; j++) {
        xr[j] = (p.x_off + min(m0 + j, p.M - 1u) * p.K) / 4u;
    }
    var acc: array<vec4<f32>, LANE_M>;
    for (var k = 0u; k < p.K; k += 4u) {
        let wm = lane_w4(r, k, p.K, p.soff);
        for (var j = 0u; j < LANE_M; j++) {
            acc[j] += x[xr[j] + k / 4u] * wm;
        }
    }
    lane_store(m0, n, p.M, p.N, acc);
}
#else
// CPU rasterisers: four rows per lane, no barrier (see matvec_lanes.wgsl); grid y = M.
@compute @workgroup_size(LANE_WG)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let n = gid.x * 4u;
    if (n >= p.N) {
        return;
    }
    let m = gid.y;
    let acc = lane_dot4(lane_rows(n, p.N), p.K, p.soff, (p.x_off + m * p.K) / 4u);
#if SWIGLU_PAIRS || ROPE_PAIRS
    store_quad(m, n, acc);
#else
    for (var j = 0u; j < 4u; j++) {
        if (n + j < p.N) {
            store_out(m, n + j, acc[j]);
        }
    }
#endif
#if NORM_COPY
    var sq = 0.0;
    for (var j = 0u; j < min(4u, p.N - n); j++) {
        let v = y[p.y_off + p.row0 + n + j];
        sq += v * v;
    }
    ssq[(p.y_off + p.row0 + n) / 4u] = sq;
#endif
}
#endif
#else
//#include matvec_rows.wgsl
#if NORM_COPY
var<workgroup> squares: array<f32, 8>; // per row of the workgroup: its new y²
#endif

@compute @workgroup_size(256)
fn main(inv: Lane, @builtin(workgroup_id) wid: vec3<u32>) {
    let rl = row_lane(inv);
    let n = wid.x * 8u + rl.row;
    let m = wid.y;
    let xb = (p.x_off + m * p.K) / 4u;
    let acc = row_dot(n, n < p.N, rl, inv.li, p.K, p.soff, xb);
    let total = row_sum(rl, acc);
    if (rl.lane == 0u && n < p.N) {
        store_out(m, n, total);
    }
#if NORM_COPY
    // Each 4 rows' Σ y² (one activation row; the chunk starts at a multiple of 4 rows).
    if (rl.lane == 0u) {
        var v = 0.0;
        if (n < p.N) {
            v = y[p.y_off + p.row0 + n];
        }
        squares[rl.row] = v * v;
    }
    workgroupBarrier();
    if (inv.li < 2u && wid.x * 8u + 4u * inv.li < p.N) {
        ssq[(p.y_off + p.row0 + wid.x * 8u) / 4u + inv.li] = squares[4u * inv.li] + squares[4u * inv.li + 1u] + squares[4u * inv.li + 2u] + squares[4u * inv.li + 3u];
    }
#endif
}
#endif

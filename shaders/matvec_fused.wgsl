// The two stacked matrix–vector products of a decoded token's layer, each with the RMSNorm before
// it folded in (PRESCALED) and the work after it in its epilogue, so a layer is six dispatches on
// GPU kernel shapes (attention split over the keys and combined) and five on CPU rasterisers:
//   QKV:     W = [Wq; Wk; Wv] (3·H·D rows), each head's rows stored as RoPE rotation pairs
//            (i, i + D/2) side by side (kernels::qkv_row_order), so neighbouring outputs are the
//            two halves of a pair: rotate-half RoPE is applied to q and k in registers, q is
//            written to `q`, k and v straight into their cache slot.
//   GATE_UP: W = gate and up rows interleaved (gate_j, up_j); writes silu(gate_j) · up_j.
//   PLAIN:   writes the product (lm_head).
// One activation row. Exact in f32 up to summation order:
//   y_n = (Σ_k W[n, k] · x_k · g_k) · 1/sqrt(mean(x²) + eps)   (g: the RMSNorm weight).
// GPU shapes: each workgroup owns 8 rows, 32 lanes per row striding along K (matvec_rows.wgsl).
// The norm is not a pass of its own: whoever writes the residual x (the embedding gather, the
// o_proj and down_proj products) also writes xg = x · g for the norm that follows it and the sums
// of x² over each 4 elements (NORM_COPY in embedding.wgsl and matvec.wgsl). This kernel takes the
// dot with xg and scales by 1/sqrt(mean(x²) + eps), adding up those K/4 partial sums (PRESCALED;
// summing x² itself cost every lane of the CPU kernel ~20 % of lavapipe's decode). NORMED: the
// input is already normalised by norm.wgsl: the final norm before lm_head (whose vocab/8
// workgroups would each add up the sums again).
// Defines: QKV, GATE_UP or PLAIN; PRESCALED or NORMED; one of F32/F16/Q8/Q4 (see quant.wgsl);
// Q4_GROUPS, WIDE_RUNS and STAGE_X as in matvec.wgsl; LANE_ROWS (CPU rasterisers): four whole rows per
// lane and no barrier (matvec_lanes.wgsl), LANE_WG lanes per workgroup.

struct Params {
    K: u32,      // row length (hidden size; K % 4 == 0, PRESCALED: K % 16 == 0)
    N: u32,      // rows of this weight chunk
    row0: u32,   // first row of the chunk in the stacked matrix (QKV: a multiple of D)
    soff: u32,   // word offset of the group scales inside w (quantized formats)
    x_off: u32,  // element offset of the activation row in x (multiple of 4; PRESCALED: of 16)
    eps: f32,    // RMSNorm epsilon (PRESCALED)
    hd: u32,     // QKV: H·D, rows per section of W
    D: u32,      // QKV: head dim (even)
    pos: u32,    // QKV: RoPE position of the token
    y_off: u32,  // element offset of the output row (QKV: in q; otherwise in y)
    kv_off: u32, // QKV: element offset of the token's cache slot in k and v
}

@group(0) @binding(0) var<uniform> p: Params;
#if W_VEC4
@group(0) @binding(1) var<storage, read> w: array<vec4<u32>>;      // weight chunk [N, K], packed, as 16 B quads
#else
@group(0) @binding(1) var<storage, read> w: array<u32>;             // weight chunk [N, K], packed
#endif
@group(0) @binding(2) var<storage, read> x: array<vec4<f32>>;       // the dot's input, row of K at x_off: x · g (PRESCALED) or normalised
@group(0) @binding(3) var<storage, read> ssq: array<vec4<f32>>;     // PRESCALED: Σ x² of each 4 elements of the residual row [K / 4], at x_off / 4 (NORMED: unused)
#if QKV
@group(0) @binding(4) var<storage, read> table: array<vec2<f32>>;   // RoPE (cos, sin) [max_pos, D/2]
@group(0) @binding(5) var<storage, read_write> q: array<f32>;       // queries [H·D] at y_off
@group(0) @binding(6) var<storage, read_write> kc: array<KvPair>;   // key cache [slots, H·D / 2] (kv_cache.wgsl)
@group(0) @binding(7) var<storage, read_write> vc: array<KvPair>;   // value cache [slots, H·D / 2]
//#include kv_cache.wgsl
#endif
#if GATE_UP
@group(0) @binding(4) var<storage, read_write> y: array<f32>;       // silu(gate) · up [(row0 + N)/2]
//#include activation.wgsl
#endif
#if PLAIN
@group(0) @binding(4) var<storage, read_write> y: array<f32>;       // product [row0 + N]
#endif

//#include quant.wgsl

#if QKV
// Rows r .. r + 3 of the chunk (r % 4 == 0) with their dots: two neighbouring rotation pairs of a
// head. RoPE on q and k, then q to `q`, k and v into their cache slot.
fn quad_out(r: u32, v: vec4<f32>) {
    let half = p.D / 2u;
    let row = p.row0 + r;           // global row of the quad (a multiple of 4)
    let section = row / p.hd;       // 0: q, 1: k, 2: v
    let e = row % p.hd;             // head · D + 2i
    let c = (e / p.D) * p.D + (e % p.D) / 2u; // element of the first half: head · D + i
    let kv = (p.kv_off + c) / 2u;   // its cache pair
    if (section == 2u) {
        let h = quad_halves(v);
        vc[kv] = kv_pair(h.lo);
        vc[kv + half / 2u] = kv_pair(h.hi);
        return;
    }
    let tb = p.pos * half + c % p.D;
    let h = rope_quad(v, table[tb], table[tb + 1u]);
    if (section == 0u) {
        q[p.y_off + c] = h.lo.x;
        q[p.y_off + c + 1u] = h.lo.y;
        q[p.y_off + c + half] = h.hi.x;
        q[p.y_off + c + half + 1u] = h.hi.y;
    } else {
        kc[kv] = kv_pair(h.lo);
        kc[kv + half / 2u] = kv_pair(h.hi);
    }
}
#endif
#if GATE_UP
// (gate, up) pair (r, r + 1) of the chunk with its dots: silu(gate) · up.
fn pair_out(r: u32, va: f32, vb: f32) {
    y[p.y_off + (p.row0 + r) / 2u] = silu(va) * vb;
}

// Rows r .. r + 3 (r % 4 == 0): two (gate, up) pairs, the second only when inside the chunk.
fn quad_out(r: u32, v: vec4<f32>) {
    pair_out(r, v.x, v.y);
    if (r + 2u < p.N) {
        pair_out(r + 2u, v.z, v.w);
    }
}
#endif

#if LANE_ROWS
//#include matvec_lanes.wgsl

// CPU rasterisers: four rows per lane, two pairs, no barrier (matvec_lanes.wgsl).
@compute @workgroup_size(LANE_WG)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let n = gid.x * 4u;
    if (n >= p.N) {
        return;
    }
    let xb = p.x_off / 4u;
#if PRESCALED
    // Every lane adds up the residual writer's K/4 partial sums itself (K/16 loads, against its
    // four rows' K/2 weight words and K/4 activation loads).
    var ss = 0.0;
    for (var k = 0u; k < p.K / 16u; k++) {
        ss += dot(ssq[xb / 4u + k], vec4<f32>(1.0));
    }
    let inv = 1.0 / sqrt(ss / f32(p.K) + p.eps);
#else
    let inv = 1.0;
#endif
    let v = lane_dot4(lane_rows(n, p.N), p.K, p.soff, xb) * inv;
#if PLAIN
    for (var j = 0u; j < 4u; j++) {
        if (n + j < p.N) {
            y[p.y_off + p.row0 + n + j] = v[j];
        }
    }
#else
    // N is even (kernels::pairs_fusable; QKV: a multiple of 4), so a lane holds whole pairs.
    quad_out(n, v);
#endif
}
#else
//#include matvec_rows.wgsl
var<workgroup> row_totals: array<f32, 8>;
#if PRESCALED
var<workgroup> squares: array<f32, 32>; // row 0's lanes: Σ x² over their share
#endif

// The chunk row that row `r` (0..8) of workgroup `wg` computes, or N when none. Row pairs
// (2j, 2j+1) are neighbouring rows: a rotation pair (QKV) or a (gate, up) pair.
fn row_of(wg: u32, r: u32) -> u32 {
    return min(wg * 8u + r, p.N);
}

@compute @workgroup_size(256)
fn main(inv: Lane, @builtin(workgroup_id) wid: vec3<u32>) {
    let rl = row_lane(inv);
    let n = row_of(wid.x, rl.row);
    let xb = p.x_off / 4u;
#if PRESCALED
    // Row 0's lanes add up the residual writer's partial sums of squares (a whole SIMD batch takes
    // the branch or none does).
    if (rl.row == 0u) {
        var ss = 0.0;
        for (var k = rl.lane; k < p.K / 16u; k += 32u) {
            ss += dot(ssq[xb / 4u + k], vec4<f32>(1.0));
        }
        squares[rl.lane] = ss;
    }
#endif
    let acc = row_dot(n, n < p.N, rl, inv.li, p.K, p.soff, xb);
    let total = row_sum(rl, acc);
    if (rl.lane == 0u) {
        row_totals[rl.row] = total;
    }
    workgroupBarrier();
#if PRESCALED
    // Summed serially after the rows: a branch for them inside the tree cost lavapipe ~20 %.
    var sq = 0.0;
    for (var i = 0u; i < 32u; i++) {
        sq += squares[i];
    }
    let scale = 1.0 / sqrt(sq / f32(p.K) + p.eps);
#else
    let scale = 1.0;
#endif
#if PLAIN
    if (inv.li < 8u && row_of(wid.x, inv.li) < p.N) {
        y[p.y_off + p.row0 + row_of(wid.x, inv.li)] = row_totals[inv.li] * scale;
    }
#else
    // Two epilogue lanes, one per row quad (rows past N have zero totals).
    if (inv.li >= 2u) {
        return;
    }
    let r = row_of(wid.x, 4u * inv.li);
    if (r >= p.N) {
        return;
    }
    let b = 4u * inv.li;
    quad_out(r, vec4<f32>(row_totals[b], row_totals[b + 1u], row_totals[b + 2u], row_totals[b + 3u]) * scale);
#endif
}
#endif

// The two stacked matrix–vector products of a decoded token's layer, each with the RMSNorm before
// it in its prologue and the work after it in its epilogue, so a layer is five or six dispatches:
//   QKV:     W = [Wq; Wk; Wv] (3·H·D rows). Rows are taken in RoPE rotation pairs (i, i + D/2) of
//            one head, so a workgroup holds both halves of each pair: rotate-half RoPE is applied
//            to q and k in registers, q is written to `q`, k and v straight into their cache slot.
//   GATE_UP: W = gate and up rows interleaved (gate_j, up_j); writes silu(gate_j) · up_j.
//   PLAIN:   writes the product (the final norm folded into lm_head).
// One activation row. Exact in f32 up to summation order:
//   y_n = (Σ_k W[n, k] · x_k · g_k) · 1/sqrt(mean(x²) + eps)   (g: the RMSNorm weight).
// Each workgroup owns 8 rows; its 32-lane groups stride along K as in matvec.wgsl, and every group
// also sums x² over the row (the x it reads anyway), so no separate norm pass is needed.
// Defines: QKV, GATE_UP or PLAIN; one of F32/F16/Q8/Q4 (see quant.wgsl).

struct Params {
    K: u32,      // row length (hidden size; K % 4 == 0)
    N: u32,      // rows of this weight chunk
    row0: u32,   // first row of the chunk in the stacked matrix (QKV: a multiple of D)
    soff: u32,   // word offset of the group scales inside w (quantized formats)
    x_off: u32,  // element offset of the activation row in x (multiple of 4)
    eps: f32,    // RMSNorm epsilon
    hd: u32,     // QKV: H·D, rows per section of W
    D: u32,      // QKV: head dim (even)
    pos: u32,    // QKV: RoPE position of the token
    y_off: u32,  // element offset of the output row (QKV: in q; otherwise in y)
    kv_off: u32, // QKV: element offset of the token's cache slot in k and v
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> w: array<u32>;             // weight chunk [N, K], packed
@group(0) @binding(2) var<storage, read> x: array<vec4<f32>>;       // residual stream, row of K at x_off
@group(0) @binding(3) var<storage, read> g: array<vec4<f32>>;       // RMSNorm weight [K]
#if QKV
@group(0) @binding(4) var<storage, read> table: array<vec2<f32>>;   // RoPE (cos, sin) [max_pos, D/2]
@group(0) @binding(5) var<storage, read_write> q: array<f32>;       // queries [H·D] at y_off
@group(0) @binding(6) var<storage, read_write> kc: array<f32>;      // key cache [slots, H·D]
@group(0) @binding(7) var<storage, read_write> vc: array<f32>;      // value cache [slots, H·D]
#endif
#if GATE_UP
@group(0) @binding(4) var<storage, read_write> y: array<f32>;       // silu(gate) · up [(row0 + N)/2]
//#include activation.wgsl
#endif
#if PLAIN
@group(0) @binding(4) var<storage, read_write> y: array<f32>;       // product [row0 + N]
#endif

//#include quant.wgsl

var<workgroup> partial: array<vec2<f32>, 256>; // per lane: (Σ w·x·g, Σ x²)

// The chunk row that lane group `grp` (0..8) of workgroup `wg` computes, or N when none.
fn row_of(wg: u32, grp: u32) -> u32 {
#if QKV
    // Group pairs (2j, 2j+1) take the two halves of rotation pair 4·wg + j.
    let half = p.D / 2u;
    let pair = wg * 4u + grp / 2u;
    if (pair >= p.N / 2u) {
        return p.N;
    }
    return (pair / half) * p.D + pair % half + (grp % 2u) * half;
#else
    // Interleaved gate|up rows: group pairs (2j, 2j+1) are (gate, up) of one output.
    return min(wg * 8u + grp, p.N);
#endif
}

@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) li: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let lane = li % 32u;
    let n = row_of(wid.x, li / 32u);
    var acc = vec2<f32>(0.0);
    if (n < p.N) {
        let xb = p.x_off / 4u;
        for (var k = lane * 4u; k < p.K; k += 128u) {
            let xv = x[xb + k / 4u];
            acc += vec2<f32>(dot(load_w4(n, k, p.K, p.soff), xv * g[k / 4u]), dot(xv, xv));
        }
    }
    partial[li] = acc;
    workgroupBarrier();
    for (var s = 16u; s > 0u; s >>= 1u) {
        if (lane < s) {
            partial[li] += partial[li + s];
        }
        workgroupBarrier();
    }
#if PLAIN
    if (lane == 0u && n < p.N) {
        y[p.y_off + p.row0 + n] = partial[li].x / sqrt(partial[li].y / f32(p.K) + p.eps);
    }
#else
    // Four epilogue lanes, one per row pair.
    if (li >= 4u) {
        return;
    }
    let r = row_of(wid.x, 2u * li);
    if (r >= p.N) {
        return;
    }
    let a = partial[2u * li * 32u];
    let b = partial[(2u * li + 1u) * 32u];
    let inv = 1.0 / sqrt(a.y / f32(p.K) + p.eps);
    let va = a.x * inv;
    let vb = b.x * inv;
#if QKV
    let half = p.D / 2u;
    let row = p.row0 + r;           // global row of the pair's first half
    let section = row / p.hd;       // 0: q, 1: k, 2: v
    let c = row % p.hd;             // element within the section (head · D + i)
    if (section == 2u) {
        vc[p.kv_off + c] = va;
        vc[p.kv_off + c + half] = vb;
        return;
    }
    let cs = table[p.pos * half + c % p.D];
    let ra = va * cs.x - vb * cs.y;
    let rb = vb * cs.x + va * cs.y;
    if (section == 0u) {
        q[p.y_off + c] = ra;
        q[p.y_off + c + half] = rb;
    } else {
        kc[p.kv_off + c] = ra;
        kc[p.kv_off + c + half] = rb;
    }
#endif
#if GATE_UP
    y[p.y_off + (p.row0 + r) / 2u] = silu(va) * vb;
#endif
#endif
}

// Output stage shared by matvec.wgsl and matmul.wgsl: adds the bias (BIAS), applies exact GELU
// (GELU) or SiLU (SILU), then writes or accumulates (ADD) one element y[m, row0 + n] of the product.
// NORM_COPY (matvec.wgsl, with ADD): also writes the new residual element times the next RMSNorm's
// weight, yg[m, row0 + n] = y · g[row0 + n], so the next fused product needs no norm pass.
// SWIGLU_PAIRS (no BIAS, ADD or activation): the weight's rows are (gate_j, up_j) pairs, and the
// kernel hands over whole column quads n..n+3 (n % 4 == 0) through `store_quad`, which writes
// y[m, j] = silu(gate_j) · up_j for its two pairs (y_stride: the gated width, half the rows).
// ROPE_PAIRS (no BIAS, ADD or activation): the weight is the stacked Q|K|V of kernels::qkv_row_order
// (each head's rotation pairs (i, i + D/2) side by side), so a column quad holds two pairs of one
// head; `store_quad` rotates q and k (rotate-half RoPE, cos/sin from the table, as rope.wgsl) and
// writes q to y ([M, H·D]), k and v into the row's cache slot (f32, or f16 with KV_F16: see
// kv_cache.wgsl). TWO_SEQS: rows from rows0 on belong to a second sequence with its own caches,
// position and slot (a flow step's two guidance rows).

//#include activation.wgsl

#if SWIGLU_PAIRS
fn store_quad(m: u32, n: u32, v: vec4<f32>) {
    let o = p.y_off + m * p.y_stride + (p.row0 + n) / 2u;
    y[o] = silu(v.x) * v.y;
    y[o + 1u] = silu(v.z) * v.w;
}
#endif

#if ROPE_PAIRS
@group(0) @binding(4) var<storage, read> table: array<vec2<f32>>; // RoPE (cos, sin) [max_pos, D/2]
@group(0) @binding(5) var<storage, read_write> kc: array<KvPair>; // sequence 0's key cache [slots, H·D / 2] (kv_cache.wgsl)
@group(0) @binding(6) var<storage, read_write> vc: array<KvPair>; // sequence 0's value cache
#if TWO_SEQS
@group(0) @binding(7) var<storage, read_write> kc1: array<KvPair>; // sequence 1's key cache
@group(0) @binding(8) var<storage, read_write> vc1: array<KvPair>; // sequence 1's value cache
#endif

//#include kv_cache.wgsl

// Cache pair `e` (elements 2e, 2e + 1 of the cache) of sequence `s`: keys (v = false) or values.
fn put_kv(s: u32, v: bool, e: u32, val: vec2<f32>) {
#if TWO_SEQS
    if (s == 1u) {
        if (v) {
            vc1[e] = kv_pair(val);
        } else {
            kc1[e] = kv_pair(val);
        }
        return;
    }
#endif
    if (v) {
        vc[e] = kv_pair(val);
    } else {
        kc[e] = kv_pair(val);
    }
}

// A column quad n..n+3 (n % 4 == 0): two rotation pairs (i, i + 1) of one head of one section.
fn store_quad(m: u32, n: u32, v: vec4<f32>) {
    let hd = p.H * p.D;
    let half = p.D / 2u;
    let col = p.row0 + n;
    let sec = col / hd; // 0: q, 1: k, 2: v
    let c = ((col % hd) / p.D) * p.D + (col % p.D) / 2u; // head · D + i
    var s = 0u;
    var t = m;
    var pos = p.pos0;
    var slot = p.slot0;
#if TWO_SEQS
    if (m >= p.rows0) {
        s = 1u;
        t = m - p.rows0;
        pos = p.pos1;
        slot = p.slot1;
    }
#endif
    let e = ((slot + t) * hd + c) / 2u;
    if (sec == 2u) {
        let r = quad_halves(v);
        put_kv(s, true, e, r.lo);
        put_kv(s, true, e + half / 2u, r.hi);
        return;
    }
    let tb = (pos + t) * half + c % p.D;
    let r = rope_quad(v, table[tb], table[tb + 1u]);
    if (sec == 0u) {
        let o = p.y_off + m * p.y_stride + c;
        y[o] = r.lo.x;
        y[o + 1u] = r.lo.y;
        y[o + half] = r.hi.x;
        y[o + half + 1u] = r.hi.y;
    } else {
        put_kv(s, false, e, r.lo);
        put_kv(s, false, e + half / 2u, r.hi);
    }
}
#endif

fn store_out(m: u32, n: u32, acc: f32) {
    var v = acc;
#if BIAS
    v += bias[p.row0 + n];
#endif
#if GELU
    v = gelu(v);
#endif
#if SILU
    v = silu(v);
#endif
    let o = p.y_off + m * p.y_stride + p.row0 + n;
#if ADD
    y[o] += v;
#else
    y[o] = v;
#endif
#if NORM_COPY
    yg[o] = y[o] * g[p.row0 + n];
#endif
}

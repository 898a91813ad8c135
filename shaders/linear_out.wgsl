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
// writes q to y ([M, H·D]), k and v into the row's cache slot. TWO_SEQS: rows from rows0 on belong
// to a second sequence with its own caches, position and slot (a flow step's two guidance rows).

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
@group(0) @binding(5) var<storage, read_write> kc: array<f32>;    // sequence 0's key cache [slots, H·D]
@group(0) @binding(6) var<storage, read_write> vc: array<f32>;    // sequence 0's value cache [slots, H·D]
#if TWO_SEQS
@group(0) @binding(7) var<storage, read_write> kc1: array<f32>;   // sequence 1's key cache [slots, H·D]
@group(0) @binding(8) var<storage, read_write> vc1: array<f32>;   // sequence 1's value cache [slots, H·D]
#endif

// Cache element `e` of sequence `s`: keys (v = false) or values (v = true).
fn put_kv(s: u32, v: bool, e: u32, val: f32) {
#if TWO_SEQS
    if (s == 1u) {
        if (v) {
            vc1[e] = val;
        } else {
            kc1[e] = val;
        }
        return;
    }
#endif
    if (v) {
        vc[e] = val;
    } else {
        kc[e] = val;
    }
}

// Rotation pair i of a head (section sec: 0 q, 1 k, 2 v) with its stored values (x1, x2).
fn rope_pair(m: u32, s: u32, pos: u32, slot: u32, sec: u32, head: u32, i: u32, x1: f32, x2: f32) {
    let hd = p.H * p.D;
    let half = p.D / 2u;
    let c = head * p.D + i;
    if (sec == 2u) {
        put_kv(s, true, slot * hd + c, x1);
        put_kv(s, true, slot * hd + c + half, x2);
        return;
    }
    let cs = table[pos * half + i];
    let r1 = x1 * cs.x - x2 * cs.y;
    let r2 = x2 * cs.x + x1 * cs.y;
    if (sec == 0u) {
        y[p.y_off + m * p.y_stride + c] = r1;
        y[p.y_off + m * p.y_stride + c + half] = r2;
    } else {
        put_kv(s, false, slot * hd + c, r1);
        put_kv(s, false, slot * hd + c + half, r2);
    }
}

fn store_quad(m: u32, n: u32, v: vec4<f32>) {
    let hd = p.H * p.D;
    let col = p.row0 + n;
    let sec = col / hd;
    let head = (col % hd) / p.D;
    let i = (col % p.D) / 2u; // the quad's first pair
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
    rope_pair(m, s, pos + t, slot + t, sec, head, i, v.x, v.y);
    rope_pair(m, s, pos + t, slot + t, sec, head, i + 1u, v.z, v.w);
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

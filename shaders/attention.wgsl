// Scaled dot-product attention with an online softmax (the T×T score matrix is never stored).
// One workgroup per (query row, head); 64 lanes score 64 keys at a time, then each lane
// accumulates its own output dimensions. Serves causal prefill (query t sees keys
// 0 ..= pos0 + t), decode (T = 1 over the KV cache) and bidirectional encoders (causal = 0).

struct Params {
    T: u32,         // query rows
    H: u32,         // heads
    D: u32,         // head dim (≤ 512)
    pos0: u32,      // causal: position of query row 0 (keys before it come from the cache)
    n_keys: u32,    // bidirectional: number of keys
    causal: u32,    // 1 = causal mask, 0 = attend to all n_keys
    q_off: u32,     // element offset of q[0]
    o_off: u32,     // element offset of out[0]
    q_stride: u32,  // elements per query row (≥ H·D)
    kv_stride: u32, // elements per key/value row (≥ H·D)
    k_off: u32,     // element offset of key row 0
    v_off: u32,     // element offset of value row 0
    scale: f32,     // 1/sqrt(D)
    o_stride: u32,  // elements per output row (≥ H·D)
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> q: array<f32>;           // [T, q_stride]
@group(0) @binding(2) var<storage, read> k: array<f32>;           // [keys, kv_stride]
@group(0) @binding(3) var<storage, read> v: array<f32>;           // [keys, kv_stride]
@group(0) @binding(4) var<storage, read_write> o: array<f32>;     // [T, o_stride]

const NEG: f32 = -1.0e30;
var<workgroup> qs: array<f32, 512>;
var<workgroup> ps: array<f32, 64>;
var<workgroup> red: array<f32, 64>;

fn reduce_max(li: u32, val: f32) -> f32 {
    red[li] = val;
    workgroupBarrier();
    for (var s = 32u; s > 0u; s >>= 1u) {
        if (li < s) {
            red[li] = max(red[li], red[li + s]);
        }
        workgroupBarrier();
    }
    let r = red[0];
    workgroupBarrier();
    return r;
}

fn reduce_sum(li: u32, val: f32) -> f32 {
    red[li] = val;
    workgroupBarrier();
    for (var s = 32u; s > 0u; s >>= 1u) {
        if (li < s) {
            red[li] += red[li + s];
        }
        workgroupBarrier();
    }
    let r = red[0];
    workgroupBarrier();
    return r;
}

@compute @workgroup_size(64)
fn main(@builtin(local_invocation_index) li: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let t = wid.x;
    let h = wid.y;
    let qb = p.q_off + t * p.q_stride + h * p.D;
    for (var d = li; d < p.D; d += 64u) {
        qs[d] = q[qb + d];
    }
    workgroupBarrier();
    var nk = p.n_keys;
    if (p.causal != 0u) {
        nk = p.pos0 + t + 1u;
    }
    var acc: array<f32, 8>;
    for (var i = 0u; i < 8u; i++) {
        acc[i] = 0.0;
    }
    var m_run = NEG;
    var l_run = 0.0;
    for (var j0 = 0u; j0 < nk; j0 += 64u) {
        let j = j0 + li;
        var s = NEG;
        if (j < nk) {
            let kb = p.k_off + j * p.kv_stride + h * p.D;
            var dotv = 0.0;
            for (var d = 0u; d < p.D; d++) {
                dotv += qs[d] * k[kb + d];
            }
            s = dotv * p.scale;
        }
        let m_new = max(m_run, reduce_max(li, s));
        var pj = 0.0;
        if (j < nk) {
            pj = exp(s - m_new);
        }
        ps[li] = pj;
        let tile_sum = reduce_sum(li, pj); // also orders the ps[] writes before the reads below
        let corr = exp(m_run - m_new);
        l_run = l_run * corr + tile_sum;
        let jn = min(64u, nk - j0);
        for (var i = 0u; i < 8u; i++) {
            let d = li + i * 64u;
            if (d < p.D) {
                var a = acc[i] * corr;
                let vb = p.v_off + j0 * p.kv_stride + h * p.D + d;
                for (var jj = 0u; jj < jn; jj++) {
                    a += ps[jj] * v[vb + jj * p.kv_stride];
                }
                acc[i] = a;
            }
        }
        m_run = m_new;
        workgroupBarrier();
    }
    let ob = p.o_off + t * p.o_stride + h * p.D;
    for (var i = 0u; i < 8u; i++) {
        let d = li + i * 64u;
        if (d < p.D) {
            o[ob + d] = acc[i] / l_run;
        }
    }
}

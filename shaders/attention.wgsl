// Scaled dot-product attention with an online softmax (the T×T score matrix is never stored).
// One workgroup per (query row, head) (and key chunk with SPLIT); 64 lanes score 64 keys at a time, then each lane
// accumulates its own output dimensions. Serves causal prefill (query t sees keys
// 0 ..= pos0 + t), decode (T = 1 over the KV cache) and bidirectional encoders (causal = 0).
// Defines:
//   SPLIT: decoding has too few (row, head) pairs to fill a GPU, so the keys are also split into
//          at most a fixed number of chunks of `chunk` keys, one workgroup each, which write their
//          unnormalised partial output with its running max and sum to `part`; keys are loaded
//          16 lanes to a row (coalesced) instead of one lane per row;
//   COMBINE: one workgroup per (row, head) rescales and sums the chunks' partials into `o`.
//   KV_F16: keys and values come from an f16 KV cache (the fast setting; kv_cache.wgsl).

struct Params {
    T: u32,         // query rows
    H: u32,         // heads
    D: u32,         // head dim (≤ 512, multiple of 4)
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
    chunk: u32,     // SPLIT/COMBINE: keys per chunk (multiple of 64)
    chunks: u32,    // SPLIT/COMBINE: chunks per (row, head)
}

@group(0) @binding(0) var<uniform> p: Params;
#if COMBINE
@group(0) @binding(1) var<storage, read> part: array<f32>;        // [T, H, chunks, D + 2] (acc, max, sum)
@group(0) @binding(2) var<storage, read_write> o: array<f32>;     // [T, o_stride]
#else
@group(0) @binding(1) var<storage, read> q: array<f32>;           // [T, q_stride]
@group(0) @binding(2) var<storage, read> k: array<KvQuad>;        // [keys, kv_stride / 4] (k_off, kv_stride, D % 4 == 0; kv_cache.wgsl)
#if KV_F16
@group(0) @binding(3) var<storage, read> v: array<KvPair>;        // [keys, kv_stride / 2] element pairs (v_off even)
#else
@group(0) @binding(3) var<storage, read> v: array<f32>;           // [keys, kv_stride]
#endif
#if SPLIT
@group(0) @binding(4) var<storage, read_write> part: array<f32>;  // [T, H, chunks, D + 2] (acc, max, sum)
#else
@group(0) @binding(4) var<storage, read_write> o: array<f32>;     // [T, o_stride]
#endif
#endif

const NEG: f32 = -1.0e30;
#if COMBINE

@compute @workgroup_size(64)
fn main(@builtin(local_invocation_index) li: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let t = wid.x;
    let h = wid.y;
    let base = (t * p.H + h) * p.chunks;
    let w = p.D + 2u;
    var mx = NEG;
    for (var c = 0u; c < p.chunks; c++) {
        mx = max(mx, part[(base + c) * w + p.D]);
    }
    var l = 0.0;
    for (var c = 0u; c < p.chunks; c++) {
        l += part[(base + c) * w + p.D + 1u] * exp(part[(base + c) * w + p.D] - mx);
    }
    let ob = p.o_off + t * p.o_stride + h * p.D;
    for (var d = li; d < p.D; d += 64u) {
        var s = 0.0;
        for (var c = 0u; c < p.chunks; c++) {
            s += part[(base + c) * w + d] * exp(part[(base + c) * w + p.D] - mx);
        }
        o[ob + d] = s / l;
    }
}
#else
var<workgroup> qs: array<vec4<f32>, 128>; // the query row, D / 4 quads
var<workgroup> ps: array<f32, 64>;
#if SPLIT
var<workgroup> sp: array<f32, 64 * 17>; // [key, 16 lane slices (+1 against bank conflicts)] partial scores
#endif
const RED_LANES: u32 = 64u;
//#include reduce.wgsl
//#include kv_cache.wgsl

// The head dim of a lane's i-th output (i < 8): with f32 values one dim per 64 lanes; with f16
// values neighbouring dims in pairs (i, i + 1 share a cache word), so each word is read and
// unpacked once.
fn lane_dim(li: u32, i: u32) -> u32 {
#if KV_F16
    return 2u * (li + (i / 2u) * 64u) + i % 2u;
#else
    return li + i * 64u;
#endif
}

@compute @workgroup_size(64)
fn main(lane: Lane, @builtin(workgroup_id) wid: vec3<u32>) {
    red_setup(lane);
    let li = lane.li;
    let t = wid.x;
    let h = wid.y;
    let qb = p.q_off + t * p.q_stride + h * p.D;
    for (var d = li; d < p.D / 4u; d += 64u) {
        qs[d] = vec4<f32>(q[qb + 4u * d], q[qb + 4u * d + 1u], q[qb + 4u * d + 2u], q[qb + 4u * d + 3u]);
    }
    workgroupBarrier();
    var nk = p.n_keys;
    if (p.causal != 0u) {
        nk = p.pos0 + t + 1u;
    }
#if SPLIT
    let jbeg = wid.z * p.chunk;
    let jend = min(nk, jbeg + p.chunk);
#else
    let jbeg = 0u;
    let jend = nk;
#endif
    var acc: array<f32, 8>;
    for (var i = 0u; i < 8u; i++) {
        acc[i] = 0.0;
    }
    var m_run = NEG;
    var l_run = 0.0;
    for (var j0 = jbeg; j0 < jend; j0 += 64u) {
        let j = j0 + li;
        var s = NEG;
#if SPLIT
        // Decoding on GPUs: coalesced key loads. 16 lanes read one key row's consecutive vec4s
        // (256 contiguous bytes), 4 keys at a time, so many loads are in flight and none is
        // strided; after one barrier each lane sums its own key's 16 partial products.
        let d4 = p.D / 4u;
        let slice = li % 16u;
        for (var kk = 0u; kk < 16u; kk++) {
            let key = kk * 4u + li / 16u;
            var pd = 0.0;
            if (j0 + key < jend) {
                let kb = (p.k_off + (j0 + key) * p.kv_stride + h * p.D) / 4u;
                for (var d = slice; d < d4; d += 16u) {
                    pd += dot(qs[d], kv_unquad(k[kb + d]));
                }
            }
            sp[key * 17u + slice] = pd;
        }
        workgroupBarrier();
        if (j < jend) {
            var dv = 0.0;
            for (var i = 0u; i < 16u; i++) {
                dv += sp[li * 17u + i];
            }
            s = dv * p.scale;
        }
#else
        if (j < jend) {
            let kb = (p.k_off + j * p.kv_stride + h * p.D) / 4u;
            // vec4 loads and two independent sums, so that several loads are in flight per lane.
            let d4 = p.D / 4u;
            var s0 = vec4<f32>(0.0);
            var s1 = vec4<f32>(0.0);
            var d = 0u;
            for (; d + 2u <= d4; d += 2u) {
                s0 += qs[d] * kv_unquad(k[kb + d]);
                s1 += qs[d + 1u] * kv_unquad(k[kb + d + 1u]);
            }
            if (d < d4) {
                s0 += qs[d] * kv_unquad(k[kb + d]);
            }
            let dv = s0 + s1;
            s = (dv.x + dv.y + dv.z + dv.w) * p.scale;
        }
#endif
        let m_new = max(m_run, wg_max(s));
        var pj = 0.0;
        if (j < jend) {
            pj = exp(s - m_new);
        }
        ps[li] = pj;
        let tile_sum = wg_sum(pj); // also orders the ps[] writes before the reads below
        let corr = exp(m_run - m_new);
        l_run = l_run * corr + tile_sum;
        let jn = min(64u, jend - j0);
        let st = p.kv_stride;
#if KV_F16
        for (var i = 0u; i < 8u; i += 2u) {
            let d = lane_dim(li, i);
            if (d < p.D) {
                var a = vec2<f32>(acc[i], acc[i + 1u]) * corr;
                let vb = (p.v_off + j0 * st + h * p.D + d) / 2u;
                let sw = st / 2u;
                // Four keys per iteration: independent loads (neighbouring lanes read neighbouring words).
                var jj = 0u;
                for (; jj + 4u <= jn; jj += 4u) {
                    let b = vb + jj * sw;
                    a += ps[jj] * kv_unpair(v[b]) + ps[jj + 1u] * kv_unpair(v[b + sw]) + ps[jj + 2u] * kv_unpair(v[b + 2u * sw]) + ps[jj + 3u] * kv_unpair(v[b + 3u * sw]);
                }
                for (; jj < jn; jj++) {
                    a += ps[jj] * kv_unpair(v[vb + jj * sw]);
                }
                acc[i] = a.x;
                acc[i + 1u] = a.y;
            }
        }
#else
        for (var i = 0u; i < 8u; i++) {
            let d = lane_dim(li, i);
            if (d < p.D) {
                var a = acc[i] * corr;
                let vb = p.v_off + j0 * st + h * p.D + d;
                // Four keys per iteration: independent loads (neighbouring lanes read neighbouring d).
                var jj = 0u;
                for (; jj + 4u <= jn; jj += 4u) {
                    let b = vb + jj * st;
                    a += ps[jj] * v[b] + ps[jj + 1u] * v[b + st] + ps[jj + 2u] * v[b + 2u * st] + ps[jj + 3u] * v[b + 3u * st];
                }
                for (; jj < jn; jj++) {
                    a += ps[jj] * v[vb + jj * st];
                }
                acc[i] = a;
            }
        }
#endif
        m_run = m_new;
        workgroupBarrier();
    }
#if SPLIT
    let pb = ((t * p.H + h) * p.chunks + wid.z) * (p.D + 2u);
    for (var i = 0u; i < 8u; i++) {
        let d = lane_dim(li, i);
        if (d < p.D) {
            part[pb + d] = acc[i];
        }
    }
    if (li == 0u) {
        part[pb + p.D] = m_run;
        part[pb + p.D + 1u] = l_run;
    }
#else
    let ob = p.o_off + t * p.o_stride + h * p.D;
    for (var i = 0u; i < 8u; i++) {
        let d = lane_dim(li, i);
        if (d < p.D) {
            o[ob + d] = acc[i] / l_run;
        }
    }
#endif
}
#endif

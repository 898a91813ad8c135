// Query-tiled attention for many query rows: causal prefill (a chat prompt, the flow step's prompt
// pass), bidirectional encoders (SigLIP) and the VAE mid-block. One workgroup takes BQ query rows
// of one head and walks the keys BK at a time with an online softmax, so every key and value row
// is read once per BQ queries instead of once per query (attention.wgsl's one-row kernel, which
// stays for decoding). Nothing of size T×T is stored.
//
// Lanes: TPQ neighbouring lanes serve one query row. Scoring, each lane takes BK / TPQ of the
// tile's keys (keys sub, sub + TPQ, …) and sums its dot products slice by slice over the head dim;
// in the P·V pass it owns one vec4 of output dims in each DC-wide slice of the head.
//
// Sizes, value defines from the launcher (kernels::attention):
//   BQ:  query rows per workgroup;
//   HD:  head dim (multiple of 4; slices past it are zero-padded);
//   TPQ: lanes per query row (DC = 4·TPQ dims per slice, WG = BQ·TPQ lanes);
//   BK:  keys per tile (multiple of TPQ).
// KV_F16: keys and values come from an f16 KV cache (the fast setting; kv_cache.wgsl).
// The sums run in another order than attention.wgsl's (slice by slice, rescaled per BK keys), so
// the two agree to rounding, not bit for bit.

struct Params {
    T: u32,         // query rows
    H: u32,         // heads
    D: u32,         // head dim (= HD)
    pos0: u32,      // causal: position of query row 0 (keys before it come from the cache)
    n_keys: u32,    // bidirectional: number of keys
    causal: u32,    // 1 = causal mask (query t sees keys 0 ..= pos0 + t), 0 = all n_keys
    q_off: u32,     // element offset of q[0]
    o_off: u32,     // element offset of out[0]
    q_stride: u32,  // elements per query row (≥ H·D)
    kv_stride: u32, // elements per key/value row (≥ H·D, multiple of 4)
    k_off: u32,     // element offset of key row 0 (multiple of 4)
    v_off: u32,     // element offset of value row 0 (multiple of 4)
    scale: f32,     // 1/sqrt(D)
    o_stride: u32,  // elements per output row (≥ H·D)
    chunk: u32,     // unused here (attention.wgsl's key split)
    chunks: u32,    // unused here
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> q: array<f32>;          // [T, q_stride] from q_off
@group(0) @binding(2) var<storage, read> k: array<KvQuad>;       // [keys, kv_stride / 4] from k_off / 4 (kv_cache.wgsl)
@group(0) @binding(3) var<storage, read> v: array<KvQuad>;       // [keys, kv_stride / 4] from v_off / 4

//#include kv_cache.wgsl
@group(0) @binding(4) var<storage, read_write> o: array<f32>;    // [T, o_stride] from o_off

const WG: u32 = BQ * TPQ;                // lanes per workgroup
const DC4: u32 = TPQ;                    // vec4s per slice row (DC = 4·TPQ dims)
const DC: u32 = 4u * DC4;
const SLICES: u32 = (HD + DC - 1u) / DC; // slices per head
const KPL: u32 = BK / TPQ;               // keys scored per lane and tile
const ROW: u32 = DC4 + 1u;               // staged row stride in vec4s (one spare against bank conflicts)
const NEG: f32 = -1.0e30;

var<workgroup> qs: array<vec4<f32>, BQ * ROW>; // one slice of the tile's query rows
var<workgroup> kv: array<vec4<f32>, BK * ROW>; // one slice of the tile's keys, then of its values
var<workgroup> ps: array<f32, BQ * BK>;        // the tile's probabilities, row by row
var<workgroup> red_max: array<f32, WG>;        // each lane's max over its keys
var<workgroup> red_sum: array<f32, WG>;        // each lane's sum of its probabilities

// Stages slice c of the tile's keys (or values) into kv: rows past nk_tile and dims past HD as zeros.
fn stage_kv(values: bool, li: u32, j0: u32, c: u32, nk_tile: u32, hd: u32) {
    let off = select(p.k_off, p.v_off, values);
    for (var e = li; e < BK * DC4; e += WG) {
        let jj = e / DC4;
        let d = c * DC + 4u * (e % DC4);
        var val = vec4<f32>(0.0);
        if (j0 + jj < nk_tile && d < HD) {
            let i = (off + (j0 + jj) * p.kv_stride + hd + d) / 4u;
            if (values) {
                val = kv_unquad(v[i]);
            } else {
                val = kv_unquad(k[i]);
            }
        }
        kv[jj * ROW + e % DC4] = val;
    }
}

@compute @workgroup_size(WG)
fn main(@builtin(local_invocation_index) li: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let t0 = wid.x * BQ;
    let h = wid.y;
    let r = li / TPQ;   // this lane's query row within the tile
    let sub = li % TPQ; // and its place among the row's lanes
    let t = t0 + r;
    let row_ok = t < p.T;
    // Keys this row sees, and keys any row of the tile sees (the loop bound, the same for all lanes).
    let t_last = min(p.T, t0 + BQ) - 1u;
    var nk = p.n_keys;
    var nk_tile = p.n_keys;
    if (p.causal != 0u) {
        nk = p.pos0 + t + 1u;
        nk_tile = p.pos0 + t_last + 1u;
    }
    let hd = h * HD;

    var acc: array<vec4<f32>, SLICES>;
    for (var c = 0u; c < SLICES; c++) {
        acc[c] = vec4<f32>(0.0);
    }
    var m_run = NEG;
    var l_run = 0.0;
    for (var j0 = 0u; j0 < nk_tile; j0 += BK) {
        // Scores of this lane's keys j0 + sub + TPQ·u, summed slice by slice.
        var s: array<f32, KPL>;
        for (var u = 0u; u < KPL; u++) {
            s[u] = 0.0;
        }
        for (var c = 0u; c < SLICES; c++) {
            for (var e = li; e < BQ * DC4; e += WG) {
                let rr = e / DC4;
                let d = c * DC + 4u * (e % DC4);
                var val = vec4<f32>(0.0);
                if (t0 + rr < p.T && d < HD) {
                    let b = p.q_off + (t0 + rr) * p.q_stride + hd + d;
                    val = vec4<f32>(q[b], q[b + 1u], q[b + 2u], q[b + 3u]);
                }
                qs[rr * ROW + e % DC4] = val;
            }
            stage_kv(false, li, j0, c, nk_tile, hd);
            workgroupBarrier();
            for (var d4 = 0u; d4 < DC4; d4++) {
                let qv = qs[r * ROW + d4];
                for (var u = 0u; u < KPL; u++) {
                    s[u] += dot(qv, kv[(sub + TPQ * u) * ROW + d4]);
                }
            }
            workgroupBarrier();
        }

        // Online softmax over the tile: the row's max from its TPQ lanes, then probabilities.
        var mx = NEG;
        for (var u = 0u; u < KPL; u++) {
            let ok = row_ok && j0 + sub + TPQ * u < nk;
            s[u] = select(NEG, s[u] * p.scale, ok);
            mx = max(mx, s[u]);
        }
        red_max[li] = mx;
        workgroupBarrier();
        var m_tile = NEG;
        for (var i = 0u; i < TPQ; i++) {
            m_tile = max(m_tile, red_max[r * TPQ + i]);
        }
        let m_new = max(m_run, m_tile);
        let corr = exp(m_run - m_new);
        var lsum = 0.0;
        for (var u = 0u; u < KPL; u++) {
            let j = sub + TPQ * u;
            var pj = 0.0;
            if (row_ok && j0 + j < nk) {
                pj = exp(s[u] - m_new);
            }
            ps[r * BK + j] = pj;
            lsum += pj;
        }
        red_sum[li] = lsum;
        workgroupBarrier();
        var l_tile = 0.0;
        for (var i = 0u; i < TPQ; i++) {
            l_tile += red_sum[r * TPQ + i];
        }
        l_run = l_run * corr + l_tile;
        m_run = m_new;

        // Output += P · V, slice by slice; a lane owns dims c·DC + 4·sub .. + 3 of its row.
        for (var c = 0u; c < SLICES; c++) {
            stage_kv(true, li, j0, c, nk_tile, hd);
            workgroupBarrier();
            var a = acc[c] * corr;
            for (var jj = 0u; jj < BK; jj++) {
                a += ps[r * BK + jj] * kv[jj * ROW + sub];
            }
            acc[c] = a;
            workgroupBarrier();
        }
    }

    if (row_ok) {
        let ob = p.o_off + t * p.o_stride + hd;
        for (var c = 0u; c < SLICES; c++) {
            let d = c * DC + 4u * sub;
            if (d < HD) {
                let val = acc[c] / l_run;
                o[ob + d] = val.x;
                o[ob + d + 1u] = val.y;
                o[ob + d + 2u] = val.z;
                o[ob + d + 3u] = val.w;
            }
        }
    }
}

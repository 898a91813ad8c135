// On-GPU top-k over a logits vector, so that only k (value, index) pairs are read back per
// decoded token instead of the whole vocabulary. k = 1 is greedy argmax. Ties keep the lower
// index (like torch.argmax); NaN counts as −inf.
//   PASS1: workgroup g takes logits [g·2048, (g+1)·2048) and writes its top k, best first, to
//          cand[g·k ..].
//   PASS2: one workgroup merges all candidates into out[0 .. k), best first.

struct Params {
    n: u32,      // PASS1: logits; PASS2: candidates
    k: u32,      // how many to keep (≤ 64)
    x_off: u32,  // PASS1: element offset of logits[0]
}

@group(0) @binding(0) var<uniform> p: Params;
#if PASS1
@group(0) @binding(1) var<storage, read> x: array<f32>;                 // [n] logits
@group(0) @binding(2) var<storage, read_write> cand: array<vec2<u32>>;  // [groups · k] (f32 bits, index)
#endif
#if PASS2
@group(0) @binding(1) var<storage, read_write> cand: array<vec2<u32>>;  // [n] (f32 bits, index)
@group(0) @binding(2) var<storage, read_write> out: array<vec2<u32>>;   // [k] (f32 bits, index), best first
#endif

const NEG: f32 = -3.0e38;
const CHUNK: u32 = 2048u;
var<workgroup> vals: array<f32, 2048>;
var<workgroup> rv: array<f32, 256>;
var<workgroup> ri: array<u32, 256>;
var<workgroup> rs: array<u32, 256>;

fn better(v: f32, i: u32, bv: f32, bi: u32) -> bool {
    return v > bv || (v == bv && i < bi);
}

// Tree reduction of (value, index, slot) over the workgroup; result in rv[0], ri[0], rs[0].
fn reduce_best(li: u32) {
    workgroupBarrier();
    for (var s = 128u; s > 0u; s >>= 1u) {
        if (li < s && better(rv[li + s], ri[li + s], rv[li], ri[li])) {
            rv[li] = rv[li + s];
            ri[li] = ri[li + s];
            rs[li] = rs[li + s];
        }
        workgroupBarrier();
    }
}

fn clean(v: f32) -> f32 {
    // NaN by its bits: `v != v` may be folded away by compilers that assume no NaNs.
    if ((bitcast<u32>(v) & 0x7fffffffu) > 0x7f800000u) {
        return NEG;
    }
    return max(v, NEG);
}

@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) li: u32, @builtin(workgroup_id) wid: vec3<u32>) {
#if PASS1
    let base = wid.x * CHUNK;
    for (var i = li; i < CHUNK; i += 256u) {
        var v = NEG;
        if (base + i < p.n) {
            v = clean(x[p.x_off + base + i]);
        }
        vals[i] = v;
    }
    workgroupBarrier();
    for (var r = 0u; r < p.k; r++) {
        var bv = NEG;
        var bi = 0xffffffffu;
        var bs = 0u;
        for (var i = li; i < CHUNK; i += 256u) {
            if (base + i < p.n && better(vals[i], base + i, bv, bi)) {
                bv = vals[i];
                bi = base + i;
                bs = i;
            }
        }
        rv[li] = bv;
        ri[li] = bi;
        rs[li] = bs;
        reduce_best(li);
        if (li == 0u) {
            cand[wid.x * p.k + r] = vec2<u32>(bitcast<u32>(rv[0]), ri[0]);
            if (ri[0] != 0xffffffffu) {
                vals[rs[0]] = -3.4e38; // below NEG: never chosen again
            }
        }
        workgroupBarrier();
    }
#endif
#if PASS2
    for (var r = 0u; r < p.k; r++) {
        var bv = NEG;
        var bi = 0xffffffffu;
        var bs = 0u;
        for (var i = li; i < p.n; i += 256u) {
            let c = cand[i];
            let v = bitcast<f32>(c.x);
            if (c.y != 0xffffffffu && better(v, c.y, bv, bi)) {
                bv = v;
                bi = c.y;
                bs = i;
            }
        }
        rv[li] = bv;
        ri[li] = bi;
        rs[li] = bs;
        reduce_best(li);
        if (li == 0u) {
            out[r] = vec2<u32>(bitcast<u32>(rv[0]), ri[0]);
            if (ri[0] != 0xffffffffu) {
                cand[rs[0]] = vec2<u32>(0u, 0xffffffffu);
            }
        }
        // The candidate just taken is struck out in storage memory, which another lane reads
        // next round: workgroupBarrier alone orders only workgroup memory.
        storageBarrier();
        workgroupBarrier();
    }
#endif
}

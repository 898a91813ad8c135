// Rotary position embedding, transformers' rotate-half convention (pairs (i, i + D/2)), on stacked
// Q|K|V rows [T, 3·H·D] from one matrix product, each head's elements stored as rotation pairs side
// by side (kernels::qkv_row_order): q and k are rotated, and q goes to `q`, k and v into their
// KV-cache slots in the usual order. cos/sin come from a table computed on the CPU in f64 (θ from
// the config), so the result does not depend on the GPU's transcendental precision at large
// positions.

struct Params {
    T: u32,          // rows (tokens)
    H: u32,          // heads per row
    D: u32,          // head dim (multiple of 4)
    pos0: u32,       // position of row 0
    x_off: u32,      // element offset of x[0, 0]
    row_stride: u32, // elements between consecutive rows of x (3·H·D)
    q_off: u32,      // element offset of row 0 in q
    slot0: u32,      // cache slot of row 0
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;            // [T, row_stride]: q | k | v
@group(0) @binding(2) var<storage, read> table: array<vec2<f32>>;  // [max_pos, D/2] (cos, sin)
@group(0) @binding(3) var<storage, read_write> q: array<f32>;      // [T, H·D] at q_off
@group(0) @binding(4) var<storage, read_write> kc: array<KvPair>;  // key cache [slots, H·D / 2] (kv_cache.wgsl)
@group(0) @binding(5) var<storage, read_write> vc: array<KvPair>;  // value cache [slots, H·D / 2]

//#include kv_cache.wgsl

// One invocation per two neighbouring rotation pairs (i, i + 1) of a head (D % 4 == 0), so that
// each half of them is one cache pair.
@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let half = p.D / 2u;
    let quads = half / 2u;
    let heads = 3u * p.H; // q, k and v heads of a row
    let idx = gid.x + gid.y * nwg.x * 256u;
    if (idx >= p.T * heads * quads) {
        return;
    }
    let i = 2u * (idx % quads);
    let h = (idx / quads) % heads;
    let t = idx / (quads * heads);
    let b = p.x_off + t * p.row_stride + h * p.D + 2u * i;
    let v = vec4<f32>(x[b], x[b + 1u], x[b + 2u], x[b + 3u]);
    let hd = p.H * p.D;
    let c = (h % p.H) * p.D + i;
    let slot = ((p.slot0 + t) * hd + c) / 2u;
    if (h >= 2u * p.H) {
        let r = quad_halves(v);
        vc[slot] = kv_pair(r.lo);
        vc[slot + half / 2u] = kv_pair(r.hi);
        return;
    }
    let tb = (p.pos0 + t) * half + i;
    let r = rope_quad(v, table[tb], table[tb + 1u]);
    if (h < p.H) {
        let qb = p.q_off + t * hd + c;
        q[qb] = r.lo.x;
        q[qb + 1u] = r.lo.y;
        q[qb + half] = r.hi.x;
        q[qb + half + 1u] = r.hi.y;
    } else {
        kc[slot] = kv_pair(r.lo);
        kc[slot + half / 2u] = kv_pair(r.hi);
    }
}

// Embedding gather from a (possibly quantized) table split in row chunks: for every token whose
// id falls in this chunk's rows [row0, row0 + rows), y[t, :] = dequant(table[id − row0, :]).
// Defines: one of F32/F16/Q8/Q4; NORM_COPY: also write the rows times the first RMSNorm's weight,
// yg = y · g, and the sums of squares of each 4 elements, ssq, which a decoded token's first fused
// product reads (matvec_fused.wgsl, PRESCALED).

struct Params {
    T: u32,      // tokens
    K: u32,      // embedding width (K % 4 == 0)
    row0: u32,   // first vocabulary row held by this chunk
    rows: u32,   // rows in this chunk
    soff: u32,   // word offset of the group scales inside w
    y_off: u32,  // element offset of y[0, 0]
    ids_off: u32,// offset into ids
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> w: array<u32>;            // table chunk [rows, K], packed
@group(0) @binding(2) var<storage, read> ids: array<u32>;          // [T] token ids
@group(0) @binding(3) var<storage, read_write> y: array<vec4<f32>>; // [T, K]
#if NORM_COPY
@group(0) @binding(4) var<storage, read> g: array<vec4<f32>>;      // RMSNorm weight [K]
@group(0) @binding(5) var<storage, read_write> yg: array<vec4<f32>>; // y · g [T, K], at y_off
@group(0) @binding(6) var<storage, read_write> ssq: array<f32>;      // Σ y² per 4 elements [T, K / 4], at y_off / 4
#endif

//#include quant.wgsl

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let k = gid.x * 4u;
    let t = gid.y;
    if (k >= p.K || t >= p.T) {
        return;
    }
    let id = ids[p.ids_off + t];
    if (id < p.row0 || id >= p.row0 + p.rows) {
        return;
    }
    let v = load_w4(id - p.row0, k, p.K, p.soff);
    let o = (p.y_off + t * p.K + k) / 4u;
    y[o] = v;
#if NORM_COPY
    yg[o] = v * g[k / 4u];
    ssq[o] = dot(v, v);
#endif
}

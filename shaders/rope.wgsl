// Rotary position embedding, transformers' rotate-half convention (pairs (i, i + D/2)), applied
// in place. cos/sin come from a table computed on the CPU in f64 (θ from the config), so the
// result does not depend on the GPU's transcendental precision at large positions.

struct Params {
    T: u32,          // rows (tokens)
    H: u32,          // heads per row
    D: u32,          // head dim (even)
    pos0: u32,       // position of row 0
    x_off: u32,      // element offset of x[0, 0, 0]
    row_stride: u32, // elements between consecutive rows (≥ H·D)
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> x: array<f32>;      // [T, row_stride], heads at h·D
@group(0) @binding(2) var<storage, read> table: array<vec2<f32>>;  // [max_pos, D/2] (cos, sin)

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let half = p.D / 2u;
    let idx = gid.x + gid.y * nwg.x * 256u;
    if (idx >= p.T * p.H * half) {
        return;
    }
    let i = idx % half;
    let h = (idx / half) % p.H;
    let t = idx / (half * p.H);
    let cs = table[(p.pos0 + t) * half + i];
    let b = p.x_off + t * p.row_stride + h * p.D;
    let x1 = x[b + i];
    let x2 = x[b + i + half];
    x[b + i] = x1 * cs.x - x2 * cs.y;
    x[b + i + half] = x2 * cs.x + x1 * cs.y;
}

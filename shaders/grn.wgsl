// ConvNeXt-V2 global response norm over channels-last maps, per image b:
//   g[b, c] = sqrt(Σ_rows y[b, row, c]²)            (STATS: L2 over the whole H×W grid)
//   m[b]    = mean_c g[b, c]                          (MEAN)
//   y      ← y · (1 + γ[c] · g[b, c] / (m[b] + 1e-6)) + β[c]   (APPLY, in place)
// The sums are in f32; STATS gives each channel to one lane so that reads are coalesced.

struct Params {
    B: u32,     // images
    rows: u32,  // H·W per image
    C: u32,     // channels
}

@group(0) @binding(0) var<uniform> p: Params;
#if STATS
@group(0) @binding(1) var<storage, read> y: array<f32>;           // [B, rows, C]
@group(0) @binding(2) var<storage, read_write> g: array<f32>;     // [B, C + 1] (last slot: m[b])

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let c = gid.x;
    let b = gid.y;
    if (c >= p.C) {
        return;
    }
    var ss = 0.0;
    for (var r = 0u; r < p.rows; r++) {
        let v = y[(b * p.rows + r) * p.C + c];
        ss += v * v;
    }
    g[b * (p.C + 1u) + c] = sqrt(ss);
}
#endif

#if MEAN
@group(0) @binding(1) var<storage, read_write> g: array<f32>;     // [B, C + 1]
const RED_LANES: u32 = 256u;
//#include reduce.wgsl

@compute @workgroup_size(256)
fn main(lane: Lane, @builtin(workgroup_id) wid: vec3<u32>) {
    red_setup(lane);
    let base = wid.x * (p.C + 1u);
    var s = 0.0;
    for (var c = lane.li; c < p.C; c += 256u) {
        s += g[base + c];
    }
    let total = wg_sum(s);
    if (lane.li == 0u) {
        g[base + p.C] = total / f32(p.C);
    }
}
#endif

#if APPLY
@group(0) @binding(1) var<storage, read> g: array<f32>;           // [B, C + 1]
@group(0) @binding(2) var<storage, read> gamma: array<f32>;       // [C]
@group(0) @binding(3) var<storage, read> beta: array<f32>;        // [C]
@group(0) @binding(4) var<storage, read_write> y: array<f32>;     // [B, rows, C]

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 256u;
    if (i >= p.B * p.rows * p.C) {
        return;
    }
    let c = i % p.C;
    let b = i / (p.rows * p.C);
    let base = b * (p.C + 1u);
    let n = g[base + c] / (g[base + p.C] + 1e-6);
    y[i] = y[i] * (1.0 + gamma[c] * n) + beta[c];
}
#endif

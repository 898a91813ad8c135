// GroupNorm statistics and application over channels-last maps [P, C] (P = H·W pixels, G groups
// of C/G consecutive channels), f32 throughout:
//   STATS: per (pixel chunk, group) the count, mean and M2 (two passes over the chunk, so no
//          catastrophic cancellation); the map may be bound as a window (band of pixels).
//   FINAL: merges the chunk partials of each group (Chan's formula) → (mean, 1/sqrt(var + eps)).
//   APPLY: y = (x − mean)·rstd·γ + β, for the attention's input norm; SILU: then y = silu(y), the
//          VAE's GroupNorm + SiLU before each convolution, written once so that the convolution
//          loads plain values; INPLACE: y is x (one binding). The map may be bound as a window.

struct Params {
    P: u32,      // pixels in this window
    C: u32,      // channels
    cpg: u32,    // channels per group
    chunk: u32,  // pixels per chunk
    part0: u32,  // STATS: index of this window's first chunk in the partials
    parts: u32,  // FINAL: chunks per group
    eps: f32,
}

@group(0) @binding(0) var<uniform> p: Params;

#if STATS
@group(0) @binding(1) var<storage, read> x: array<f32>;            // window [P, C]
@group(0) @binding(2) var<storage, read_write> part: array<vec4<f32>>; // [chunks, G] (count, mean, M2, 0)
const RED_LANES: u32 = 256u;
//#include reduce.wgsl

@compute @workgroup_size(256)
fn main(lane: Lane, @builtin(workgroup_id) wid: vec3<u32>) {
    red_setup(lane);
    let li = lane.li;
    let g = wid.y;
    let px0 = wid.x * p.chunk;
    let px1 = min(px0 + p.chunk, p.P);
    let n = (px1 - px0) * p.cpg;
    var s = 0.0;
    for (var i = li; i < n; i += 256u) {
        s += x[(px0 + i / p.cpg) * p.C + g * p.cpg + i % p.cpg];
    }
    let mean = wg_sum(s) / f32(n);
    var m2 = 0.0;
    for (var i = li; i < n; i += 256u) {
        let d = x[(px0 + i / p.cpg) * p.C + g * p.cpg + i % p.cpg] - mean;
        m2 += d * d;
    }
    let total = wg_sum(m2);
    if (li == 0u) {
        part[(p.part0 + wid.x) * (p.C / p.cpg) + g] = vec4<f32>(f32(n), mean, total, 0.0);
    }
}
#endif

#if FINAL
@group(0) @binding(1) var<storage, read> part: array<vec4<f32>>;   // [chunks, G]
@group(0) @binding(2) var<storage, read_write> gn: array<vec2<f32>>; // [G] (mean, rstd)

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let groups = p.C / p.cpg;
    let g = gid.x;
    if (g >= groups) {
        return;
    }
    var n = 0.0;
    var mean = 0.0;
    var m2 = 0.0;
    for (var c = 0u; c < p.parts; c++) {
        let q = part[c * groups + g];
        let tot = n + q.x;
        let d = q.y - mean;
        mean += d * q.x / tot;
        m2 += q.z + d * d * n * q.x / tot;
        n = tot;
    }
    gn[g] = vec2<f32>(mean, 1.0 / sqrt(m2 / n + p.eps));
}
#endif

#if APPLY
#if INPLACE
@group(0) @binding(1) var<storage, read_write> y: array<vec4<f32>>; // window [P, C], normalised in place
#else
@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;      // window [P, C]
#endif
@group(0) @binding(2) var<storage, read> gn: array<vec2<f32>>;     // [G] (mean, 1/std)
@group(0) @binding(3) var<storage, read> gn_w: array<vec4<f32>>;   // [C] γ
@group(0) @binding(4) var<storage, read> gn_b: array<vec4<f32>>;   // [C] β
#if INPLACE
#else
@group(0) @binding(5) var<storage, read_write> y: array<vec4<f32>>; // window [P, C]
#endif

//#include activation.wgsl

// Invocation (x, y) normalises channels 4x .. 4x+4 (C % 4 == 0) of pixels y, y + Y, y + 2Y, …
// (Y = invocations along y): its channels' statistics, γ and β are read once, and no index is
// divided per element.
@compute @workgroup_size(16, 16)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let quads = p.C / 4u;
    let q = gid.x;
    if (q >= quads) {
        return;
    }
    let c = 4u * q;
    let mean = vec4<f32>(gn[c / p.cpg].x, gn[(c + 1u) / p.cpg].x, gn[(c + 2u) / p.cpg].x, gn[(c + 3u) / p.cpg].x);
    let rstd = vec4<f32>(gn[c / p.cpg].y, gn[(c + 1u) / p.cpg].y, gn[(c + 2u) / p.cpg].y, gn[(c + 3u) / p.cpg].y);
    let gamma = gn_w[q];
    let beta = gn_b[q];
    for (var px = gid.y; px < p.P; px += nwg.y * 16u) {
        let i = px * quads + q;
#if INPLACE
        let v = y[i];
#else
        let v = x[i];
#endif
        let t = (v - mean) * rstd * gamma + beta;
#if SILU
        y[i] = vec4<f32>(silu(t.x), silu(t.y), silu(t.z), silu(t.w));
#else
        y[i] = t;
#endif
    }
}
#endif

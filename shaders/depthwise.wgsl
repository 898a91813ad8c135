// Depthwise 2-D convolution over channels-last maps (the ConvNeXt 7×7 of the generation
// encoder/decoder): y[b, r, c, ch] = bias[ch] + Σ_{i,j} w[ch, i, j] · x[b, r + i − pad, c + j − pad, ch],
// zero padding, stride 1. One invocation per output element; neighbouring invocations take
// neighbouring channels, so reads are coalesced.

struct Params {
    B: u32,    // images
    H: u32,
    W: u32,
    C: u32,    // channels
    K: u32,    // kernel side (7)
    pad: u32,  // (3)
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;           // [B, H·W, C]
@group(0) @binding(2) var<storage, read> w: array<f32>;           // [C, K·K]
@group(0) @binding(3) var<storage, read> bias: array<f32>;        // [C]
@group(0) @binding(4) var<storage, read_write> y: array<f32>;     // [B, H·W, C]

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 256u;
    if (i >= p.B * p.H * p.W * p.C) {
        return;
    }
    let ch = i % p.C;
    let pix = i / p.C;
    let b = pix / (p.H * p.W);
    let r = (pix / p.W) % p.H;
    let c = pix % p.W;
    var acc = bias[ch];
    for (var ki = 0u; ki < p.K; ki++) {
        let rr = i32(r + ki) - i32(p.pad);
        if (rr < 0 || rr >= i32(p.H)) {
            continue;
        }
        for (var kj = 0u; kj < p.K; kj++) {
            let cc = i32(c + kj) - i32(p.pad);
            if (cc < 0 || cc >= i32(p.W)) {
                continue;
            }
            acc += w[ch * p.K * p.K + ki * p.K + kj] * x[((b * p.H + u32(rr)) * p.W + u32(cc)) * p.C + ch];
        }
    }
    y[i] = acc;
}

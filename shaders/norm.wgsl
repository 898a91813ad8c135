// Row norms over the last dimension, one workgroup per row, statistics in f32.
//   default:   RMSNorm as transformers' LlamaRMSNorm: y = (x · 1/sqrt(mean(x²) + eps)) · weight
//   LAYERNORM: LayerNorm (biased variance, two passes for accuracy): y = (x − μ)/sqrt(σ² + eps) · weight + bias

struct Params {
    D: u32,        // row length
    x_off: u32,    // element offset of x[0, 0]
    y_off: u32,    // element offset of y[0, 0]
    eps: f32,
    y_stride: u32, // elements between output rows (≥ D; lets a norm write into part of a wider row)
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;          // [rows, D]
@group(0) @binding(2) var<storage, read> weight: array<f32>;     // [D]
@group(0) @binding(3) var<storage, read_write> y: array<f32>;    // [rows, y_stride]
#if LAYERNORM
@group(0) @binding(4) var<storage, read> bias: array<f32>;       // [D]
#endif

const RED_LANES: u32 = 256u;
//#include reduce.wgsl

@compute @workgroup_size(256)
fn main(lane: Lane, @builtin(workgroup_id) wid: vec3<u32>) {
    red_setup(lane);
    let li = lane.li;
    let xb = p.x_off + wid.x * p.D;
    let yb = p.y_off + wid.x * p.y_stride;
#if LAYERNORM
    var s = 0.0;
    for (var d = li; d < p.D; d += 256u) {
        s += x[xb + d];
    }
    let mean = wg_sum(s) / f32(p.D);
    var ss = 0.0;
    for (var d = li; d < p.D; d += 256u) {
        let c = x[xb + d] - mean;
        ss += c * c;
    }
    let inv = 1.0 / sqrt(wg_sum(ss) / f32(p.D) + p.eps);
    for (var d = li; d < p.D; d += 256u) {
        y[yb + d] = (x[xb + d] - mean) * inv * weight[d] + bias[d];
    }
#else
    var ss = 0.0;
    for (var d = li; d < p.D; d += 256u) {
        let v = x[xb + d];
        ss += v * v;
    }
    let inv = 1.0 / sqrt(wg_sum(ss) / f32(p.D) + p.eps);
    for (var d = li; d < p.D; d += 256u) {
        y[yb + d] = (x[xb + d] * inv) * weight[d];
    }
#endif
}

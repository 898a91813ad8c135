// RMSNorm over the last dimension, as transformers' LlamaRMSNorm: the mean of squares in f32,
// y = (x · 1/sqrt(mean(x²) + eps)) · weight. One workgroup per row.

struct Params {
    D: u32,       // row length
    x_off: u32,   // element offset of x[0, 0]
    y_off: u32,   // element offset of y[0, 0]
    eps: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;          // [rows, D]
@group(0) @binding(2) var<storage, read> weight: array<f32>;     // [D]
@group(0) @binding(3) var<storage, read_write> y: array<f32>;    // [rows, D]

var<workgroup> red: array<f32, 256>;

@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) li: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let xb = p.x_off + wid.x * p.D;
    let yb = p.y_off + wid.x * p.D;
    var ss = 0.0;
    for (var d = li; d < p.D; d += 256u) {
        let v = x[xb + d];
        ss += v * v;
    }
    red[li] = ss;
    workgroupBarrier();
    for (var s = 128u; s > 0u; s >>= 1u) {
        if (li < s) {
            red[li] += red[li + s];
        }
        workgroupBarrier();
    }
    let inv = 1.0 / sqrt(red[0] / f32(p.D) + p.eps);
    for (var d = li; d < p.D; d += 256u) {
        y[yb + d] = (x[xb + d] * inv) * weight[d];
    }
}

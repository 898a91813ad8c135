// Element-wise ops on f32 activations. Defines select the op:
//   SWIGLU: y[i] = silu(a[i]) · b[i]          (Llama MLP gate)
//   ADD:    y[i] = y[i] + a[i]                (residual add)
//   COPY:   y[i] = a[i]

struct Params {
    n: u32,      // elements
    a_off: u32,
    b_off: u32,
    y_off: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;           // [n]
#if SWIGLU
@group(0) @binding(2) var<storage, read> b: array<f32>;           // [n]
@group(0) @binding(3) var<storage, read_write> y: array<f32>;     // [n]
#else
@group(0) @binding(2) var<storage, read_write> y: array<f32>;     // [n]
#endif

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 256u;
    if (i >= p.n) {
        return;
    }
#if SWIGLU
    let g = a[p.a_off + i];
    y[p.y_off + i] = g / (1.0 + exp(-g)) * b[p.b_off + i];
#endif
#if ADD
    y[p.y_off + i] += a[p.a_off + i];
#endif
#if COPY
    y[p.y_off + i] = a[p.a_off + i];
#endif
}

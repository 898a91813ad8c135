// Element-wise ops on f32 activations. Defines select the op:
//   SWIGLU_PAIRS: y[i] = silu(a[2i]) · a[2i + 1]           (gate|up rows interleaved, one product)
//   ADD:       y[i] = y[i] + a[i]                         (residual add)
//   COPY:      y[i] = a[i]
//   SILU:      y[i] = silu(a[i])
//   FILM:      y[r, c] = y[r, c] · (1 + a[c]) + a[C + c]   (FiLM; a = [scale | shift], C = cols)
//   COPY_ROWS: y[r · y_stride + c] = a[r · a_stride + c]  (a block of rows into part of wider rows)

struct Params {
    n: u32,        // elements
    a_off: u32,
    b_off: u32,    // (unused: the parameter block keeps one layout for every operation)
    y_off: u32,
    cols: u32,     // FILM, COPY_ROWS: row length
    a_stride: u32, // COPY_ROWS
    y_stride: u32, // COPY_ROWS
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;           // [n] (FILM: [2·cols]; COPY_ROWS: [rows, a_stride])
@group(0) @binding(2) var<storage, read_write> y: array<f32>;     // [n] (FILM: [rows, cols]; COPY_ROWS: [rows, y_stride]; SWIGLU_PAIRS: a is [2n])

//#include activation.wgsl

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 256u;
    if (i >= p.n) {
        return;
    }
#if SWIGLU_PAIRS
    y[p.y_off + i] = silu(a[p.a_off + 2u * i]) * a[p.a_off + 2u * i + 1u];
#endif
#if ADD
    y[p.y_off + i] += a[p.a_off + i];
#endif
#if COPY
    y[p.y_off + i] = a[p.a_off + i];
#endif
#if SILU
    y[p.y_off + i] = silu(a[p.a_off + i]);
#endif
#if FILM
    let c = i % p.cols;
    let o = p.y_off + i;
    y[o] = y[o] * (1.0 + a[p.a_off + c]) + a[p.a_off + p.cols + c];
#endif
#if COPY_ROWS
    let r = i / p.cols;
    let c = i % p.cols;
    y[p.y_off + r * p.y_stride + c] = a[p.a_off + r * p.a_stride + c];
#endif
}

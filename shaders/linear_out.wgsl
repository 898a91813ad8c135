// Output stage shared by matvec.wgsl and matmul.wgsl: adds the bias (BIAS), applies exact GELU
// (GELU) or SiLU (SILU), then writes or accumulates (ADD) one element y[m, row0 + n] of the product.
// NORM_COPY (matvec.wgsl, with ADD): also writes the new residual element times the next RMSNorm's
// weight, yg[m, row0 + n] = y · g[row0 + n], so the next fused product needs no norm pass.
// SWIGLU_PAIRS (no BIAS, ADD or activation): the weight's rows are (gate_j, up_j) pairs, and the
// kernel hands over whole column quads n..n+3 (n % 4 == 0) through `store_quad`, which writes
// y[m, j] = silu(gate_j) · up_j for its two pairs (y_stride: the gated width, half the rows).

//#include activation.wgsl

#if SWIGLU_PAIRS
fn store_quad(m: u32, n: u32, v: vec4<f32>) {
    let o = p.y_off + m * p.y_stride + (p.row0 + n) / 2u;
    y[o] = silu(v.x) * v.y;
    y[o + 1u] = silu(v.z) * v.w;
}
#endif

fn store_out(m: u32, n: u32, acc: f32) {
    var v = acc;
#if BIAS
    v += bias[p.row0 + n];
#endif
#if GELU
    v = gelu(v);
#endif
#if SILU
    v = silu(v);
#endif
    let o = p.y_off + m * p.y_stride + p.row0 + n;
#if ADD
    y[o] += v;
#else
    y[o] = v;
#endif
#if NORM_COPY
    yg[o] = y[o] * g[p.row0 + n];
#endif
}

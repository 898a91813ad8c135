// 2-D convolution (stride 1, zero padding) as an implicit matrix product over channels-last maps,
// for the VAE decoder: y[pixel, n] (+)= Σ_k x̃[pixel, k] · W[n, k] (+ bias), k = (dy·ks + dx)·Cin + ci,
// with x̃ gathered on the fly (no im2col buffer). Same tilings as matmul.wgsl.
// Works on a band of output rows so that no binding exceeds the device limit: x and y are
// bound as windows starting at input row `in_row0` and output row `out_row0`.
// Defines: one of F32/F16/Q8/Q4 (weights [Cout, ks·ks·Cin]); BIAS (always); ADD (residual accumulate);
//   UPSAMPLE: the conv reads a nearest-neighbour ×2 upsampling of x (x is H/2 × W/2);
//   GPU_TILE: the 64×64 tiling of gemm_tile64.wgsl (real GPUs) instead of gemm_tile.wgsl's 128×128.

struct Params {
    M: u32,        // output pixels in this band (rows × W_out)
    N: u32,        // output channels of this weight chunk
    K: u32,        // ks·ks·Cin
    Cin: u32,      // input channels (multiple of 4)
    W_out: u32,    // output width (= conv input width)
    H_conv: u32,   // conv input height (after UPSAMPLE)
    out_row0: u32, // first output row of the band
    in_row0: u32,  // first row of x present in the x window (in x's own rows)
    W_in: u32,     // width of x (W_out, or W_out/2 with UPSAMPLE)
    ks: u32,       // kernel side (1 or 3)
    pad: u32,      // ks / 2
    y_off: u32,    // element offset of y[0, 0] in the y window
    y_stride: u32, // elements per output pixel (Cout)
    row0: u32,     // first output channel of this weight chunk
    soff: u32,     // word offset of the group scales inside w
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> w: array<u32>;            // weight chunk [N, K], packed
@group(0) @binding(2) var<storage, read> x: array<vec4<f32>>;      // input window [rows, W_in, Cin]
@group(0) @binding(3) var<storage, read_write> y: array<f32>;      // output window [M, y_stride]
@group(0) @binding(4) var<storage, read> bias: array<f32>;         // [Cout] (BIAS is always defined)

//#include quant.wgsl
//#include linear_out.wgsl

fn load_x4(m: u32, k: u32) -> vec4<f32> {
    let tap = k / p.Cin;
    let ci = k % p.Cin;
    let oy = p.out_row0 + m / p.W_out;
    let ox = m % p.W_out;
    let iy = i32(oy + tap / p.ks) - i32(p.pad);
    let ix = i32(ox + tap % p.ks) - i32(p.pad);
    if (iy < 0 || iy >= i32(p.H_conv) || ix < 0 || ix >= i32(p.W_out)) {
        return vec4<f32>(0.0);
    }
#if UPSAMPLE
    let sy = u32(iy) / 2u;
    let sx = u32(ix) / 2u;
#else
    let sy = u32(iy);
    let sx = u32(ix);
#endif
    return x[(((sy - p.in_row0) * p.W_in + sx) * p.Cin + ci) / 4u];
}

#if GPU_TILE
//#include gemm_tile64.wgsl
#else
//#include gemm_tile.wgsl
#endif

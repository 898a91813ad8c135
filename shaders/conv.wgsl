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

// The gather at (tap, channel) = (k / Cin, k % Cin) for output pixel m: one vec4 of x̃ (zero
// outside the map). x̃ is x, or x nearest-upsampled ×2 with UPSAMPLE.
fn gather(oy: i32, ox: i32, dy: u32, dx: u32, ci: u32) -> vec4<f32> {
    let iy = oy + i32(dy);
    let ix = ox + i32(dx);
    if (iy < 0 || iy >= i32(p.H_conv) || ix < 0 || ix >= i32(p.W_out)) {
        return vec4<f32>(0.0);
    }
#if UPSAMPLE
    let sy = u32(iy) >> 1u;
    let sx = u32(ix) >> 1u;
#else
    let sy = u32(iy);
    let sx = u32(ix);
#endif
    return x[(((sy - p.in_row0) * p.W_in + sx) * p.Cin + ci) >> 2u];
}

fn load_x4(m: u32, k: u32) -> vec4<f32> {
    let tap = k / p.Cin;
    return gather(i32(p.out_row0 + m / p.W_out) - i32(p.pad), i32(m % p.W_out) - i32(p.pad), tap / p.ks, tap % p.ks, k % p.Cin);
}

// The cursor interface of gemm_tile.wgsl: a loader's pixel and (tap, channel) position, divided
// out once and then advanced by adding, since integer division is slow on CPU rasterisers (no
// vector instruction for it) and the reduction loop would otherwise divide on every load.
struct XCursor {
    oy: i32, // output row − pad
    ox: i32, // output column − pad
    dy: u32, // tap row
    dx: u32, // tap column
    ci: u32, // input channel
    k: u32,
}

fn x_start(m: u32, k: u32) -> XCursor {
    let tap = k / p.Cin;
    return XCursor(i32(p.out_row0 + m / p.W_out) - i32(p.pad), i32(m % p.W_out) - i32(p.pad), tap / p.ks, tap % p.ks, k % p.Cin, k);
}

fn x_advance(c: ptr<function, XCursor>, dk: u32) {
    (*c).k += dk;
    (*c).ci += dk;
    while ((*c).ci >= p.Cin) {
        (*c).ci -= p.Cin;
        (*c).dx += 1u;
        if ((*c).dx == p.ks) {
            (*c).dx = 0u;
            (*c).dy += 1u;
        }
    }
}

fn x_load(c: XCursor) -> vec4<f32> {
    return gather(c.oy, c.ox, c.dy, c.dx, c.ci);
}

#if GPU_TILE
//#include gemm_tile64.wgsl
#else
//#include gemm_tile.wgsl
#endif

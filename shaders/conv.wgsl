// 2-D convolution (stride 1, zero padding) over channels-last maps, for the VAE decoder:
// y[pixel, n] (+)= Σ_k x̃[pixel, k] · W[n, k] + bias[n], k = (dy·ks + dx)·Cin + ci, with x̃ gathered
// on the fly (no im2col buffer). Its input is plain values: GroupNorm + SiLU is a pass of its own
// (groupnorm.wgsl) that writes the normalised map once.
// Works on a band of output rows so that no binding exceeds the device limit: x and y are
// bound as windows starting at input row `in_row0` and output row `out_row0`.
// Defines: one of F32/F16/Q8/Q4 (weights [Cout, ks·ks·Cin]); BIAS (always); ADD (residual accumulate);
//   UPSAMPLE: the conv reads a nearest-neighbour ×2 upsampling of x (x is H/2 × W/2);
//   and the kernel shape, one of
//   SG8: for CPU rasterisers whose subgroups are 8 SIMD lanes (lavapipe): taps outer, channels
//        inner, each x value loaded by one lane and broadcast to the others (see below);
//   GPU_TILE: the 64×64 matrix tiling of gemm_tile64.wgsl (real GPUs);
//   LANE_ROWS (with LANE_WG, LANE_M): barrier-free lanes for CPU rasterisers with other
//   subgroup sizes (SwiftShader; a 128×128 tile with barriers took 4.5× as long on lavapipe).

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

// Where the tap pixel (iy, ix) of x̃ (x, or x nearest-upsampled ×2 with UPSAMPLE) starts in x:
// the vec4 index of its channel 0, or −1 outside the map (zero padding).
fn tap_src(iy: i32, ix: i32) -> i32 {
    if (iy < 0 || iy >= i32(p.H_conv) || ix < 0 || ix >= i32(p.W_out)) {
        return -1;
    }
#if UPSAMPLE
    let sy = u32(iy) >> 1u;
    let sx = u32(ix) >> 1u;
#else
    let sy = u32(iy);
    let sx = u32(ix);
#endif
    return i32((((sy - p.in_row0) * p.W_in + sx) * p.Cin) >> 2u);
}

#if LANE_ROWS
//#include matvec_lanes.wgsl

// CPU rasterisers without 8-lane subgroups (SwiftShader): each lane owns four output channels ×
// LANE_M pixels and walks the taps (outer) and input channels (inner) alone, its pixels' sources
// worked out once per tap as in SG8; no workgroup memory, no barrier (see matvec_lanes.wgsl for
// why). Grid: (ceil(N / (4·LANE_WG)), ceil(M / LANE_M)).
@compute @workgroup_size(LANE_WG)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let n = gid.x * 4u;
    if (n >= p.N) {
        return;
    }
    let m0 = gid.y * LANE_M;
    let r = lane_rows(n, p.N);
    var oy: array<i32, LANE_M>;
    var ox: array<i32, LANE_M>;
    for (var j = 0u; j < LANE_M; j++) {
        let m = m0 + j;
        oy[j] = i32(p.out_row0 + m / p.W_out) - i32(p.pad);
        ox[j] = i32(m % p.W_out) - i32(p.pad);
    }
    var acc: array<vec4<f32>, LANE_M>;
    var src: array<i32, LANE_M>;
    for (var dy = 0u; dy < p.ks; dy++) {
        for (var dx = 0u; dx < p.ks; dx++) {
            // Pixels past the band's end read nothing and are not stored.
            for (var j = 0u; j < LANE_M; j++) {
                src[j] = select(-1, tap_src(oy[j] + i32(dy), ox[j] + i32(dx)), m0 + j < p.M);
            }
            let k0 = (dy * p.ks + dx) * p.Cin;
            for (var ci = 0u; ci < p.Cin; ci += 4u) {
                let wm = lane_w4(r, k0 + ci, p.K, p.soff);
                for (var j = 0u; j < LANE_M; j++) {
                    if (src[j] >= 0) {
                        acc[j] += x[u32(src[j]) + (ci >> 2u)] * wm;
                    }
                }
            }
        }
    }
    lane_store(m0, n, p.M, p.N, acc);
}
#else
#if SG8
// The SG8 register tile (gemm_sg8.wgsl). Taps are the outer loop: a pixel's source position and
// its bounds check are worked out once per tap, and the reduction over channels does no division
// and no bounds check.
//#include gemm_sg8.wgsl

// x̃ at (source `src`, channel quad cq), zero where the tap falls outside the map.
fn x_at(src: i32, cq: u32) -> vec4<f32> {
    if (src < 0) {
        return vec4<f32>(0.0);
    }
    return x[u32(src) + cq];
}

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(subgroup_id) sg: u32, @builtin(subgroup_invocation_id) lane: u32) {
    let m0 = (wid.y * SG_PER_WG + sg) * SG_PIXELS;
    let n0 = wid.x * SG_COLS + lane;
    // The lane's two pixels (output row and column, less the padding); past the band's end
    // they read nothing and are not stored.
    let ma = m0 + lane;
    let mb = ma + SG_LANES;
    let ya = i32(p.out_row0 + ma / p.W_out) - i32(p.pad);
    let xa = i32(ma % p.W_out) - i32(p.pad);
    let yb = i32(p.out_row0 + mb / p.W_out) - i32(p.pad);
    let xb = i32(mb % p.W_out) - i32(p.pad);
    var acc: Sg8Acc;
    for (var dy = 0u; dy < p.ks; dy++) {
        for (var dx = 0u; dx < p.ks; dx++) {
            let sa = select(-1, tap_src(ya + i32(dy), xa + i32(dx)), ma < p.M);
            let sb = select(-1, tap_src(yb + i32(dy), xb + i32(dx)), mb < p.M);
            let k0 = (dy * p.ks + dx) * p.Cin;
            for (var ci = 0u; ci < p.Cin; ci += 4u) {
                sg8_step(&acc, x_at(sa, ci >> 2u), x_at(sb, ci >> 2u), n0, k0 + ci);
            }
        }
    }
    sg8_store(acc, m0, n0);
}
#else
// The cursor interface of gemm_tile64.wgsl: a loader's pixel and (tap,
// channel) position, divided out once and then advanced by adding, so that the reduction loop
// does no integer division (slow on GPUs, and without a vector instruction on CPU rasterisers).
struct XCursor {
    oy: i32, // output row − pad
    ox: i32, // output column − pad
    dy: u32, // tap row
    dx: u32, // tap column
    ci: u32, // input channel
}

fn x_start(m: u32, k: u32) -> XCursor {
    let tap = k / p.Cin;
    return XCursor(i32(p.out_row0 + m / p.W_out) - i32(p.pad), i32(m % p.W_out) - i32(p.pad), tap / p.ks, tap % p.ks, k % p.Cin);
}

fn x_advance(c: ptr<function, XCursor>, dk: u32) {
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

// Four values of x̃ for the cursor's pixel from its (tap, channel).
fn x_load(c: XCursor) -> vec4<f32> {
    let src = tap_src(c.oy + i32(c.dy), c.ox + i32(c.dx));
    if (src < 0) {
        return vec4<f32>(0.0);
    }
    return x[u32(src) + (c.ci >> 2u)];
}

//#include gemm_tile64.wgsl
#endif
#endif

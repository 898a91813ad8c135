// The tiled matrix-product body of conv.wgsl on CPU rasterisers without 8-lane subgroups
// (included, not dispatched): each 16×16 workgroup stages 16-deep slices of x and of the
// (dequantized) weights in workgroup memory (16 KiB: deep slices halve the barriers per product,
// which a CPU rasteriser pays dearly for) and accumulates TM×8 outputs per invocation in f32, for
// a 128×128 output tile. The includer defines a cursor over x (`XCursor`, `x_start(m, k)`,
// `x_advance(&c, dk)`, `x_load(c)`: four activations of row m from column k; a plain read or a
// convolution's gather, whose index arithmetic is then done once, not per load), and includes
// quant.wgsl (`load_w4`) and linear_out.wgsl (`store_out`) first.

const BK: u32 = 16u;
const TILE: u32 = 128u;
const TM: u32 = 8u; // output rows per invocation
const TILE_M: u32 = 16u * TM;
var<workgroup> As: array<f32, 2048>; // [BK][TILE_M] slice of x, k-major
var<workgroup> Bs: array<f32, 2048>; // [BK][128] slice of W, k-major

// Loads x[m, k0 + kq ..+4] (through the cursor, then advanced a slice) and W[n0 + lr, k0 + kq ..+4]
// into column quad kq of the slice.
fn stage(c: ptr<function, XCursor>, k0: u32, kq: u32, lr: u32, a_row: bool, n0: u32) {
    let k = k0 + kq;
    var a = vec4<f32>(0.0);
    if (a_row && k < p.K) {
        a = x_load(*c);
    }
    x_advance(c, BK);
    var b = vec4<f32>(0.0);
    if (n0 + lr < p.N && k < p.K) {
        b = load_w4(n0 + lr, k, p.K, p.soff);
    }
    for (var j = 0u; j < 4u; j++) {
        if (lr < TILE_M) {
            As[(kq + j) * TILE_M + lr] = a[j];
        }
        Bs[(kq + j) * TILE + lr] = b[j];
    }
}

@compute @workgroup_size(16, 16)
fn main(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let tx = lid.x;
    let ty = lid.y;
    let tid = ty * 16u + tx;
    let m0 = wid.y * TILE_M;
    let n0 = wid.x * TILE;
    // Loader coordinates: 128 rows × 2 quads of k, twice per slice (only the first TILE_M rows of x).
    let lr = tid / 2u;
    var acc: array<vec4<f32>, 16>; // row i: acc[2i] = cols 0..4, acc[2i+1] = cols 4..8
    for (var i = 0u; i < 16u; i++) {
        acc[i] = vec4<f32>(0.0);
    }
    let a_row = lr < TILE_M && m0 + lr < p.M;
    // Each loader stages two quads of k per slice (columns kq and kq + 8 of it).
    let kq = (tid % 2u) * 4u;
    var c0 = x_start(m0 + lr, kq);
    var c1 = x_start(m0 + lr, kq + 8u);
    for (var k0 = 0u; k0 < p.K; k0 += BK) {
        stage(&c0, k0, kq, lr, a_row, n0);
        stage(&c1, k0, kq + 8u, lr, a_row, n0);
        workgroupBarrier();
        for (var kk = 0u; kk < BK; kk++) {
            let ai = kk * TILE_M + ty * TM;
            let bi = kk * TILE + tx * 8u;
            let b0 = vec4<f32>(Bs[bi], Bs[bi + 1u], Bs[bi + 2u], Bs[bi + 3u]);
            let b1 = vec4<f32>(Bs[bi + 4u], Bs[bi + 5u], Bs[bi + 6u], Bs[bi + 7u]);
            for (var i = 0u; i < TM; i++) {
                let av = As[ai + i];
                acc[2u * i] += av * b0;
                acc[2u * i + 1u] += av * b1;
            }
        }
        workgroupBarrier();
    }
    for (var i = 0u; i < TM; i++) {
        let m = m0 + ty * TM + i;
        if (m >= p.M) {
            break;
        }
        for (var j = 0u; j < 8u; j++) {
            let n = n0 + tx * 8u + j;
            if (n < p.N) {
                store_out(m, n, acc[2u * i + j / 4u][j % 4u]);
            }
        }
    }
}

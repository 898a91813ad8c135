// The tiled matrix-product body for real GPUs (included by matmul.wgsl and conv.wgsl with
// GPU_TILE; CPU rasterisers take gemm_sg8.wgsl or the barrier-free lane kernels).
//
// Why this shape: a 128×128 tile gives a 2048-wide projection over ~1000 rows only ~130
// workgroups, one per SM of a large GPU, and one resident workgroup cannot hide the latency of
// its own loads. Here each 16×16 workgroup owns a 64×64 output tile (16×64 with SMALL_M),
// 4×4 outputs per invocation (1×4 with SMALL_M), so the grid has 4× more workgroups and each
// one needs little shared memory and few registers. The next 16-deep slices of x and W are
// fetched into registers while the current ones are multiplied out of workgroup memory.
// Workgroup reads are vec4 and conflict-free: B by column quad, A broadcast per row quad.
// The includer defines a cursor over x (`XCursor`, `x_start`, `x_advance`,
// `x_load`) and includes quant.wgsl (`load_w4`) and linear_out.wgsl (`store_out`) first.
// F16_MATH (the opt-in `fast` setting, devices with shader-f16): the workgroup tiles hold f16
// (half the workgroup memory and its traffic) and each 16-deep slice is multiplied and summed in
// f16 (packed f16 arithmetic runs at twice the f32 rate on many GPUs) before it is added to the
// f32 accumulator, so rounding stays bounded by one slice whatever K is.

const BK: u32 = 16u;
const TN: u32 = 64u; // output columns per workgroup
#if SMALL_M
const TM: u32 = 1u; // output rows per invocation
#else
const TM: u32 = 4u;
#endif
const TILE_M: u32 = 16u * TM;
// Bs[k][c] = W[n0 + 4c .. n0 + 4c + 4, k0 + k] (16 column quads per k).
var<workgroup> Bs: array<vec4<Elem>, 256>;
#if SMALL_M
var<workgroup> As: array<Elem, 256>;        // As[k·16 + r] = x[m0 + r, k0 + k]
#else
var<workgroup> As: array<vec4<Elem>, 256>;  // As[k·16 + q] = x[m0 + 4q .. 4q + 4, k0 + k]
#endif

//#include tile_fetch.wgsl

// sums[i] += the staged slice's products for the invocation's row (quad) ty, column quad tx.
fn multiply_slice(sums: ptr<function, array<vec4<Elem>, TM>>, tx: u32, ty: u32) {
    for (var kk = 0u; kk < BK; kk++) {
        let bv = Bs[kk * 16u + tx];
#if SMALL_M
        (*sums)[0] += As[kk * 16u + ty] * bv;
#else
        let av = As[kk * 16u + ty];
        (*sums)[0] += av.x * bv;
        (*sums)[1] += av.y * bv;
        (*sums)[2] += av.z * bv;
        (*sums)[3] += av.w * bv;
#endif
    }
}

@compute @workgroup_size(16, 16)
fn main(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let tx = lid.x; // column quad
    let ty = lid.y; // row (quad)
    let tid = ty * 16u + tx;
    let m0 = wid.y * TILE_M;
    let n0 = wid.x * TN;
    // Loaders (tile_fetch.wgsl): invocations 0..63 fetch W, 64..127 x; each a block of row quad
    // rq (one row of x with SMALL_M, stored as scalars) × four values of k from kq.
    let w_loader = tid < 64u;
    let x_loader = tid >= 64u && tid < 128u;
    let rq = (tid % 64u) / 4u;
    let kq = (tid % 4u) * 4u;
#if SMALL_M
    let one = true;
    let x_row0 = m0 + rq;
#else
    let one = false;
    let x_row0 = m0 + 4u * rq;
#endif
    let w_row0 = n0 + 4u * rq;
    var cur = start_x(x_row0, kq, one);
    var acc: array<vec4<f32>, TM>;
    for (var i = 0u; i < TM; i++) {
        acc[i] = vec4<f32>(0.0);
    }
    var blk = fetch_block(w_loader, x_loader, w_row0, &cur, x_row0, kq, 0u, one);
    let at = kq * 16u + rq; // the block's vec4 (or value) for its first k; the next k 16 on
    for (var k0 = 0u; k0 < p.K; k0 += BK) {
        if (w_loader) {
            Bs[at] = vec4<Elem>(column(blk, 0u));
            Bs[at + 16u] = vec4<Elem>(column(blk, 1u));
            Bs[at + 32u] = vec4<Elem>(column(blk, 2u));
            Bs[at + 48u] = vec4<Elem>(column(blk, 3u));
        } else if (x_loader) {
#if SMALL_M
            As[at] = Elem(blk.r0.x);
            As[at + 16u] = Elem(blk.r0.y);
            As[at + 32u] = Elem(blk.r0.z);
            As[at + 48u] = Elem(blk.r0.w);
#else
            As[at] = vec4<Elem>(column(blk, 0u));
            As[at + 16u] = vec4<Elem>(column(blk, 1u));
            As[at + 32u] = vec4<Elem>(column(blk, 2u));
            As[at + 48u] = vec4<Elem>(column(blk, 3u));
#endif
        }
        workgroupBarrier();
        // Fetch the next slices while this one is multiplied.
        blk = fetch_block(w_loader, x_loader, w_row0, &cur, x_row0, k0 + BK + kq, BK, one);
#if F16_MATH
        var part: array<vec4<f16>, TM>; // this slice's sums (zero-initialised)
        multiply_slice(&part, tx, ty);
        for (var i = 0u; i < TM; i++) {
            acc[i] += vec4<f32>(part[i]);
        }
#else
        multiply_slice(&acc, tx, ty);
#endif
        workgroupBarrier();
    }
    for (var i = 0u; i < TM; i++) {
        let m = m0 + ty * TM + i;
        if (m >= p.M) {
            break;
        }
#if SWIGLU_PAIRS || ROPE_PAIRS
        if (n0 + tx * 4u < p.N) {
            store_quad(m, n0 + tx * 4u, acc[i]);
        }
#else
        for (var j = 0u; j < 4u; j++) {
            let n = n0 + tx * 4u + j;
            if (n < p.N) {
                store_out(m, n, acc[i][j]);
            }
        }
#endif
    }
}

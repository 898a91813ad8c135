// The large register tile for real GPUs (included by matmul.wgsl with GPU_TILE and TILE128, for
// products of more than 64 rows where kernels::Gpu::tile128 chooses it; gemm_tile64.wgsl
// otherwise).
//
// Why this shape: with 4×4 outputs per invocation (gemm_tile64.wgsl) every multiply-add needs a
// quarter of a workgroup-memory load, and that traffic, not arithmetic, bounds the tile. Here each
// 16×16 workgroup owns a 128×128 output tile and each invocation 8×8 outputs: rows 4·ty .. +3 and
// 64 + 4·ty .. +3, columns 4·tx .. +3 and 64 + 4·tx .. +3. Per 8-deep slice of K an invocation
// reads 4 vec4 from workgroup memory (conflict-free: A broadcast per row quad, B by column quad)
// for 64 multiply-adds. The slices go through two workgroup buffers: while one is multiplied the
// next is fetched from memory into registers, then stored into the other, so a slice costs one
// barrier (the buffer written was last read before the previous barrier). 16 KiB of workgroup
// memory, WebGPU's default limit (8 KiB with F16_MATH).
// F16_MATH (the opt-in `fast` setting, devices with shader-f16): as in gemm_tile64.wgsl, the
// workgroup buffers hold f16 and each 8-deep slice is multiplied and summed in f16 before it joins
// the f32 accumulator, so rounding stays bounded by one slice whatever K is.
// The includer defines a cursor over x (`XCursor`, `x_start`, `x_advance`, `x_load`) and includes
// quant.wgsl (`load_w4`) and linear_out.wgsl (`store_out`, `store_quad`) first.

const BK: u32 = 8u;      // K per slice
const TILE: u32 = 128u;  // output rows and columns per workgroup
const QUADS: u32 = 32u;  // row (column) quads of a slice row
// As[(b·BK + k)·32 + q] = x[m0 + 4q .. 4q + 4, k0 + k] in buffer b; Bs likewise with W[n0 + 4q ..].
var<workgroup> As: array<vec4<Elem>, 512>;
var<workgroup> Bs: array<vec4<Elem>, 512>;

//#include tile_fetch.wgsl

// Stores a loader's block (tile_fetch.wgsl) into buffer `buf`: rows of W (else of x), row quad
// rq, four values of k from kq.
fn stage(buf: u32, w_rows: bool, rq: u32, kq: u32, blk: Block) {
    let i = (buf * BK + kq) * QUADS + rq; // the vec4 of the block's first k; the next k 32 on
    if (w_rows) {
        Bs[i] = vec4<Elem>(column(blk, 0u));
        Bs[i + QUADS] = vec4<Elem>(column(blk, 1u));
        Bs[i + 2u * QUADS] = vec4<Elem>(column(blk, 2u));
        Bs[i + 3u * QUADS] = vec4<Elem>(column(blk, 3u));
    } else {
        As[i] = vec4<Elem>(column(blk, 0u));
        As[i + QUADS] = vec4<Elem>(column(blk, 1u));
        As[i + 2u * QUADS] = vec4<Elem>(column(blk, 2u));
        As[i + 3u * QUADS] = vec4<Elem>(column(blk, 3u));
    }
}

// sums[2i + h] += the products of slice buffer `buf` for the invocation's row i of 8 and column
// half h (see above).
fn multiply_slice(sums: ptr<function, array<vec4<Elem>, 16>>, buf: u32, tx: u32, ty: u32) {
    for (var kk = 0u; kk < BK; kk++) {
        let r = (buf * BK + kk) * QUADS;
        let a0 = As[r + ty];
        let a1 = As[r + 16u + ty];
        let b0 = Bs[r + tx];
        let b1 = Bs[r + 16u + tx];
        (*sums)[0] += a0.x * b0;
        (*sums)[1] += a0.x * b1;
        (*sums)[2] += a0.y * b0;
        (*sums)[3] += a0.y * b1;
        (*sums)[4] += a0.z * b0;
        (*sums)[5] += a0.z * b1;
        (*sums)[6] += a0.w * b0;
        (*sums)[7] += a0.w * b1;
        (*sums)[8] += a1.x * b0;
        (*sums)[9] += a1.x * b1;
        (*sums)[10] += a1.y * b0;
        (*sums)[11] += a1.y * b1;
        (*sums)[12] += a1.z * b0;
        (*sums)[13] += a1.z * b1;
        (*sums)[14] += a1.w * b0;
        (*sums)[15] += a1.w * b1;
    }
}

@compute @workgroup_size(16, 16)
fn main(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let tx = lid.x; // column quads tx and 16 + tx
    let ty = lid.y; // row quads ty and 16 + ty
    let tid = ty * 16u + tx;
    let m0 = wid.y * TILE;
    let n0 = wid.x * TILE;
    // Loaders (tile_fetch.wgsl): invocations 0..63 fetch W, 64..127 x; each a block of row quad
    // rq × four values of k from kq.
    let w_loader = tid < 64u;
    let x_loader = tid >= 64u && tid < 128u;
    let rq = (tid % 64u) / 2u;
    let kq = (tid % 2u) * 4u;
    let x_row0 = m0 + 4u * rq;
    let w_row0 = n0 + 4u * rq;
    var cur = start_x(x_row0, kq, false);
    // acc[2i + h]: output row i of the invocation's 8 (see above), column half h.
    var acc: array<vec4<f32>, 16>;
    for (var i = 0u; i < 16u; i++) {
        acc[i] = vec4<f32>(0.0);
    }
    var blk = fetch_block(w_loader, x_loader, w_row0, &cur, x_row0, kq, 0u, false);
    if (tid < 128u) {
        stage(0u, w_loader, rq, kq, blk);
    }
    workgroupBarrier();
    var buf = 0u;
    for (var k0 = 0u; k0 < p.K; k0 += BK) {
        // Fetch the next slice while this one is multiplied.
        blk = fetch_block(w_loader, x_loader, w_row0, &cur, x_row0, k0 + BK + kq, BK, false);
#if F16_MATH
        var part: array<vec4<f16>, 16>; // this slice's sums (zero-initialised)
        multiply_slice(&part, buf, tx, ty);
        for (var i = 0u; i < 16u; i++) {
            acc[i] += vec4<f32>(part[i]);
        }
#else
        multiply_slice(&acc, buf, tx, ty);
#endif
        buf = 1u - buf;
        if (k0 + BK < p.K && tid < 128u) {
            stage(buf, w_loader, rq, kq, blk);
        }
        workgroupBarrier();
    }
    for (var i = 0u; i < 8u; i++) {
        let m = m0 + (i / 4u) * 64u + ty * 4u + i % 4u;
        if (m >= p.M) {
            continue;
        }
        for (var h = 0u; h < 2u; h++) {
            let n = n0 + h * 64u + tx * 4u;
            let v = acc[2u * i + h];
#if SWIGLU_PAIRS || ROPE_PAIRS
            if (n < p.N) {
                store_quad(m, n, v);
            }
#else
            for (var j = 0u; j < 4u; j++) {
                if (n + j < p.N) {
                    store_out(m, n + j, v[j]);
                }
            }
#endif
        }
    }
}

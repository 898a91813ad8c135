// The SG8 register tile, shared by conv.wgsl and matmul.wgsl: for CPU rasterisers whose subgroups
// are 8 SIMD lanes (lavapipe). The host uses it only where the adapter's subgroups are exactly
// SG_LANES wide.
//
// Why this shape there: lavapipe runs 8 invocations as the lanes of one SIMD register, and every
// load whose address differs per lane (storage or workgroup memory alike) becomes a loop over the
// lanes, about one cycle per lane and value, while a multiply-add costs one cycle for all 8. A
// shared-memory tile therefore spends most of its time loading. Here each subgroup owns a tile of
// SG_PIXELS output rows × SG_COLS output columns held in registers: per 4 reduction elements a lane
// loads one vec4 of x for each of its 2 rows and its 4 weight columns, and each x vec4 reaches the
// other 7 lanes by subgroupBroadcast (a register shuffle), so every loaded value feeds 16 or 32
// multiply-adds.
//
// The including kernel declares `p` (with N, K, M, soff), `w` (quant.wgsl's load_w4) and
// store_out (linear_out.wgsl's interface), and runs @workgroup_size(64) = SG_PER_WG subgroups.

const SG_LANES: u32 = 8u;
const SG_PIXELS: u32 = 2u * SG_LANES; // output rows per subgroup: lane l loads rows l and l + 8
const SG_COLS: u32 = 4u * SG_LANES;   // output columns per subgroup: lane l owns l + 8j, j < 4
const SG_PER_WG: u32 = 8u;            // subgroups per workgroup: 64 invocations, 8 full subgroups

// The subgroup tile's accumulators as one lane sees them: a_r for row m0 + r, b_r for row
// m0 + 8 + r; components are the lane's 4 columns. Named fields, not an array, so that every
// access has a constant place (registers, not memory, on CPU rasterisers).
struct Sg8Acc {
    a0: vec4<f32>, a1: vec4<f32>, a2: vec4<f32>, a3: vec4<f32>,
    a4: vec4<f32>, a5: vec4<f32>, a6: vec4<f32>, a7: vec4<f32>,
    b0: vec4<f32>, b1: vec4<f32>, b2: vec4<f32>, b3: vec4<f32>,
    b4: vec4<f32>, b5: vec4<f32>, b6: vec4<f32>, b7: vec4<f32>,
}

// W[n, k .. k+4] for one of the lane's columns (zero past the chunk's last row).
fn w_at(n: u32, k: u32) -> vec4<f32> {
    if (n >= p.N) {
        return vec4<f32>(0.0);
    }
    return load_w4(n, k, p.K, p.soff);
}

// acc + Σ_i xv[i] · wt_i: one row's 4 reduction elements into its 4 columns.
fn fma4(acc: vec4<f32>, xv: vec4<f32>, w0: vec4<f32>, w1: vec4<f32>, w2: vec4<f32>, w3: vec4<f32>) -> vec4<f32> {
    return acc + xv.x * w0 + xv.y * w1 + xv.z * w2 + xv.w * w3;
}

// One step of 4 reduction elements k .. k+4: `va`, `vb` are x for the lane's two rows; n0 is
// the lane's first column. Called in uniform control flow (subgroupBroadcast).
fn sg8_step(acc: ptr<function, Sg8Acc>, va: vec4<f32>, vb: vec4<f32>, n0: u32, k: u32) {
    let c0 = w_at(n0, k);
    let c1 = w_at(n0 + SG_LANES, k);
    let c2 = w_at(n0 + 2u * SG_LANES, k);
    let c3 = w_at(n0 + 3u * SG_LANES, k);
    // wi = the 4 columns' weights for reduction element k + i.
    let w0 = vec4<f32>(c0.x, c1.x, c2.x, c3.x);
    let w1 = vec4<f32>(c0.y, c1.y, c2.y, c3.y);
    let w2 = vec4<f32>(c0.z, c1.z, c2.z, c3.z);
    let w3 = vec4<f32>(c0.w, c1.w, c2.w, c3.w);
    // Broadcast lane indices must be constants, hence one line per lane.
    (*acc).a0 = fma4((*acc).a0, subgroupBroadcast(va, 0u), w0, w1, w2, w3);
    (*acc).a1 = fma4((*acc).a1, subgroupBroadcast(va, 1u), w0, w1, w2, w3);
    (*acc).a2 = fma4((*acc).a2, subgroupBroadcast(va, 2u), w0, w1, w2, w3);
    (*acc).a3 = fma4((*acc).a3, subgroupBroadcast(va, 3u), w0, w1, w2, w3);
    (*acc).a4 = fma4((*acc).a4, subgroupBroadcast(va, 4u), w0, w1, w2, w3);
    (*acc).a5 = fma4((*acc).a5, subgroupBroadcast(va, 5u), w0, w1, w2, w3);
    (*acc).a6 = fma4((*acc).a6, subgroupBroadcast(va, 6u), w0, w1, w2, w3);
    (*acc).a7 = fma4((*acc).a7, subgroupBroadcast(va, 7u), w0, w1, w2, w3);
    (*acc).b0 = fma4((*acc).b0, subgroupBroadcast(vb, 0u), w0, w1, w2, w3);
    (*acc).b1 = fma4((*acc).b1, subgroupBroadcast(vb, 1u), w0, w1, w2, w3);
    (*acc).b2 = fma4((*acc).b2, subgroupBroadcast(vb, 2u), w0, w1, w2, w3);
    (*acc).b3 = fma4((*acc).b3, subgroupBroadcast(vb, 3u), w0, w1, w2, w3);
    (*acc).b4 = fma4((*acc).b4, subgroupBroadcast(vb, 4u), w0, w1, w2, w3);
    (*acc).b5 = fma4((*acc).b5, subgroupBroadcast(vb, 5u), w0, w1, w2, w3);
    (*acc).b6 = fma4((*acc).b6, subgroupBroadcast(vb, 6u), w0, w1, w2, w3);
    (*acc).b7 = fma4((*acc).b7, subgroupBroadcast(vb, 7u), w0, w1, w2, w3);
}

// Writes the tile's rows below p.M and columns below p.N through store_out.
fn sg8_store(acc: Sg8Acc, m0: u32, n0: u32) {
    let rows = array<vec4<f32>, SG_PIXELS>(acc.a0, acc.a1, acc.a2, acc.a3, acc.a4, acc.a5, acc.a6, acc.a7,
                                           acc.b0, acc.b1, acc.b2, acc.b3, acc.b4, acc.b5, acc.b6, acc.b7);
    for (var r = 0u; r < SG_PIXELS; r++) {
        let m = m0 + r;
        if (m >= p.M) {
            break;
        }
        for (var j = 0u; j < 4u; j++) {
            let n = n0 + j * SG_LANES;
            if (n < p.N) {
                store_out(m, n, rows[r][j]);
            }
        }
    }
}

// The matrix–vector inner loop for CPU rasterisers (LANE_ROWS in matvec.wgsl and
// matvec_fused.wgsl; conv.wgsl has the same lanes over taps): each invocation owns four whole output rows and walks K alone, so the kernel
// has no workgroup memory and no barrier. SwiftShader runs a workgroup that meets a barrier as
// coroutines switched at every barrier; the 32-lanes-per-row tree cost it ~9× the time of this
// loop on a 5632×1024 q4 product (Chromium, 2 cores). Four rows per lane share each activation
// load (measured: 1 row 9.7 ms, 2 rows 8.6, 4 rows 7.7 at that shape).
// Includer declares `w: array<u32>` and `x: array<vec4<f32>>` and includes quant.wgsl first.

// Σ_k W[r_j, k] · x[4·xb + k] for the four rows r_j (rows of this weight chunk; a lane whose rows
// run past the chunk passes its last row again and discards the extra sums).
fn lane_dot4(r: vec4<u32>, K: u32, soff: u32, xb: u32) -> vec4<f32> {
    var acc = vec4<f32>(0.0);
#if Q4 || Q4A
    // A 32-weight group at a time: 4 words per row, one scale per row; the format's offset is
    // folded into the group's sum of activations (q4_group_finish).
    let w0 = r * (K / 8u);
    for (var grp = 0u; grp < K / 32u; grp++) {
        var s = vec4<f32>(0.0);
        var sa = vec4<f32>(0.0);
        for (var i = 0u; i < 4u; i++) {
            let lo = x[xb + grp * 8u + 2u * i];
            let hi = x[xb + grp * 8u + 2u * i + 1u];
            let o = grp * 4u + i;
            s += vec4<f32>(nibble_dot(w_word(w0.x + o), lo, hi), nibble_dot(w_word(w0.y + o), lo, hi),
                           nibble_dot(w_word(w0.z + o), lo, hi), nibble_dot(w_word(w0.w + o), lo, hi));
            sa += lo + hi;
        }
        let t = sa.x + sa.y + sa.z + sa.w;
        acc += vec4<f32>(q4_group_finish(r.x, grp, K, soff, s.x, t), q4_group_finish(r.y, grp, K, soff, s.y, t),
                         q4_group_finish(r.z, grp, K, soff, s.z, t), q4_group_finish(r.w, grp, K, soff, s.w, t));
    }
#else
    for (var k = 0u; k < K; k += 4u) {
        acc += x[xb + k / 4u] * lane_w4(r, k, K, soff);
    }
#endif
    return acc;
}

// Weights [r_j, k .. k+4) of the lane's four rows as the columns of a matrix, so that `xv * m` is
// the four rows' dots with the activation quad xv.
fn lane_w4(r: vec4<u32>, k: u32, K: u32, soff: u32) -> mat4x4<f32> {
    return mat4x4<f32>(load_w4(r.x, k, K, soff), load_w4(r.y, k, K, soff), load_w4(r.z, k, K, soff), load_w4(r.w, k, K, soff));
}

#if LANE_M
// Stores a lane's LANE_M × 4 sums (activation rows m0.., output rows n..), leaving out rows past
// M or N. The includer has linear_out.wgsl's `store_out`.
fn lane_store(m0: u32, n: u32, M: u32, N: u32, acc: array<vec4<f32>, LANE_M>) {
    for (var j = 0u; j < LANE_M; j++) {
        if (m0 + j < M) {
#if SWIGLU_PAIRS || ROPE_PAIRS
            store_quad(m0 + j, n, acc[j]);
#else
            for (var i = 0u; i < 4u; i++) {
                if (n + i < N) {
                    store_out(m0 + j, n + i, acc[j][i]);
                }
            }
#endif
        }
    }
}
#endif

// The four rows a lane owns from row n on, clamped to the chunk's last row.
fn lane_rows(n: u32, N: u32) -> vec4<u32> {
    return min(vec4<u32>(n, n + 1u, n + 2u, n + 3u), vec4<u32>(N - 1u));
}

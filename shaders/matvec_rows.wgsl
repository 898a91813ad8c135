// The GPU shape of the decode products (matvec.wgsl, matvec_fused.wgsl): a workgroup of 256 lanes
// owns 8 output rows, 32 lanes per row striding along K (neighbouring lanes read neighbouring
// words); `row_sum` adds up each row's 32 partial sums.
// SUBGROUPS=n (value define, n ≤ 32: the device's fixed subgroup width): rows are handed out by
// subgroup, since WGSL does not say which lanes form one: row r is subgroups r·32/n … (r+1)·32/n − 1.
// Each subgroup adds its lanes in registers (subgroupAdd); with n = 32 that is the row's sum and
// no barrier is needed, otherwise one barrier gathers the 32/n shares. Without SUBGROUPS: lanes
// 32r … 32r + 31 form row r and a tree in workgroup memory adds them up (six barriers).
// The entry point takes `inv: Lane`, calls `row_lane(inv)` for its row and lane, `row_dot` for
// the lane's share of its row (Q4_GROUPS, WIDE_RUNS, STAGE_X: see there) and `row_sum` for the row.

//#include lane_ids.wgsl

// A lane's row in the workgroup (0..8) and its place along that row's K (0..32).
struct RowLane {
    row: u32,
    lane: u32,
}

#if SUBGROUPS
const SG_PER_ROW: u32 = 32u / SUBGROUPS;
var<workgroup> row_shares: array<f32, 8 * SG_PER_ROW>; // each subgroup's sum

fn row_lane(inv: Lane) -> RowLane {
    return RowLane(inv.sg / SG_PER_ROW, (inv.sg % SG_PER_ROW) * SUBGROUPS + inv.sl);
}

// The sum of `v` over the 32 lanes of this lane's row, for every lane of the row. Every lane of
// the workgroup calls it, in uniform control flow, once per kernel: it ends without a barrier
// after reading `row_shares`, so a second call would race with those reads (as in the tree below).
fn row_sum(rl: RowLane, v: f32) -> f32 {
    let s = subgroupAdd(v);
    if (SG_PER_ROW == 1u) {
        return s;
    }
    if (rl.lane % SUBGROUPS == 0u) {
        row_shares[rl.row * SG_PER_ROW + rl.lane / SUBGROUPS] = s;
    }
    workgroupBarrier();
    var t = 0.0;
    for (var i = 0u; i < SG_PER_ROW; i++) {
        t += row_shares[rl.row * SG_PER_ROW + i];
    }
    return t;
}
#else
var<workgroup> row_shares: array<f32, 256>; // per lane, then the tree's partial sums

fn row_lane(inv: Lane) -> RowLane {
    return RowLane(inv.li / 32u, inv.li % 32u);
}

fn row_sum(rl: RowLane, v: f32) -> f32 {
    let li = rl.row * 32u + rl.lane;
    row_shares[li] = v;
    workgroupBarrier();
    for (var s = 16u; s > 0u; s >>= 1u) {
        if (rl.lane < s) {
            row_shares[li] += row_shares[li + s];
        }
        workgroupBarrier();
    }
    return row_shares[rl.row * 32u];
}
#endif

// The activation row is walked in chunks of vec4s. STAGE_X=n (value define, a multiple of 8): the
// workgroup first copies each chunk of n vec4 into workgroup memory (each global activation read
// once per workgroup instead of once per row) and, with Q4_GROUPS, adds up each group's 32
// activations once for all 8 rows; three barriers per chunk. Without it the chunk is the whole row
// and every row reads `x` itself (the caches serve the other seven).
#if STAGE_X
// Padded by one vec4 per 8, so lanes reading whole groups (8 vec4 apart) or runs (2 or 4 apart)
// fall in different banks.
var<workgroup> xs: array<vec4<f32>, STAGE_X + STAGE_X / 8u>;
#if Q4_GROUPS
var<workgroup> xsums: array<f32, STAGE_X / 8u>; // Σ of each group's activations (q4_group_sum)
#endif

fn chunk_len(K: u32) -> u32 {
    return STAGE_X;
}

// Vec4 `i` of the chunk that starts at vec4 `base` of x.
fn xq(base: u32, i: u32) -> vec4<f32> {
    return xs[i + i / 8u];
}

// Copies `len` vec4 from x[base ..] into `xs` (lane `li` of 256), after every row is done with the
// previous chunk. Called by every lane, in uniform control flow.
fn stage_chunk(base: u32, len: u32, li: u32) {
    workgroupBarrier();
    for (var v = li; v < len; v += 256u) {
        xs[v + v / 8u] = x[base + v];
    }
    workgroupBarrier();
#if Q4_GROUPS
    if (li < len / 8u) {
        xsums[li] = q4_group_sum(chunk_group(base, li));
    }
    workgroupBarrier();
#endif
}
#else
fn chunk_len(K: u32) -> u32 {
    return K / 4u;
}

fn xq(base: u32, i: u32) -> vec4<f32> {
    return x[base + i];
}

fn stage_chunk(base: u32, len: u32, li: u32) {}
#endif

#if Q4_GROUPS
// The 32 activations of group `g` of the chunk at `base`.
fn chunk_group(base: u32, g: u32) -> array<vec4<f32>, 8> {
    let i = g * 8u;
    return array<vec4<f32>, 8>(xq(base, i), xq(base, i + 1u), xq(base, i + 2u), xq(base, i + 3u),
                               xq(base, i + 4u), xq(base, i + 5u), xq(base, i + 6u), xq(base, i + 7u));
}

// Σ of group g's activations: staged once per workgroup, or added up here.
fn chunk_group_sum(a: array<vec4<f32>, 8>, g: u32) -> f32 {
#if STAGE_X
    return xsums[g];
#else
    return q4_group_sum(a);
#endif
}
#endif

#if WIDE_RUNS
#if Q8
const RUN: u32 = 16u;
#else
const RUN: u32 = 8u;
#endif

// The word of `w` where the run starting at element `e` begins.
fn run_word(e: u32) -> u32 {
#if Q8
    return e / 4u;
#else
    return e / 2u;
#endif
}
#endif

// LOADS=n (value define): passes of 32 groups (or runs) per row whose weight and scale loads a
// lane issues together, before its first multiply, so that one memory round trip serves up to n
// of them (a loop of unknown length waits once per pass). 1 unless chosen (Gpu::set_matvec_loads):
// on lavapipe 2 and 4 are slower; a GPU is yet to time them.

// This lane's share of Σ_k W[row, c0·4 + k] · x over the chunk of `len` vec4 at vec4 `c0` of the
// row (x from vec4 `base`).
//   Q4_GROUPS: whole 32-weight groups per lane (q4_group_words, one 16 B load);
//   WIDE_RUNS (K % RUN == 0): runs of 16 B of weights per lane (w_quad: 16 q8 or 8 f16 weights;
//   neighbouring lanes' runs contiguous), with one scale read per q8 run (a run lies inside one
//   32-weight group) applied to the run's sum;
//   both LOADS passes at a time, loads first (a group or run past the chunk reads the last one
//   again and is not added);
//   otherwise one vec4 of weights per lane at a time.
fn chunk_dot(row: u32, lane: u32, K: u32, soff: u32, base: u32, c0: u32, len: u32) -> f32 {
    var acc = 0.0;
#if Q4_GROUPS
    let ng = len / 8u;
    for (var g0 = lane; g0 < ng; g0 += 32u * LOADS) {
        var q: array<vec4<u32>, LOADS>;
        var f: array<vec2<f32>, LOADS>;
        for (var b = 0u; b < LOADS; b++) {
            let grp = c0 / 8u + min(g0 + 32u * b, ng - 1u);
            q[b] = q4_group_words(row, grp, K);
            f[b] = q4_group_factors(row, grp, K, soff);
        }
        for (var b = 0u; b < LOADS; b++) {
            let g = g0 + 32u * b;
            if (g < ng) {
                let a = chunk_group(base, g);
                acc += q4_group_apply(f[b], q4_group_nibbles(q[b], a), chunk_group_sum(a, g));
            }
        }
    }
#else
#if WIDE_RUNS
    let nr = len / (RUN / 4u);
    for (var r0 = lane; r0 < nr; r0 += 32u * LOADS) {
        var q: array<vec4<u32>, LOADS>;
#if Q8
        var d: array<f32, LOADS>;
#endif
        for (var b = 0u; b < LOADS; b++) {
            let e = row * K + c0 * 4u + min(r0 + 32u * b, nr - 1u) * RUN;
            q[b] = w_quad(run_word(e));
#if Q8
            d[b] = group_scale(e, soff);
#endif
        }
        for (var b = 0u; b < LOADS; b++) {
            let c = r0 + 32u * b;
            if (c < nr) {
                let xa = c * (RUN / 4u);
#if Q8
                let run = bitcast<vec4<i32>>(q[b]);
                var s = 0.0;
                for (var i = 0u; i < 4u; i++) {
                    let v = run[i];
                    s += dot(vec4<f32>(f32(extractBits(v, 0u, 8u)), f32(extractBits(v, 8u, 8u)), f32(extractBits(v, 16u, 8u)), f32(extractBits(v, 24u, 8u))), xq(base, xa + i));
                }
                acc += s * d[b];
#else
                let run = q[b];
                acc += dot(vec4<f32>(unpack2x16float(run.x), unpack2x16float(run.y)), xq(base, xa))
                     + dot(vec4<f32>(unpack2x16float(run.z), unpack2x16float(run.w)), xq(base, xa + 1u));
#endif
            }
        }
    }
#else
    for (var v = lane; v < len; v += 32u) {
        acc += dot(load_w4(row, (c0 + v) * 4u, K, soff), xq(base, v));
    }
#endif
#endif
    return acc;
}

// This lane's share of Σ_k W[row, k] · x[xb·4 + k] (its row's 32 lanes add them up with row_sum).
// `live`: the workgroup row holds a row of the chunk (otherwise 0). Every lane of the workgroup
// calls it, in uniform control flow (STAGE_X stages the activations together).
fn row_dot(row: u32, live: bool, rl: RowLane, li: u32, K: u32, soff: u32, xb: u32) -> f32 {
    var acc = 0.0;
    let n4 = K / 4u;
    for (var c0 = 0u; c0 < n4; c0 += chunk_len(K)) {
        let len = min(chunk_len(K), n4 - c0);
        stage_chunk(xb + c0, len, li);
        if (live) {
            acc += chunk_dot(row, rl.lane, K, soff, xb + c0, c0, len);
        }
    }
    return acc;
}

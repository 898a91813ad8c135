// The GPU shape of the decode products (matvec.wgsl, matvec_fused.wgsl): a workgroup of 256 lanes
// owns 8 output rows, 32 lanes per row striding along K (neighbouring lanes read neighbouring
// words); `row_sum` adds up each row's 32 partial sums.
// SUBGROUPS=n (value define, n ≤ 32: the device's fixed subgroup width): rows are handed out by
// subgroup, since WGSL does not say which lanes form one: row r is subgroups r·32/n … (r+1)·32/n − 1.
// Each subgroup adds its lanes in registers (subgroupAdd); with n = 32 that is the row's sum and
// no barrier is needed, otherwise one barrier gathers the 32/n shares. Without SUBGROUPS: lanes
// 32r … 32r + 31 form row r and a tree in workgroup memory adds them up (six barriers).
// The entry point takes `inv: Lane` and calls `row_lane(inv)` for its row and lane.
// WIDE_RUNS (Q8, or F16 with K % 8 == 0): `row_dot_runs` walks a row in runs of 16 B of weights
// per lane (4 words: 16 q8 or 8 f16 weights; neighbouring lanes' runs contiguous), with one scale
// read per q8 run (a run lies inside one 32-weight group) applied to the run's sum.

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
// the workgroup calls it, in uniform control flow.
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

#if WIDE_RUNS
#if Q8
const RUN: u32 = 16u;
#else
const RUN: u32 = 8u;
#endif

// Σ_k W[row, k] · x[xb·4 + k] over this lane's runs of the row (K % RUN == 0).
fn row_dot_runs(row: u32, lane: u32, K: u32, soff: u32, xb: u32) -> f32 {
    var acc = 0.0;
    for (var c = lane; c < K / RUN; c += 32u) {
        let e = row * K + c * RUN;
        let xa = xb + c * (RUN / 4u);
#if Q8
        var s = 0.0;
        for (var i = 0u; i < 4u; i++) {
            let q = bitcast<i32>(w[e / 4u + i]);
            s += dot(vec4<f32>(f32(extractBits(q, 0u, 8u)), f32(extractBits(q, 8u, 8u)), f32(extractBits(q, 16u, 8u)), f32(extractBits(q, 24u, 8u))), x[xa + i]);
        }
        acc += s * group_scale(e, soff);
#else
        let w0 = e / 2u;
        acc += dot(vec4<f32>(unpack2x16float(w[w0]), unpack2x16float(w[w0 + 1u])), x[xa])
             + dot(vec4<f32>(unpack2x16float(w[w0 + 2u]), unpack2x16float(w[w0 + 3u])), x[xa + 1u]);
#endif
    }
    return acc;
}
#endif

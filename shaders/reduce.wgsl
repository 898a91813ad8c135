// Sums and maxima over a whole workgroup, shared by the kernels that need one (norm, groupnorm,
// grn, attention). The including shader declares `const RED_LANES: u32` (its workgroup size, a
// power of two ≤ 256), takes its lane as `lane: Lane` in the entry point and calls
// `red_setup(lane)` first. Every lane must call `wg_sum` / `wg_max`, in uniform control flow;
// each gets the result, and the scratch is free again when they return.
// SUBGROUPS=n (value define: the adapter's fixed subgroup width): each subgroup reduces in
// registers (subgroupAdd / subgroupMax), and one barrier gathers the subgroups' results — instead
// of one barrier per halving. Subgroups are found by their id, not by lane ranges, since WGSL does
// not promise which lanes form a subgroup. Without it: a tree through workgroup memory.

//#include lane_ids.wgsl

#if SUBGROUPS
const RED_SLOTS: u32 = max(1u, RED_LANES / SUBGROUPS); // one per subgroup
#else
const RED_SLOTS: u32 = RED_LANES; // one per lane
#endif
var<workgroup> red: array<f32, RED_SLOTS>;
var<private> red_lane: Lane;

fn red_setup(lane: Lane) {
    red_lane = lane;
}

#if SUBGROUPS
fn red_gather(v: f32) {
    if (red_lane.sl == 0u) {
        red[red_lane.sg] = v;
    }
    workgroupBarrier();
}

fn wg_sum(v: f32) -> f32 {
    red_gather(subgroupAdd(v));
    var t = red[0];
    for (var i = 1u; i < RED_SLOTS; i++) {
        t += red[i];
    }
    workgroupBarrier();
    return t;
}

fn wg_max(v: f32) -> f32 {
    red_gather(subgroupMax(v));
    var t = red[0];
    for (var i = 1u; i < RED_SLOTS; i++) {
        t = max(t, red[i]);
    }
    workgroupBarrier();
    return t;
}
#else
fn wg_sum(v: f32) -> f32 {
    let li = red_lane.li;
    red[li] = v;
    workgroupBarrier();
    for (var s = RED_LANES / 2u; s > 0u; s >>= 1u) {
        if (li < s) {
            red[li] += red[li + s];
        }
        workgroupBarrier();
    }
    let t = red[0];
    workgroupBarrier();
    return t;
}

fn wg_max(v: f32) -> f32 {
    let li = red_lane.li;
    red[li] = v;
    workgroupBarrier();
    for (var s = RED_LANES / 2u; s > 0u; s >>= 1u) {
        if (li < s) {
            red[li] = max(red[li], red[li + s]);
        }
        workgroupBarrier();
    }
    let t = red[0];
    workgroupBarrier();
    return t;
}
#endif

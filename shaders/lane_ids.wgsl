// An invocation's place in its workgroup, and with SUBGROUPS (value define: the device's fixed
// subgroup width) in its subgroup; entry points take it as a parameter (reduce.wgsl,
// matvec_rows.wgsl).

struct Lane {
    @builtin(local_invocation_index) li: u32,
#if SUBGROUPS
    @builtin(subgroup_id) sg: u32,              // this lane's subgroup in the workgroup
    @builtin(subgroup_invocation_id) sl: u32,   // its place in the subgroup
#endif
}

//! WGSL sources and the tiny preprocessor that specialises them (`#if NAME [|| NAME…]` / `#else` /
//! `#endif` blocks and `//#include file.wgsl` lines), so that one file per kernel family can
//! serve every weight format without runtime branching in the shader. A define `NAME=VALUE`
//! becomes `const NAME: u32 = VALUEu;` at the top of the source: sizes (workgroup sizes, tiles)
//! are chosen once, in the Rust launcher, and the shader uses them as constants
//! (`@workgroup_size(WG)`, `array<f32, BQ * BK>`); `#if NAME` is true for a value define too.
//! Kernels with subgroup operations (defines `SUBGROUPS=n`, `SG8`) start with `enable subgroups;`
//! in the browser, which requires it; naga 30 natively takes them without it and rejects it.
//! `F16_MATH` (f16 arithmetic, the `fast` setting on devices with `shader-f16`) adds `enable f16;`.

const FILES: &[(&str, &str)] = &[
    ("quant.wgsl", include_str!("../../shaders/quant.wgsl")),
    ("activation.wgsl", include_str!("../../shaders/activation.wgsl")),
    ("linear_out.wgsl", include_str!("../../shaders/linear_out.wgsl")),
    ("matvec.wgsl", include_str!("../../shaders/matvec.wgsl")),
    ("matvec_fused.wgsl", include_str!("../../shaders/matvec_fused.wgsl")),
    ("matvec_lanes.wgsl", include_str!("../../shaders/matvec_lanes.wgsl")),
    ("matvec_rows.wgsl", include_str!("../../shaders/matvec_rows.wgsl")),
    ("linear_params.wgsl", include_str!("../../shaders/linear_params.wgsl")),
    ("lane_ids.wgsl", include_str!("../../shaders/lane_ids.wgsl")),
    ("gemm_tile64.wgsl", include_str!("../../shaders/gemm_tile64.wgsl")),
    ("gemm_tile128.wgsl", include_str!("../../shaders/gemm_tile128.wgsl")),
    ("tile_fetch.wgsl", include_str!("../../shaders/tile_fetch.wgsl")),
    ("gemm_sg8.wgsl", include_str!("../../shaders/gemm_sg8.wgsl")),
    ("matmul.wgsl", include_str!("../../shaders/matmul.wgsl")),
    ("norm.wgsl", include_str!("../../shaders/norm.wgsl")),
    ("rope.wgsl", include_str!("../../shaders/rope.wgsl")),
    ("kv_cache.wgsl", include_str!("../../shaders/kv_cache.wgsl")),
    ("reduce.wgsl", include_str!("../../shaders/reduce.wgsl")),
    ("attention.wgsl", include_str!("../../shaders/attention.wgsl")),
    ("attention_tiled.wgsl", include_str!("../../shaders/attention_tiled.wgsl")),
    ("elementwise.wgsl", include_str!("../../shaders/elementwise.wgsl")),
    ("embedding.wgsl", include_str!("../../shaders/embedding.wgsl")),
    ("topk.wgsl", include_str!("../../shaders/topk.wgsl")),
    ("depthwise.wgsl", include_str!("../../shaders/depthwise.wgsl")),
    ("grn.wgsl", include_str!("../../shaders/grn.wgsl")),
    ("flow.wgsl", include_str!("../../shaders/flow.wgsl")),
    ("conv.wgsl", include_str!("../../shaders/conv.wgsl")),
    ("groupnorm.wgsl", include_str!("../../shaders/groupnorm.wgsl")),
];

fn file(name: &str) -> &'static str {
    FILES.iter().find(|(n, _)| *n == name).map(|(_, s)| *s).unwrap_or_else(|| panic!("unknown shader file {name}"))
}

/// Returns the source of `name` with `defines` applied and includes expanded.
pub fn source(name: &str, defines: &[&str]) -> String {
    let mut out = String::new();
    if defines.contains(&"F16_MATH") {
        out.push_str("enable f16;\n");
    }
    if cfg!(target_arch = "wasm32") && defines.iter().any(|d| d.starts_with("SUBGROUPS=") || *d == "SG8") {
        out.push_str("enable subgroups;\n");
    }
    for d in defines {
        if let Some((n, v)) = d.split_once('=') {
            let v: u32 = v.parse().unwrap_or_else(|_| panic!("value define {d} is not a u32"));
            out.push_str(&format!("const {n}: u32 = {v}u;\n"));
        }
    }
    let names: Vec<&str> = defines.iter().map(|d| d.split_once('=').map_or(*d, |(n, _)| n)).collect();
    out.push_str(&expand(name, &names));
    out
}

/// `name` with `#if` blocks resolved against `names` and includes expanded.
fn expand(name: &str, defines: &[&str]) -> String {
    let mut out = String::new();
    // Stack of (this block active, parent active).
    let mut stack: Vec<(bool, bool)> = Vec::new();
    let active = |stack: &Vec<(bool, bool)>| stack.last().map(|&(a, p)| a && p).unwrap_or(true);
    for line in file(name).lines() {
        let t = line.trim();
        if let Some(d) = t.strip_prefix("#if ") {
            // `#if A || B`: active when any of the names is defined.
            let parent = active(&stack);
            stack.push((d.split("||").any(|n| defines.contains(&n.trim())), parent));
        } else if t == "#else" {
            let (a, p) = stack.pop().expect("#else without #if");
            stack.push((!a, p));
        } else if t == "#endif" {
            stack.pop().expect("#endif without #if");
        } else if !active(&stack) {
        } else if let Some(inc) = t.strip_prefix("//#include ") {
            out.push_str(&expand(inc.trim(), defines));
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    assert!(stack.is_empty(), "unbalanced #if in {name}");
    out
}

/// The bind group layout a specialised source declares: every `@group(0) @binding(N) var<…>` line,
/// the `var<uniform>` parameter block at binding 0 with a dynamic offset (the recorder's arena
/// slot), storage buffers read-only or read-write as declared.
pub fn layout_entries(src: &str) -> Vec<wgpu::BindGroupLayoutEntry> {
    let mut entries = Vec::new();
    for line in src.lines().map(str::trim).filter(|l| !l.starts_with("//")) {
        let Some(rest) = line.split_once("@binding(").map(|(_, r)| r) else { continue };
        assert!(line.starts_with("@group(0)"), "only bind group 0 is used: {line}");
        let binding: u32 = rest.split(')').next().and_then(|n| n.trim().parse().ok()).unwrap_or_else(|| panic!("bad binding: {line}"));
        let ty = if line.contains("var<uniform>") {
            assert_eq!(binding, 0, "the parameter block is binding 0: {line}");
            wgpu::BufferBindingType::Uniform
        } else if line.contains("var<storage, read_write>") {
            wgpu::BufferBindingType::Storage { read_only: false }
        } else if line.contains("var<storage, read>") || line.contains("var<storage>") {
            wgpu::BufferBindingType::Storage { read_only: true }
        } else {
            panic!("unsupported binding: {line}")
        };
        let has_dynamic_offset = ty == wgpu::BufferBindingType::Uniform;
        entries.push(wgpu::BindGroupLayoutEntry {
            binding,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer { ty, has_dynamic_offset, min_binding_size: None },
            count: None,
        });
    }
    entries
}

#[cfg(test)]
mod tests {
    #[test]
    fn any_of_several_defines_selects_a_block() {
        for (fmt, has) in [("Q4", true), ("Q4A", true), ("Q8", false), ("F32", false)] {
            let s = super::source("matvec.wgsl", &[fmt]);
            assert_eq!(s.contains("fn q4_group_nibbles("), has, "{fmt}");
        }
    }

    #[test]
    fn defines_select_blocks() {
        let s = super::source("elementwise.wgsl", &["ADD"]);
        assert!(s.contains("y[p.y_off + i] += a"));
        assert!(!s.contains("exp(-g)"));
        let q = super::source("matvec.wgsl", &["Q4", "ADD"]);
        assert!(q.contains("nibble") || q.contains("15u"));
        assert!(!q.contains("#if"));
    }

    #[test]
    fn value_defines_become_constants() {
        let s = super::source("attention_tiled.wgsl", &["HD=128", "TPQ=8", "BK=32"]);
        assert!(s.starts_with("const HD: u32 = 128u;\nconst TPQ: u32 = 8u;\nconst BK: u32 = 32u;\n"));
        assert!(!s.contains("#if"));
    }

    #[test]
    fn layouts_follow_the_declarations() {
        let e = super::layout_entries(&super::source("matvec.wgsl", &["Q4", "ADD"]));
        let kinds: Vec<_> = e
            .iter()
            .map(|e| match e.ty {
                wgpu::BindingType::Buffer { ty, has_dynamic_offset, .. } => (e.binding, ty, has_dynamic_offset),
                _ => unreachable!(),
            })
            .collect();
        assert_eq!(kinds[0], (0, wgpu::BufferBindingType::Uniform, true));
        assert!(kinds[1..].iter().all(|&(_, _, dynamic)| !dynamic));
        assert!(kinds.iter().any(|&(_, ty, _)| ty == wgpu::BufferBindingType::Storage { read_only: true }));
        assert!(kinds.iter().any(|&(_, ty, _)| ty == wgpu::BufferBindingType::Storage { read_only: false }));
    }
}

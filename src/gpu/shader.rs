//! WGSL sources and the tiny preprocessor that specialises them (`#if NAME` / `#else` /
//! `#endif` blocks and `//#include file.wgsl` lines), so that one file per kernel family can
//! serve every weight format without runtime branching in the shader.

const FILES: &[(&str, &str)] = &[
    ("quant.wgsl", include_str!("../../shaders/quant.wgsl")),
    ("activation.wgsl", include_str!("../../shaders/activation.wgsl")),
    ("linear_out.wgsl", include_str!("../../shaders/linear_out.wgsl")),
    ("matvec.wgsl", include_str!("../../shaders/matvec.wgsl")),
    ("gemm_tile.wgsl", include_str!("../../shaders/gemm_tile.wgsl")),
    ("gemm_tile64.wgsl", include_str!("../../shaders/gemm_tile64.wgsl")),
    ("matmul.wgsl", include_str!("../../shaders/matmul.wgsl")),
    ("norm.wgsl", include_str!("../../shaders/norm.wgsl")),
    ("rope.wgsl", include_str!("../../shaders/rope.wgsl")),
    ("attention.wgsl", include_str!("../../shaders/attention.wgsl")),
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
    // Stack of (this block active, parent active).
    let mut stack: Vec<(bool, bool)> = Vec::new();
    let active = |stack: &Vec<(bool, bool)>| stack.last().map(|&(a, p)| a && p).unwrap_or(true);
    for line in file(name).lines() {
        let t = line.trim();
        if let Some(d) = t.strip_prefix("#if ") {
            let parent = active(&stack);
            stack.push((defines.contains(&d.trim()), parent));
        } else if t == "#else" {
            let (a, p) = stack.pop().expect("#else without #if");
            stack.push((!a, p));
        } else if t == "#endif" {
            stack.pop().expect("#endif without #if");
        } else if !active(&stack) {
        } else if let Some(inc) = t.strip_prefix("//#include ") {
            out.push_str(&source(inc.trim(), defines));
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    assert!(stack.is_empty(), "unbalanced #if in {name}");
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn defines_select_blocks() {
        let s = super::source("elementwise.wgsl", &["ADD"]);
        assert!(s.contains("y[p.y_off + i] += a"));
        assert!(!s.contains("exp(-g)"));
        let q = super::source("matvec.wgsl", &["Q4", "ADD"]);
        assert!(q.contains("nibble") || q.contains("15u"));
        assert!(!q.contains("#if"));
    }
}

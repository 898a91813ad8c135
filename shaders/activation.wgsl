// Activation functions shared by several kernels (included, not dispatched).

// erf(x) by Abramowitz & Stegun 7.1.26 (absolute error ≤ 1.5e-7, below f32 resolution of the
// results it feeds). WGSL has no erf builtin.
fn erf_approx(x: f32) -> f32 {
    let a = abs(x);
    let t = 1.0 / (1.0 + 0.3275911 * a);
    let poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))));
    let r = 1.0 - poly * exp(-a * a);
    return select(r, -r, x < 0.0);
}

// Exact (erf) GELU, as torch.nn.GELU() with approximate='none'.
fn gelu(x: f32) -> f32 {
    return 0.5 * x * (1.0 + erf_approx(x * 0.70710678118654752));
}

fn silu(x: f32) -> f32 {
    return x / (1.0 + exp(-x));
}

//! A check, on the user's own device, of every kernel whose reductions use subgroup operations.
//!
//! Subgroup kernels are specialised for the fixed width the adapter reports (`SUBGROUPS=n`,
//! `SG8`). Only the lavapipe and SwiftShader widths (4, 8, 16 lanes) run in our tests; a driver
//! that reports one width and runs another, a subgroup bug in a browser or driver, or a mistake of
//! ours at a width no test machine has (32 on NVIDIA and Apple, 64 on AMD) would give wrong
//! numbers silently: a chat of nonsense, a picture of noise. So before first use each such kernel
//! runs on small random inputs twice, with subgroups and with the portable workgroup tree, and the
//! results must agree to within summation-order rounding. If any disagrees, subgroup operations
//! are turned off for this device (every kernel then takes the tree path) and the verdict says
//! which kernel differed and by how much.
//!
//! The same way, where kernels are shaped for a GPU (many small workgroups, tiles shared through
//! workgroup memory, partial sums combined across workgroups), each GPU-shape product, decode
//! product and attention kernel is compared with its CPU-rasteriser counterpart, whose lanes each
//! compute whole outputs alone with no barrier between them. The GPU shapes have run on real GPUs
//! far less than on our CPU test adapters, where lanes run in order and a missing barrier or a
//! race between workgroups would not show. Where they disagree, the device takes the CPU shapes
//! (slower, still exact) and the verdict says which kernel differed.
//!
//! Each weight format has its own weight walk in the products (4-bit groups, 8-bit runs, f16
//! pairs), so the one-row and prompt products are probed in every format the device's weights
//! take (`Gpu::weight_formats`), and the checks run again when a new one arrives.
//!
//! On CPU adapters the probes run as the engine's kernels do (natively without wgpu's runtime
//! checks, see `Gpu::trusted_shaders`; browsers always check), since that is what must be right.
//! This matters on lavapipe with 16-lane subgroups: there, checked shaders, and even an extra
//! `min` on a subgroup index, give wrong subgroup sums where the unchecked kernels as written are
//! right. On real GPUs the probes keep the checks: a kernel told a wider subgroup than the device
//! runs indexes its per-subgroup slots past the end of workgroup memory, which a GPU may fault on
//! and lose the device, where the checked probe only gives a wrong sum that the check catches.

use anyhow::Result;
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

use super::kernels::{self, AttnKernel, AttnShape, Fused, Kv, KvFormat, Map, NormCopy, NormIn, Out, View};
use super::{Gpu, Recorder, Tensor, Weight};
use crate::weights::quant::{Quant, QuantBlob};

/// Largest difference allowed between the subgroup and tree results, relative to the largest
/// magnitude of the tree result: both are f32 sums of the same terms in another order (observed
/// ≤ 1e-6); a broken reduction is off by whole terms.
const TOLERANCE: f32 = 1e-4;

/// One kernel compared.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Probe {
    pub kernel: String,
    /// Largest difference between the path under test (subgroups; GPU shapes) and the one it
    /// must agree with (the tree; CPU shapes), relative to the latter's largest magnitude (NaN
    /// and infinities count as infinitely far).
    pub diff: f32,
}

impl Probe {
    pub fn agrees(&self) -> bool {
        self.diff <= TOLERANCE
    }
}

/// One line on `probes`: how many of the `kernels` agree with `other`, and the largest
/// difference; or which disagree, and what was done about it (`then`).
fn verdict(probes: &[Probe], kernels: &str, other: &str, then: &str) -> Option<String> {
    let worst = probes.iter().max_by(|a, b| a.diff.total_cmp(&b.diff))?;
    let (n, bad) = (probes.len(), probes.iter().filter(|p| !p.agrees()).count());
    Some(if bad == 0 {
        format!("{n} {kernels} agree with {other} (largest difference {:.1e}, {})", worst.diff, worst.kernel)
    } else {
        format!("{bad} of {n} {kernels} disagree with {other} (worst: {}, off by {:.1e}); {then}", worst.kernel, worst.diff)
    })
}

/// What a subgroup self-check found.
#[derive(Clone, Debug, serde::Serialize)]
pub struct SubgroupCheck {
    /// The width the kernels were specialised for (None: the reductions had no subgroup width;
    /// only the 8-lane tile, if anything, was checked).
    pub width: Option<u32>,
    /// Whether the kernels were shaped for a GPU (they use other subgroup kernels than the
    /// CPU-rasteriser shapes).
    pub gpu_shapes: bool,
    pub probes: Vec<Probe>,
    /// Every probe agreed. If not, subgroup operations are now off on this device.
    pub passed: bool,
    /// The kernel variants it checked ([`variants`]): it runs again when they change.
    #[serde(skip)]
    variants: String,
}

impl SubgroupCheck {
    /// One line for logs and benchmarks.
    pub fn describe(&self) -> String {
        let width = self.width.map_or("8-lane tile".to_string(), |w| format!("{w}-lane subgroups"));
        let line = verdict(&self.probes, "kernels", "the workgroup tree", "subgroup operations are now off on this device");
        line.map_or("no subgroup kernels to check".into(), |l| format!("{width}: {l}"))
    }
}

/// What the kernel-shape self-check found: GPU-shape kernels against the CPU-shape ones.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ShapeCheck {
    /// The subgroup width the GPU-shape kernels used (None: the workgroup tree).
    pub width: Option<u32>,
    pub probes: Vec<Probe>,
    /// Every probe agreed. If not, the device now takes the CPU kernel shapes.
    pub passed: bool,
    /// The kernel variants it checked ([`variants`]): it runs again when they change.
    #[serde(skip)]
    variants: String,
}

impl ShapeCheck {
    /// One line for logs and benchmarks.
    pub fn describe(&self) -> String {
        let line = verdict(&self.probes, "GPU-shape kernels", "the CPU-shape ones", "this device now takes the CPU kernel shapes");
        line.unwrap_or_else(|| "CPU kernel shapes: nothing to compare".into())
    }
}

/// Both checks, as the engine runs them before first use: subgroups against the tree, then (on
/// GPU shapes) GPU shapes against CPU shapes, then subgroups again if the shapes changed.
/// Returns the verdicts that now hold.
pub async fn check_device(gpu: &Gpu) -> Result<(SubgroupCheck, ShapeCheck)> {
    let sub = check_subgroups(gpu).await?;
    let shapes = check_shapes(gpu).await?;
    if !shapes.passed {
        return Ok((check_subgroups(gpu).await?, shapes));
    }
    Ok((sub, shapes))
}

/// Compares the GPU-shape kernels with the CPU-shape ones where kernels are shaped for a GPU, and
/// keeps the verdict on the device ([`Gpu::shape_check`]); runs again only when what selects its
/// kernels changed ([`variants`]). Where they disagree the device takes the CPU shapes from now on.
pub async fn check_shapes(gpu: &Gpu) -> Result<ShapeCheck> {
    let width = gpu.subgroup_reduce();
    if let Some(done) = gpu.shape_check() {
        if !done.passed {
            gpu.set_gpu_tuned(false);
            return Ok(done);
        }
        if done.variants == variants(gpu) || !gpu.gpu_tuned() {
            return Ok(done);
        }
    }
    if !gpu.gpu_tuned() {
        return Ok(ShapeCheck { width, probes: Vec::new(), passed: true, variants: variants(gpu) });
    }
    // The one-row and prompt products in each weight format (each reads its format its own way),
    // their fused stages in the model's main format, attention, a convolution.
    let formats = probe_formats(gpu);
    let mut list: Vec<Kernel> = formats.iter().map(|&q| Kernel::Matvec(q)).collect();
    list.extend([Kernel::MatvecResidual, Kernel::FusedQkv, Kernel::FusedGateUp, Kernel::FusedPlain]);
    list.extend(formats.iter().map(|&q| Kernel::Prompt(q)));
    list.extend([Kernel::PromptSwiGlu, Kernel::AttentionDecode, Kernel::AttentionPrompt, Kernel::Convolution]);
    // Exact f32 arithmetic on both sides (the fast setting's f16 tile would differ by its rounding).
    let f16 = gpu.f16_math();
    gpu.set_f16_math(false);
    let probes = compare(gpu, &list, |on| gpu.set_gpu_tuned(on)).await;
    gpu.set_gpu_tuned(true);
    gpu.set_f16_math(f16);
    let probes = probes?;
    let passed = probes.iter().all(Probe::agrees);
    if !passed {
        gpu.set_gpu_tuned(false);
    }
    let check = ShapeCheck { width, probes, passed, variants: variants(gpu) };
    *gpu.shape_check.lock().unwrap() = Some(check.clone());
    Ok(check)
}

/// Runs the check for the current kernel shapes and subgroup settings and keeps the verdict on
/// the device ([`Gpu::subgroup_check`]). The engine calls it before every chat turn and picture:
/// it only runs again when what selects its kernels changed ([`variants`]); nothing to do where no
/// subgroup kernel would run.
pub async fn check_subgroups(gpu: &Gpu) -> Result<SubgroupCheck> {
    let (width, sg8, tuned) = (gpu.subgroup_reduce(), gpu.sg8() && !gpu.gpu_tuned(), gpu.gpu_tuned());
    if let Some(done) = gpu.subgroup_check() {
        if !done.passed {
            // Subgroups stay off on a device that failed (a test may have allowed them again).
            gpu.set_subgroup_reduce_allowed(false);
            gpu.set_sg8_allowed(false);
            return Ok(done);
        }
        if done.variants == variants(gpu) {
            return Ok(done);
        }
    }
    let allowed = (gpu.subgroup_reduce_allowed(), gpu.sg8_allowed());
    let probes = run_probes(gpu, width.is_some(), sg8).await;
    gpu.set_subgroup_reduce_allowed(allowed.0);
    gpu.set_sg8_allowed(allowed.1);
    let probes = probes?;
    let passed = probes.iter().all(Probe::agrees);
    if !passed {
        gpu.set_subgroup_reduce_allowed(false);
        gpu.set_sg8_allowed(false);
    }
    let check = SubgroupCheck { width, gpu_shapes: tuned, probes, passed, variants: variants(gpu) };
    *gpu.subgroup_check.lock().unwrap() = Some(check.clone());
    Ok(check)
}

/// What selects the kernels the checks run: the shapes, the subgroup width, the shader mode, the
/// opt-in GPU-shape variants (staged activations, batched loads, the 128 tile) and the weight
/// formats on the device.
fn variants(gpu: &Gpu) -> String {
    let (sub, sg8, tuned, trusted) = (gpu.subgroup_reduce(), gpu.sg8(), gpu.gpu_tuned(), gpu.trusted_shaders());
    format!("{sub:?} {sg8} {tuned} {trusted} {} {} {} {:?}", gpu.stage_x(), gpu.matvec_loads(), gpu.tile128(), probe_formats(gpu))
}

/// The weight formats whose products are probed: those of the weights on the device, or, before
/// any are loaded, those of the app's default preset (q4a layers, a q8 `lm_head` and SigLIP, f16
/// elsewhere).
fn probe_formats(gpu: &Gpu) -> Vec<Quant> {
    let on_device = gpu.weight_formats();
    if on_device.is_empty() {
        vec![Quant::F16, Quant::Q8, Quant::Q4A]
    } else {
        on_device
    }
}

/// The format the fused decode products are probed in: the language model's own where its
/// weights are loaded (a preset's format is the most compact one on the device, and the formats
/// come in [`Quant::ALL`] order, most compact last).
fn main_format(gpu: &Gpu) -> Quant {
    *probe_formats(gpu).last().expect("probe_formats is never empty")
}

/// `n` values uniform in [-1, 1), deterministic for a seeded `rng` (the inputs both paths of a
/// probe see must be the same).
fn uniform(rng: &mut ChaCha8Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| (rng.next_u32() >> 8) as f32 / (1u32 << 24) as f32 * 2.0 - 1.0).collect()
}

/// The kernels a probe can run, each on inputs shaped like the model's. The fused decode products
/// and the SwiGLU prompt product read weights in the model's main format ([`main_format`]).
#[derive(Clone, Copy)]
enum Kernel {
    RmsNorm,
    LayerNorm,
    AttentionRows,
    AttentionSplit,
    GroupNorm,
    Grn,
    Matvec(Quant),
    MatvecResidual,
    FusedQkv,
    FusedGateUp,
    FusedPlain,
    Sg8Matmul,
    Prompt(Quant),
    PromptSwiGlu,
    AttentionDecode,
    AttentionPrompt,
    Convolution,
}

impl Kernel {
    fn name(self) -> String {
        match self {
            Kernel::RmsNorm => "rmsnorm".into(),
            Kernel::LayerNorm => "layernorm".into(),
            Kernel::AttentionRows => "attention (rows)".into(),
            Kernel::AttentionSplit => "attention (split keys)".into(),
            Kernel::GroupNorm => "groupnorm statistics".into(),
            Kernel::Grn => "global response norm".into(),
            Kernel::Matvec(q) => format!("matvec {q}"),
            Kernel::MatvecResidual => "matvec + residual".into(),
            Kernel::FusedQkv => "fused norm · QKV + RoPE".into(),
            Kernel::FusedGateUp => "fused norm · gate|up + SwiGLU".into(),
            Kernel::FusedPlain => "fused norm · matvec".into(),
            Kernel::Sg8Matmul => "matmul (8-lane tile)".into(),
            Kernel::Prompt(q) => format!("prompt product {q}"),
            Kernel::PromptSwiGlu => "prompt product + SwiGLU".into(),
            Kernel::AttentionDecode => "decode attention".into(),
            Kernel::AttentionPrompt => "prompt attention".into(),
            Kernel::Convolution => "3×3 convolution".into(),
        }
    }
}

// Shapes: the real model's where cheap (hidden 2048, SigLIP 1024, head dim 128), long enough
// that every reduction spans several subgroups and every matvec row many groups.
const HIDDEN: usize = 2048;
const ROWS: usize = 72;
const HEADS: usize = 2;
const HEAD_DIM: usize = 128;
const KEYS: usize = 300;

async fn run_probes(gpu: &Gpu, reduce: bool, sg8: bool) -> Result<Vec<Probe>> {
    let mut list = Vec::new();
    if reduce {
        list.extend([Kernel::RmsNorm, Kernel::LayerNorm, Kernel::AttentionRows, Kernel::GroupNorm, Kernel::Grn]);
        if gpu.gpu_tuned() {
            list.push(Kernel::AttentionSplit);
        }
        // The GPU-shape matrix–vector rows take subgroups up to 32 lanes (row_walk).
        if gpu.gpu_tuned() && gpu.subgroup_reduce().is_some_and(|w| w <= 32) {
            list.extend(probe_formats(gpu).into_iter().map(Kernel::Matvec));
            list.extend([Kernel::MatvecResidual, Kernel::FusedQkv, Kernel::FusedGateUp, Kernel::FusedPlain]);
        }
    }
    if sg8 {
        list.extend([Kernel::Sg8Matmul, Kernel::Convolution]);
    }
    compare(gpu, &list, |on| {
        gpu.set_subgroup_reduce_allowed(on && reduce);
        gpu.set_sg8_allowed(on && sg8);
    })
    .await
}

/// Runs each kernel with `mode(true)` (the path under test) and with `mode(false)` (the path it
/// must agree with) and measures how far apart they are.
async fn compare(gpu: &Gpu, list: &[Kernel], mode: impl Fn(bool)) -> Result<Vec<Probe>> {
    // On real GPUs the probes keep wgpu's runtime checks: a kernel told a wider subgroup than it
    // runs indexes its per-subgroup slots past their end, which a GPU may fault on (losing the
    // device) where a CPU adapter reads on.
    let trusted = gpu.trusted_shaders();
    if gpu.summary.device_type != "Cpu" {
        gpu.set_trusted_shaders(false);
    }
    let probes = async {
        let mut probes = Vec::with_capacity(list.len());
        for &kernel in list {
            mode(true);
            let with = run(gpu, kernel).await?;
            mode(false);
            let other = run(gpu, kernel).await?;
            probes.push(Probe { kernel: kernel.name(), diff: difference(&with, &other) });
        }
        Ok(probes)
    }
    .await;
    gpu.set_trusted_shaders(trusted);
    probes
}

/// max |a − b| / max |b|; infinite where either holds a NaN or an infinity or the lengths differ.
fn difference(a: &[f32], b: &[f32]) -> f32 {
    if a.len() != b.len() || a.iter().chain(b).any(|v| !v.is_finite()) {
        return f32::INFINITY;
    }
    let scale = b.iter().fold(1e-30f32, |m, v| m.max(v.abs()));
    a.iter().zip(b).fold(0.0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

/// Runs `kernel` once on fixed inputs and reads back everything it writes.
async fn run(gpu: &Gpu, kernel: Kernel) -> Result<Vec<f32>> {
    // Inputs seeded by the probe's name: the same on both paths, different between probes.
    let seed = kernel.name().bytes().fold(0x5eedu64, |h, b| h.wrapping_mul(0x100000001b3) ^ b as u64);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let input = |rng: &mut ChaCha8Rng, label: &str, n: usize| Tensor::from_f32(gpu, label, &[n], &uniform(rng, n));
    // Not counted among the device's weight formats (those decide which formats are probed).
    let weight = |rng: &mut ChaCha8Rng, quant: Quant, n: usize, k: usize| -> Result<std::sync::Arc<Weight>> {
        Weight::upload_probe(gpu, &QuantBlob::quantize(quant, n, k, &uniform(rng, n * k))?)
    };
    let main = main_format(gpu);
    let mut outs: Vec<Tensor> = Vec::new();
    let mut rec = Recorder::new(gpu);
    match kernel {
        Kernel::RmsNorm | Kernel::LayerNorm => {
            let d = if matches!(kernel, Kernel::RmsNorm) { HIDDEN } else { 1024 };
            let (x, g, b, y) = (input(&mut rng, "x", 3 * d), input(&mut rng, "g", d), input(&mut rng, "b", d), Tensor::zeros(gpu, "y", &[3 * d]));
            match kernel {
                Kernel::RmsNorm => kernels::rmsnorm(&mut rec, &x.buf, 0, 3, d, &g.buf, 1e-6, &y.buf, 0),
                _ => kernels::layernorm(&mut rec, &x.buf, 0, 3, d, &g.buf, &b.buf, 1e-6, &y.buf, 0),
            }
            outs.push(y);
        }
        Kernel::AttentionRows | Kernel::AttentionSplit => {
            let w = HEADS * HEAD_DIM;
            let (q, k, v, o) = (input(&mut rng, "q", w), input(&mut rng, "k", KEYS * w), input(&mut rng, "v", KEYS * w), Tensor::zeros(gpu, "o", &[w]));
            let s = AttnShape {
                t: 1,
                heads: HEADS,
                head_dim: HEAD_DIM,
                causal_pos0: Some(KEYS - 1),
                n_keys: KEYS,
                q_stride: w,
                kv_stride: w,
                o_stride: w,
                kv: KvFormat::F32,
            };
            let how = if matches!(kernel, Kernel::AttentionRows) { AttnKernel::Rows } else { AttnKernel::Split };
            kernels::attention_using(&mut rec, how, s, View::at(&q.buf, 0), View::at(&k.buf, 0), View::at(&v.buf, 0), View::at(&o.buf, 0));
            outs.push(o);
        }
        Kernel::GroupNorm => {
            let (side, c, groups) = (40, 64, 32);
            let x = input(&mut rng, "x", side * side * c);
            let partials = gpu.storage_buffer("partials", kernels::groupnorm_partials_bytes(side * side, groups));
            let stats = Tensor::zeros(gpu, "stats", &[2 * groups]);
            kernels::groupnorm_stats(&mut rec, Map { buf: &x.buf, h: side, w: side, c }, groups, 1e-6, &partials, &stats.buf);
            outs.push(stats);
        }
        Kernel::Grn => {
            let (rows, c) = (144, 256);
            let (y, gamma, beta) = (input(&mut rng, "y", rows * c), input(&mut rng, "gamma", c), input(&mut rng, "beta", c));
            let stats = gpu.storage_buffer("stats", kernels::grn_stats_bytes(1, c));
            kernels::grn(&mut rec, &y.buf, 1, rows, c, &gamma.buf, &beta.buf, &stats);
            outs.push(y);
        }
        Kernel::Matvec(_) | Kernel::MatvecResidual => {
            let quant = if let Kernel::Matvec(q) = kernel { q } else { main };
            let w = weight(&mut rng, quant, ROWS, HIDDEN)?;
            let (x, y) = (input(&mut rng, "x", HIDDEN), input(&mut rng, "y", ROWS));
            if matches!(kernel, Kernel::Matvec(_)) {
                kernels::linear(&mut rec, &w, None, &x.buf, 0, 1, Out { buf: &y.buf, off: 0, stride: ROWS, add: false });
            } else {
                let (g, yg, ssq) = (input(&mut rng, "g", ROWS), Tensor::zeros(gpu, "yg", &[ROWS]), Tensor::zeros(gpu, "ssq", &[ROWS / 4]));
                kernels::linear_residual(&mut rec, &w, &x.buf, 0, View::at(&y.buf, 0), NormCopy { g: &g.buf, yg: &yg.buf, ssq: &ssq.buf });
                outs.extend([yg, ssq]);
            }
            outs.push(y);
        }
        Kernel::FusedQkv | Kernel::FusedGateUp | Kernel::FusedPlain => {
            let xg = input(&mut rng, "xg", HIDDEN);
            let ssq = Tensor::from_f32(gpu, "ssq", &[HIDDEN / 4], &uniform(&mut rng, HIDDEN / 4).iter().map(|v| 1.0 + v.abs()).collect::<Vec<_>>());
            let norm = NormIn::Prescaled { xg: &xg.buf, ssq: &ssq.buf, off: 0, eps: 1e-6 };
            if matches!(kernel, Kernel::FusedQkv) {
                let hd = HEADS * HEAD_DIM;
                let w = weight(&mut rng, main, 3 * hd, HIDDEN)?;
                let table = input(&mut rng, "rope", 4 * HEAD_DIM);
                let (q, k, v) = (Tensor::zeros(gpu, "q", &[hd]), Tensor::zeros(gpu, "k", &[2 * hd]), Tensor::zeros(gpu, "v", &[2 * hd]));
                let kv = Kv { k: &k.buf, v: &v.buf, format: KvFormat::F32 };
                let f = Fused::Qkv { heads: HEADS, head_dim: HEAD_DIM, pos: 3, table: &table.buf, q: &q.buf, q_off: 0, kv, slot: 1 };
                kernels::norm_matvec(&mut rec, &w, norm, f);
                outs.extend([q, k, v]);
            } else {
                let w = weight(&mut rng, main, ROWS, HIDDEN)?;
                let y = Tensor::zeros(gpu, "y", &[ROWS]);
                let f = if matches!(kernel, Kernel::FusedGateUp) { Fused::GateUp { y: &y.buf, y_off: 0 } } else { Fused::Plain { y: &y.buf, y_off: 0 } };
                kernels::norm_matvec(&mut rec, &w, norm, f);
                outs.push(y);
            }
        }
        Kernel::Prompt(_) | Kernel::PromptSwiGlu => {
            // Past one 64-row tile and one 64-column tile, neither a multiple of them.
            let (m, n, k) = (70, 136, 512);
            let quant = if let Kernel::Prompt(q) = kernel { q } else { main };
            let w = weight(&mut rng, quant, n, k)?;
            let (x, y) = (input(&mut rng, "x", m * k), input(&mut rng, "y", m * n));
            match kernel {
                Kernel::PromptSwiGlu => {
                    let gu = Tensor::zeros(gpu, "gu", &[m * n]);
                    kernels::linear_swiglu(&mut rec, &w, &x.buf, 0, m, &gu.buf, &y.buf);
                }
                _ => kernels::linear(&mut rec, &w, None, &x.buf, 0, m, Out { buf: &y.buf, off: 0, stride: n, add: true }),
            }
            outs.push(y);
        }
        Kernel::AttentionDecode | Kernel::AttentionPrompt => {
            // Decoding over a long cache (split keys on GPUs, rows on CPU rasterisers), and a
            // 40-row prompt of 8 heads after 30 cached rows (rows on GPUs, query tiles on CPU
            // rasterisers).
            let (t, heads, pos0) = if matches!(kernel, Kernel::AttentionDecode) { (1, HEADS, KEYS - 1) } else { (40, 8, 30) };
            let (w, keys) = (heads * HEAD_DIM, pos0 + t);
            let (q, k, v, o) = (input(&mut rng, "q", t * w), input(&mut rng, "k", keys * w), input(&mut rng, "v", keys * w), Tensor::zeros(gpu, "o", &[t * w]));
            let s =
                AttnShape { t, heads, head_dim: HEAD_DIM, causal_pos0: Some(pos0), n_keys: keys, q_stride: w, kv_stride: w, o_stride: w, kv: KvFormat::F32 };
            kernels::attention(&mut rec, s, View::at(&q.buf, 0), View::at(&k.buf, 0), View::at(&v.buf, 0), View::at(&o.buf, 0));
            outs.push(o);
        }
        Kernel::Convolution => {
            let (side, cin, cout) = (12, 32, 24);
            let w = weight(&mut rng, Quant::F16, cout, 9 * cin)?;
            let (x, bias, y) = (input(&mut rng, "x", side * side * cin), input(&mut rng, "bias", cout), input(&mut rng, "y", side * side * cout));
            let (xm, ym) = (Map { buf: &x.buf, h: side, w: side, c: cin }, Map { buf: &y.buf, h: side, w: side, c: cout });
            kernels::conv2d(&mut rec, &w, 3, &bias.buf, xm, false, ym, true);
            outs.push(y);
        }
        Kernel::Sg8Matmul => {
            let (m, n, k) = (kernels::SMALL_TILE_MAX_ROWS + 8, 64, 256);
            let w = weight(&mut rng, Quant::F16, n, k)?;
            let (x, y) = (input(&mut rng, "x", m * k), Tensor::zeros(gpu, "y", &[m * n]));
            kernels::linear(&mut rec, &w, None, &x.buf, 0, m, Out { buf: &y.buf, off: 0, stride: n, add: false });
            outs.push(y);
        }
    }
    rec.finish();
    let mut all = Vec::new();
    for t in &outs {
        all.extend(gpu.read_f32(&t.buf, 0, t.len()).await?);
    }
    gpu.check_alive()?;
    Ok(all)
}

//! Every WGSL kernel against a plain CPU reference, on shapes that are not multiples of any tile.

use janusflow::gpu::kernels::{self, AttnKernel, AttnShape, Kv, KvFormat, Out, View};
use janusflow::gpu::{Gpu, Recorder, Tensor, Weight};
use janusflow::weights::quant::{Quant, QuantBlob};

fn gpu() -> Gpu {
    pollster::block_on(Gpu::new()).expect("a GPU adapter (lavapipe in CI)")
}

struct Rng(u64);
impl Rng {
    fn f(&mut self) -> f32 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.f()).collect()
    }
}

fn read(gpu: &Gpu, t: &Tensor) -> Vec<f32> {
    pollster::block_on(gpu.read_f32(&t.buf, 0, t.len())).unwrap()
}

fn assert_close(got: &[f32], want: &[f32], tol: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = want.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= tol * scale, "{what}: element {i}: got {g}, want {w} (scale {scale})");
    }
}

/// A KV cache of `slots` rows of `width` elements in `format`, zeroed.
fn cache(gpu: &Gpu, label: &str, slots: usize, width: usize, format: KvFormat) -> Tensor {
    Tensor::zeros(gpu, label, &[slots, width * format.bytes() as usize / 4])
}

/// A cache's elements as f32 (f16 pairs unpacked, low half first).
fn read_cache(gpu: &Gpu, t: &Tensor, format: KvFormat) -> Vec<f32> {
    let words = read(gpu, t);
    match format {
        KvFormat::F32 => words,
        KvFormat::F16 => words.iter().flat_map(|w| [w.to_bits() as u16, (w.to_bits() >> 16) as u16].map(|h| half::f16::from_bits(h).to_f32())).collect(),
    }
}

/// `v` stored in a cache of `format` (f16: rounded to nearest, pairs packed).
fn cache_from(gpu: &Gpu, label: &str, rows: usize, v: &[f32], format: KvFormat) -> Tensor {
    let width = v.len() / rows;
    match format {
        KvFormat::F32 => Tensor::from_f32(gpu, label, &[rows, width], v),
        KvFormat::F16 => Tensor::from_f32(gpu, label, &[rows, width / 2], bytemuck::cast_slice(&kernels::kv_f16_words(v))),
    }
}

/// What a cache of `format` holds for `v`.
fn cache_rounded(v: &[f32], format: KvFormat) -> Vec<f32> {
    match format {
        KvFormat::F32 => v.to_vec(),
        KvFormat::F16 => v.iter().map(|&e| half::f16::from_f32(e).to_f32()).collect(),
    }
}

/// [`assert_close`] for values read back from a cache of `format`: within `tol` of the f32 value,
/// and for f16 also within one f16 step (the GPU's f32 result may round the other way).
fn assert_cached(got: &[f32], want: &[f32], tol: f32, format: KvFormat, what: &str) {
    if format == KvFormat::F32 {
        return assert_close(got, want, tol, what);
    }
    let scale = want.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= tol * scale + w.abs() / 1024.0, "{what} (f16 cache): element {i}: got {g}, want {w}");
    }
}

/// Σ v² over each 4 consecutive elements (the last quad may be short): what the residual's
/// writers leave for the decode path's norms.
fn quad_squares(v: &[f32]) -> Vec<f32> {
    v.chunks(4).map(|q| q.iter().map(|e| e * e).sum()).collect()
}

fn cpu_linear(x: &[f32], w: &[f32], m: usize, n: usize, k: usize) -> Vec<f32> {
    let mut y = vec![0f32; m * n];
    for i in 0..m {
        for j in 0..n {
            let mut s = 0f64;
            for l in 0..k {
                s += x[i * k + l] as f64 * w[j * k + l] as f64;
            }
            y[i * n + j] = s as f32;
        }
    }
    y
}

#[test]
fn linear_all_formats_and_shapes() {
    let gpu = gpu();
    let mut rng = Rng(1);
    // Every kernel on any adapter: the barrier-free lane products (CPU adapters: every row count
    // without 8-lane subgroups, one to 32 rows with them), the SG8 register tile (CPU adapters
    // with 8-lane subgroups, where this one has them), and the 32-lanes-per-row matvec with
    // 64×64 / 16×64 tiles (GPUs), its rows added up by subgroup (where this adapter has them) and
    // by the workgroup tree.
    let shapes = [(false, true, true), (false, false, true), (true, false, true), (true, false, false)];
    for ((gpu_tuned, sg8, sub), quant) in shapes.into_iter().flat_map(|t| [Quant::F32, Quant::F16, Quant::Q8, Quant::Q4, Quant::Q4A].map(move |q| (t, q))) {
        gpu.set_gpu_tuned(gpu_tuned);
        gpu.set_sg8_allowed(sg8);
        gpu.set_subgroup_reduce_allowed(sub);
        // With and without wgpu's shader runtime checks (see Gpu::trusted_shaders).
        gpu.set_trusted_shaders(quant != Quant::Q8);
        let gpu_tuned = format!("{gpu_tuned} sg8 {} subgroups {:?} trusted {}", gpu.sg8(), gpu.subgroup_reduce(), gpu.trusted_shaders());
        // Large K: many matrix-tile slices, many matvec strides.
        let ks: &[usize] = if quant.is_grouped() { &[96, 160, 1056] } else { &[44, 96, 1060] };
        for &k in ks {
            // matvec (≤ 4 rows); 5–32 rows: the small tiles (one or two) on GPUs, the lane product
            // on CPU adapters (last block of 1 to 16 rows); the large tiles (one to three row tiles).
            for &(m, n) in &[(1usize, 67usize), (3, 130), (6, 67), (9, 67), (17, 67), (31, 131), (32, 131), (37, 67), (70, 131), (150, 131)] {
                let x = rng.vec(m * k);
                let wv = rng.vec(n * k);
                let bias = rng.vec(n);
                let blob = QuantBlob::quantize(quant, n, k, &wv).unwrap();
                let wd = blob.dequantize();
                // A small budget forces several row chunks.
                let w = Weight::upload_with_budget(&gpu, "w", &blob, (blob.row_bytes() * 20) as u64).unwrap();
                assert!(w.chunks.len() > 1);
                // The GPU matvec binds chunks as 16 B quads (W_VEC4): a short last quad of scales
                // would fall outside the binding (lavapipe reads it anyway; browsers clamp).
                assert!(w.chunks.iter().all(|c| c.buf.size() % 16 == 0), "{quant}: weight chunks padded to 16 B");
                let xt = Tensor::from_f32(&gpu, "x", &[m, k], &x);
                let resid = rng.vec(m * n);
                let yt = Tensor::from_f32(&gpu, "y", &[m, n], &resid);
                let bt = Tensor::from_f32(&gpu, "b", &[n], &bias);
                let mut rec = Recorder::new(&gpu);
                kernels::linear(&mut rec, &w, Some(&bt.buf), &xt.buf, 0, m, Out { buf: &yt.buf, off: 0, stride: n, add: true });
                rec.finish();
                let mut want = cpu_linear(&x, &wd, m, n, k);
                for i in 0..m * n {
                    want[i] += bias[i % n] + resid[i];
                }
                assert_close(&read(&gpu, &yt), &want, 1e-5, &format!("linear {quant} m{m} n{n} k{k} gpu-tuned {gpu_tuned}"));
                if m == 1 {
                    // The decode path's residual writer: y += x · Wᵀ, and y · g for the next norm.
                    let g = rng.vec(n);
                    let (yt, gt, ygt) = (Tensor::from_f32(&gpu, "y", &[n], &resid), Tensor::from_f32(&gpu, "g", &[n], &g), Tensor::zeros(&gpu, "yg", &[n]));
                    let ssq = Tensor::zeros(&gpu, "ssq", &[n.div_ceil(4)]);
                    let mut rec = Recorder::new(&gpu);
                    let copy = kernels::NormCopy { g: &gt.buf, yg: &ygt.buf, ssq: &ssq.buf };
                    kernels::linear_residual(&mut rec, &w, &xt.buf, 0, View::at(&yt.buf, 0), copy);
                    rec.finish();
                    let want: Vec<f32> = cpu_linear(&x, &wd, 1, n, k).iter().zip(&resid).map(|(a, b)| a + b).collect();
                    let what = format!("linear_residual {quant} n{n} k{k} gpu-tuned {gpu_tuned}");
                    let got = read(&gpu, &yt);
                    assert_close(&got, &want, 1e-5, &what);
                    let scaled: Vec<f32> = got.iter().zip(&g).map(|(a, b)| a * b).collect();
                    assert_eq!(read(&gpu, &ygt), scaled, "{what}: y · g");
                    assert_close(&read(&gpu, &ssq), &quad_squares(&got), 1e-6, &format!("{what}: Σ y² per 4 rows"));
                }
            }
        }
    }
}

/// The `fast` setting's f16 arithmetic in the GPU-shape matrix tile (devices with shader-f16):
/// within f16 rounding of the exact product, on the small, the 64×64 and the 128×128 tile, and
/// neither the f32 kernel nor (over 64 rows) the other tile's f16 kernel under another name.
#[test]
fn f16_math_products_stay_within_f16_rounding() {
    let gpu = gpu();
    if !gpu.summary.features.shader_f16 {
        eprintln!("skipped: this adapter has no shader-f16");
        return;
    }
    let mut rng = Rng(31);
    gpu.set_gpu_tuned(true);
    for quant in [Quant::F32, Quant::F16, Quant::Q4A] {
        for &(m, n, k) in &[(6usize, 67usize, 96usize), (37, 131, 1056), (70, 68, 160), (130, 131, 1056)] {
            let (x, wv) = (rng.vec(m * k), rng.vec(n * k));
            let blob = QuantBlob::quantize(quant, n, k, &wv).unwrap();
            let w = Weight::upload_with_budget(&gpu, "w", &blob, (blob.row_bytes() * 40) as u64).unwrap();
            let xt = Tensor::from_f32(&gpu, "x", &[m, k], &x);
            let want = cpu_linear(&x, &blob.dequantize(), m, n, k);
            let mut f16_by_tile = Vec::new();
            for tile128 in [false, true] {
                gpu.set_tile128(tile128);
                let mut got = Vec::new();
                for f16 in [false, true] {
                    gpu.set_f16_math(f16);
                    let yt = Tensor::zeros(&gpu, "y", &[m, n]);
                    let mut rec = Recorder::new(&gpu);
                    kernels::linear(&mut rec, &w, None, &xt.buf, 0, m, Out { buf: &yt.buf, off: 0, stride: n, add: false });
                    rec.finish();
                    got.push(read(&gpu, &yt));
                }
                gpu.set_f16_math(false);
                let what = format!("f16 math {quant} m{m} n{n} k{k}, 128 tile {tile128}");
                assert_close(&got[0], &want, 1e-5, &format!("{what}: f32"));
                assert_close(&got[1], &want, 4e-3, &what);
                assert!(got[0] != got[1], "{what}: the f16 tile gave exactly the f32 result");
                f16_by_tile.push(got.pop().unwrap());
            }
            // Over 64 rows the tiles differ (16- against 8-deep f16 slices), so the 128 tile ran.
            if m > 64 {
                assert!(f16_by_tile[0] != f16_by_tile[1], "f16 math {quant} m{m}: the 128 tile gave exactly the 64 tile's f16 result");
            }
        }
    }
    gpu.set_tile128(false);
    gpu.set_gpu_tuned(false);
}

/// The 128×128 GPU tile (gemm_tile128.wgsl, where Gpu::tile128 chooses it): every format, row
/// and column counts on both sides of a tile and of its 64-row halves, K with an odd last slice,
/// bias and accumulate, and the SwiGLU and RoPE output stages.
#[test]
fn large_gpu_tile_matches_cpu() {
    let gpu = gpu();
    let mut rng = Rng(37);
    gpu.set_gpu_tuned(true);
    gpu.set_tile128(true);
    for quant in [Quant::F32, Quant::F16, Quant::Q8, Quant::Q4, Quant::Q4A] {
        let ks: &[usize] = if quant.is_grouped() { &[96, 1056] } else { &[44, 1060] };
        for &k in ks {
            for &(m, n) in &[(65usize, 67usize), (130, 131), (300, 260)] {
                let (x, wv, bias, resid) = (rng.vec(m * k), rng.vec(n * k), rng.vec(n), rng.vec(m * n));
                let blob = QuantBlob::quantize(quant, n, k, &wv).unwrap();
                let w = Weight::upload_with_budget(&gpu, "w", &blob, (blob.row_bytes() * 200) as u64).unwrap();
                let (xt, yt, bt) =
                    (Tensor::from_f32(&gpu, "x", &[m, k], &x), Tensor::from_f32(&gpu, "y", &[m, n], &resid), Tensor::from_f32(&gpu, "b", &[n], &bias));
                let mut rec = Recorder::new(&gpu);
                kernels::linear(&mut rec, &w, Some(&bt.buf), &xt.buf, 0, m, Out { buf: &yt.buf, off: 0, stride: n, add: true });
                rec.finish();
                let mut want = cpu_linear(&x, &blob.dequantize(), m, n, k);
                for i in 0..m * n {
                    want[i] += bias[i % n] + resid[i];
                }
                assert_close(&read(&gpu, &yt), &want, 1e-5, &format!("128 tile {quant} m{m} n{n} k{k}"));
            }
        }
        // Output stages: silu(gate) · up, and RoPE into two sequences' caches (a flow step).
        let (k, inter, heads, d) = (96usize, 100usize, 2usize, 16usize);
        let m = 70;
        let x = rng.vec(m * k);
        let xt = Tensor::from_f32(&gpu, "x", &[m, k], &x);
        let gu = QuantBlob::quantize(quant, 2 * inter, k, &rng.vec(2 * inter * k)).unwrap();
        let w = Weight::upload(&gpu, "gate-up", &gu).unwrap();
        let (gut, yt) = (Tensor::zeros(&gpu, "gu", &[m, 2 * inter]), Tensor::zeros(&gpu, "y", &[m, inter]));
        let mut rec = Recorder::new(&gpu);
        kernels::linear_swiglu(&mut rec, &w, &xt.buf, 0, m, &gut.buf, &yt.buf);
        rec.finish();
        let p = cpu_linear(&x, &gu.dequantize(), m, 2 * inter, k);
        let want: Vec<f32> = p.chunks_exact(2).map(|p| p[0] / (1.0 + (-p[0]).exp()) * p[1]).collect();
        assert_close(&read(&gpu, &yt), &want, 1e-5, &format!("128 tile gate|up {quant}"));
        let hd = heads * d;
        let parts: Vec<QuantBlob> = (0..3).map(|_| QuantBlob::quantize(quant, hd, k, &rng.vec(hd * k)).unwrap()).collect();
        let stacked = QuantBlob::from_rows(&[&parts[0], &parts[1], &parts[2]], kernels::qkv_row_order(hd, d)).unwrap();
        let w = Weight::upload(&gpu, "qkv", &stacked).unwrap();
        let table = janusflow::model::llm::rope_table(128, d, 10000.0);
        let tt = Tensor::from_f32(&gpu, "rope", &[128, d], &table);
        let caches: Vec<(Tensor, Tensor)> = (0..2).map(|_| (Tensor::zeros(&gpu, "k", &[40, hd]), Tensor::zeros(&gpu, "v", &[40, hd]))).collect();
        let seqs = [(3usize, 2usize), (9, 4)];
        let rope: Vec<kernels::RopeSeq> = seqs
            .iter()
            .zip(&caches)
            .map(|(&(pos0, slot0), (kc, vc))| kernels::RopeSeq { kv: Kv { k: &kc.buf, v: &vc.buf, format: KvFormat::F32 }, rows: m / 2, pos0, slot0 })
            .collect();
        let (qkvt, qt) = (Tensor::zeros(&gpu, "qkv", &[m, 3 * hd]), Tensor::zeros(&gpu, "q", &[m, hd]));
        let mut rec = Recorder::new(&gpu);
        kernels::linear_rope(&mut rec, &w, &xt.buf, 0, heads, d, &tt.buf, &rope, &qkvt.buf, &qt.buf);
        assert_eq!(rec.dispatches, 1, "the 128 tile fuses RoPE");
        rec.finish();
        let y: Vec<Vec<f32>> = parts.iter().map(|p| cpu_linear(&x, &p.dequantize(), m, hd, k)).collect();
        let got_q = read(&gpu, &qt);
        for (si, &(pos0, slot0)) in seqs.iter().enumerate() {
            let (kc, vc) = (read(&gpu, &caches[si].0), read(&gpu, &caches[si].1));
            for t in 0..m / 2 {
                let r = si * (m / 2) + t;
                let cs = &table[(pos0 + t) * d..(pos0 + t + 1) * d];
                let (mut q, mut kr) = (y[0][r * hd..(r + 1) * hd].to_vec(), y[1][r * hd..(r + 1) * hd].to_vec());
                for hh in 0..heads {
                    cpu_rope(&mut q[hh * d..(hh + 1) * d], cs);
                    cpu_rope(&mut kr[hh * d..(hh + 1) * d], cs);
                }
                let what = format!("128 tile qkv rope {quant} seq {si} row {t}");
                assert_close(&got_q[r * hd..(r + 1) * hd], &q, 1e-5, &format!("{what}: q"));
                assert_close(&kc[(slot0 + t) * hd..(slot0 + t + 1) * hd], &kr, 1e-5, &format!("{what}: k"));
                assert_close(&vc[(slot0 + t) * hd..(slot0 + t + 1) * hd], &y[2][r * hd..(r + 1) * hd], 1e-5, &format!("{what}: v"));
            }
        }
    }
    gpu.set_tile128(false);
    gpu.set_gpu_tuned(false);
}

#[test]
fn linear_writes_at_offsets_without_add() {
    let gpu = gpu();
    let mut rng = Rng(2);
    let (m, n, k) = (5, 33, 64);
    let x = rng.vec((m + 2) * k);
    let wv = rng.vec(n * k);
    let blob = QuantBlob::quantize(Quant::F32, n, k, &wv).unwrap();
    let w = Weight::upload(&gpu, "w", &blob).unwrap();
    let xt = Tensor::from_f32(&gpu, "x", &[m + 2, k], &x);
    let yt = Tensor::from_f32(&gpu, "y", &[m + 1, 40], &vec![7.0; (m + 1) * 40]);
    let mut rec = Recorder::new(&gpu);
    kernels::linear(&mut rec, &w, None, &xt.buf, 2 * k, m, Out { buf: &yt.buf, off: 40, stride: 40, add: false });
    rec.finish();
    let got = read(&gpu, &yt);
    let want = cpu_linear(&x[2 * k..], &wv, m, n, k);
    for i in 0..m {
        for j in 0..40 {
            let g = got[40 + i * 40 + j];
            if j < n {
                assert!((g - want[i * n + j]).abs() < 1e-4, "({i},{j}) {g} vs {}", want[i * n + j]);
            } else {
                assert_eq!(g, 7.0);
            }
        }
    }
    assert!(got[..40].iter().all(|&v| v == 7.0));
}

#[test]
fn rmsnorm_matches() {
    let gpu = gpu();
    let mut rng = Rng(3);
    let (rows, d) = (5, 300);
    let x: Vec<f32> = rng.vec(rows * d).iter().map(|v| v * 30.0).collect();
    let w = rng.vec(d);
    let xt = Tensor::from_f32(&gpu, "x", &[rows, d], &x);
    let wt = Tensor::from_f32(&gpu, "w", &[d], &w);
    let mut want = vec![0f32; rows * d];
    for r in 0..rows {
        let ms: f64 = x[r * d..(r + 1) * d].iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / d as f64;
        let inv = 1.0 / (ms + 1e-6).sqrt();
        for i in 0..d {
            want[r * d + i] = (x[r * d + i] as f64 * inv) as f32 * w[i];
        }
    }
    // Both reduction paths (reduce.wgsl): subgroup operations where the adapter has them, and
    // the workgroup-memory tree every adapter can run.
    for sub in [true, false] {
        gpu.set_subgroup_reduce_allowed(sub);
        let yt = Tensor::zeros(&gpu, "y", &[rows, d]);
        let mut rec = Recorder::new(&gpu);
        kernels::rmsnorm(&mut rec, &xt.buf, 0, rows, d, &wt.buf, 1e-6, &yt.buf, 0);
        rec.finish();
        assert_close(&read(&gpu, &yt), &want, 1e-5, &format!("rmsnorm, subgroup reductions {:?}", gpu.subgroup_reduce()));
    }
}

fn rope_table(max_pos: usize, d: usize, theta: f64) -> Vec<f32> {
    let half = d / 2;
    let mut t = Vec::with_capacity(max_pos * half * 2);
    for pos in 0..max_pos {
        for i in 0..half {
            let inv = (1.0 / theta.powf((2 * i) as f64 / d as f64)) as f32;
            let a = (pos as f32 * inv) as f64;
            t.push(a.cos() as f32);
            t.push(a.sin() as f32);
        }
    }
    t
}

/// RoPE + scatter over many rows and heads (f32 product outputs laid out as the stacked Q|K|V
/// product writes them), against the rotate-half formula.
#[test]
fn rope_rotate_half() {
    let gpu = gpu();
    let mut rng = Rng(4);
    let (t, h, d, pos0, slot0) = (7, 3, 24, 5, 2);
    let hd = h * d;
    // Natural-order q, k, v per row, then stored in qkv_row_order as the product would.
    let nat = rng.vec(t * 3 * hd);
    let order: Vec<(usize, usize)> = kernels::qkv_row_order(hd, d).collect();
    let stored: Vec<f32> = (0..t).flat_map(|ti| order.iter().map(|&(m, r)| nat[ti * 3 * hd + m * hd + r]).collect::<Vec<_>>()).collect();
    let table = rope_table(64, d, 10000.0);
    let xt = Tensor::from_f32(&gpu, "qkv", &[t, 3 * hd], &stored);
    let tt = Tensor::from_f32(&gpu, "table", &[table.len()], &table);
    for format in [KvFormat::F32, KvFormat::F16] {
        let (qt, kt, vt) = (Tensor::zeros(&gpu, "q", &[t, hd]), cache(&gpu, "k", slot0 + t, hd, format), cache(&gpu, "v", slot0 + t, hd, format));
        let mut rec = Recorder::new(&gpu);
        kernels::rope_scatter(&mut rec, &xt.buf, 0, t, h, d, pos0, &tt.buf, &qt.buf, 0, Kv { k: &kt.buf, v: &vt.buf, format }, slot0);
        rec.finish();
        let rot = |v: &[f32], ti: usize| -> Vec<f32> {
            let mut out = v.to_vec();
            for hi in 0..h {
                for i in 0..d / 2 {
                    let (c, s) = (table[((pos0 + ti) * d / 2 + i) * 2], table[((pos0 + ti) * d / 2 + i) * 2 + 1]);
                    let b = hi * d;
                    out[b + i] = v[b + i] * c - v[b + i + d / 2] * s;
                    out[b + i + d / 2] = v[b + i + d / 2] * c + v[b + i] * s;
                }
            }
            out
        };
        let (q, k, v) = (read(&gpu, &qt), read_cache(&gpu, &kt, format), read_cache(&gpu, &vt, format));
        for ti in 0..t {
            let row = &nat[ti * 3 * hd..(ti + 1) * 3 * hd];
            let s = (slot0 + ti) * hd;
            assert_close(&q[ti * hd..(ti + 1) * hd], &rot(&row[..hd], ti), 1e-6, &format!("rope q row {ti}"));
            assert_cached(&k[s..s + hd], &rot(&row[hd..2 * hd], ti), 1e-6, format, &format!("rope k row {ti}"));
            assert_cached(&v[s..s + hd], &row[2 * hd..], 1e-6, format, &format!("v row {ti}"));
        }
        assert!(k[..slot0 * hd].iter().chain(&v[..slot0 * hd]).all(|&e| e == 0.0), "rope: slots before slot0 written ({format:?})");
    }
}

/// f16 caches (the fast setting) saturate keys and values beyond f16's range at ±65504, as
/// `kv_f16_words` does, instead of packing them into an indeterminate word.
#[test]
fn f16_caches_saturate_instead_of_overflowing() {
    let gpu = gpu();
    let mut rng = Rng(41);
    let (t, h, d) = (2, 2, 8);
    let hd = h * d;
    let nat: Vec<f32> = rng.vec(t * 3 * hd).iter().map(|v| v * 2.0e5).collect();
    let order: Vec<(usize, usize)> = kernels::qkv_row_order(hd, d).collect();
    let stored: Vec<f32> = (0..t).flat_map(|ti| order.iter().map(|&(m, r)| nat[ti * 3 * hd + m * hd + r]).collect::<Vec<_>>()).collect();
    let table = rope_table(8, d, 10000.0);
    let (xt, tt) = (Tensor::from_f32(&gpu, "qkv", &[t, 3 * hd], &stored), Tensor::from_f32(&gpu, "table", &[table.len()], &table));
    let (qt, kt, vt) = (Tensor::zeros(&gpu, "q", &[t, hd]), cache(&gpu, "k", t, hd, KvFormat::F16), cache(&gpu, "v", t, hd, KvFormat::F16));
    let mut rec = Recorder::new(&gpu);
    kernels::rope_scatter(&mut rec, &xt.buf, 0, t, h, d, 0, &tt.buf, &qt.buf, 0, Kv { k: &kt.buf, v: &vt.buf, format: KvFormat::F16 }, 0);
    rec.finish();
    let v = read_cache(&gpu, &vt, KvFormat::F16);
    let k = read_cache(&gpu, &kt, KvFormat::F16);
    assert!(k.iter().chain(&v).all(|e| e.is_finite() && e.abs() <= 65504.0), "{k:?} {v:?}");
    // Values are stored as they came (V is not rotated): beyond the range, exactly ±65504.
    for ti in 0..t {
        let want = &nat[ti * 3 * hd + 2 * hd..(ti + 1) * 3 * hd];
        let got = &v[ti * hd..(ti + 1) * hd];
        assert!(want.iter().any(|x| x.abs() > 65504.0));
        for (g, w) in got.iter().zip(want) {
            assert_eq!(*g, half::f16::from_f32(w.clamp(-65504.0, 65504.0)).to_f32(), "v {w}");
        }
    }
}

fn cpu_attention(q: &[f32], k: &[f32], v: &[f32], t: usize, h: usize, d: usize, keys_for: impl Fn(usize) -> usize) -> Vec<f32> {
    let mut o = vec![0f32; t * h * d];
    for ti in 0..t {
        for hi in 0..h {
            let nk = keys_for(ti);
            let s: Vec<f64> = (0..nk)
                .map(|j| (0..d).map(|e| q[ti * h * d + hi * d + e] as f64 * k[j * h * d + hi * d + e] as f64).sum::<f64>() / (d as f64).sqrt())
                .collect();
            let mx = s.iter().cloned().fold(f64::MIN, f64::max);
            let p: Vec<f64> = s.iter().map(|x| (x - mx).exp()).collect();
            let z: f64 = p.iter().sum();
            for e in 0..d {
                o[ti * h * d + hi * d + e] = ((0..nk).map(|j| p[j] * v[j * h * d + hi * d + e] as f64).sum::<f64>() / z) as f32;
            }
        }
    }
    o
}

#[test]
fn attention_causal_with_cache_and_bidirectional() {
    let gpu = gpu();
    let mut rng = Rng(5);
    // Every kernel on every shape (rows past a 16-row tile, head dims of each tile size, 20 padded
    // to a slice, keys past a 16/32-key tile, a cache before the prompt), then the kernel each
    // shape set picks. In (3, 2, 32, 126) row 0 has an empty 64-key chunk when split; 2202 keys
    // need more than the 32 chunks a split may use, so its chunks grow to 128 keys.
    let shapes = [
        (9usize, 2usize, 40usize, 0usize),
        (3, 3, 128, 70),
        (70, 1, 64, 5),
        (1, 2, 16, 150),
        (2, 2, 64, 400),
        (3, 2, 32, 126),
        (33, 2, 20, 3),
        (17, 1, 512, 30),
        (40, 2, 128, 0),
        (2, 1, 128, 2200),
    ];
    let kernels = [Some(AttnKernel::Rows), Some(AttnKernel::Split), Some(AttnKernel::Tiled), None];
    for (i, (gpu_tuned, &(t, h, d, pos0))) in [false, true].into_iter().flat_map(|g| shapes.iter().map(move |s| (g, s))).enumerate() {
        gpu.set_gpu_tuned(gpu_tuned);
        // Shapes alternate between the two reduction paths (reduce.wgsl) of the row kernels, the
        // other way round on the second shape set, so each shape runs both.
        gpu.set_subgroup_reduce_allowed((i + i / shapes.len()) % 2 == 0);
        // Natively shaders run without wgpu's runtime checks; every third shape with them (the
        // browser's path).
        gpu.set_trusted_shaders(i % 3 != 0);
        let keys = pos0 + t;
        let q: Vec<f32> = rng.vec(t * h * d).iter().map(|v| v * 2.0).collect();
        let k: Vec<f32> = rng.vec(keys * h * d).iter().map(|v| v * 2.0).collect();
        let v = rng.vec(keys * h * d);
        let qt = Tensor::from_f32(&gpu, "q", &[t, h * d], &q);
        // Keys and values in an f16 cache too (the `fast` setting), on the first shape set, where
        // every kernel runs: the same attention over the f16-rounded keys and values.
        let formats: &[KvFormat] = if gpu_tuned { &[KvFormat::F32] } else { &[KvFormat::F32, KvFormat::F16] };
        for (&format, causal) in formats.iter().flat_map(|f| [true, false].map(move |c| (f, c))) {
            let (kt, vt) = (cache_from(&gpu, "k", keys, &k, format), cache_from(&gpu, "v", keys, &v, format));
            let (kr, vr) = (cache_rounded(&k, format), cache_rounded(&v, format));
            let s = AttnShape {
                t,
                heads: h,
                head_dim: d,
                causal_pos0: causal.then_some(pos0),
                n_keys: keys,
                q_stride: h * d,
                kv_stride: h * d,
                o_stride: h * d,
                kv: format,
            };
            let want = if causal { cpu_attention(&q, &kr, &vr, t, h, d, |ti| pos0 + ti + 1) } else { cpu_attention(&q, &kr, &vr, t, h, d, |_| keys) };
            // The kernels only differ by shape set in the chosen one; run each fixed kernel once.
            for kernel in kernels.iter().filter(|k| !gpu_tuned || k.is_none()) {
                let ot = Tensor::zeros(&gpu, "o", &[t, h * d]);
                let mut rec = Recorder::new(&gpu);
                let (qv, kv, vv, ov) = (View::at(&qt.buf, 0), View::at(&kt.buf, 0), View::at(&vt.buf, 0), View::at(&ot.buf, 0));
                match kernel {
                    Some(kn) => kernels::attention_using(&mut rec, *kn, s, qv, kv, vv, ov),
                    None => kernels::attention(&mut rec, s, qv, kv, vv, ov),
                }
                rec.finish();
                let what = format!(
                    "attention t{t} h{h} d{d} pos0 {pos0} causal {causal} {format:?} gpu-tuned {gpu_tuned} kernel {kernel:?} subgroups {:?}",
                    gpu.subgroup_reduce()
                );
                assert_close(&read(&gpu, &ot), &want, 1e-5, &what);
            }
        }
    }
}

#[test]
fn swiglu_pairs_and_add() {
    let gpu = gpu();
    let mut rng = Rng(6);
    let n = 1000;
    let (a, b) = (rng.vec(n), rng.vec(n));
    let ab: Vec<f32> = a.iter().zip(&b).flat_map(|(&g, &u)| [g, u]).collect();
    let (abt, at, yt) = (Tensor::from_f32(&gpu, "ab", &[2 * n], &ab), Tensor::from_f32(&gpu, "a", &[n], &a), Tensor::zeros(&gpu, "y", &[n]));
    let mut rec = Recorder::new(&gpu);
    kernels::swiglu_pairs(&mut rec, &abt.buf, &yt.buf, n);
    kernels::add(&mut rec, &at.buf, 0, &yt.buf, 0, n);
    rec.finish();
    let want: Vec<f32> = a.iter().zip(&b).map(|(&g, &u)| g / (1.0 + (-g).exp()) * u + g).collect();
    assert_close(&read(&gpu, &yt), &want, 1e-6, "swiglu pairs + add");
}

/// Whether a product of `rows` activation rows takes a kernel whose output stage gets whole column
/// quads (the lane kernels, the GPU tile), so that RoPE and SwiGLU are fused into it.
fn hands_over_quads(gpu: &Gpu, rows: usize) -> bool {
    if gpu.gpu_tuned() {
        rows > kernels::MATVEC_MAX_ROWS
    } else {
        !(gpu.sg8() && rows > kernels::SMALL_TILE_MAX_ROWS)
    }
}

#[test]
fn gate_up_products_gate_in_their_output_stage() {
    // linear_swiglu: the lane kernels and the GPU tile gate (gate, up) column quads in their
    // output stage (one dispatch per weight chunk); the SG8 tile (CPU adapters with 8-lane
    // subgroups, prompts over 32 rows) and the GPU matvec go through a gating pass.
    let gpu = gpu();
    let mut rng = Rng(21);
    let (k, inter) = (96usize, 68usize);
    for ((tuned, sg8), quant) in
        [(false, true), (false, false), (true, false)].into_iter().flat_map(|t| [Quant::F32, Quant::Q8, Quant::Q4].map(move |q| (t, q)))
    {
        gpu.set_gpu_tuned(tuned);
        gpu.set_sg8_allowed(sg8);
        let blob = QuantBlob::quantize(quant, 2 * inter, k, &rng.vec(2 * inter * k)).unwrap();
        let wd = blob.dequantize();
        let w = Weight::upload_with_budget(&gpu, "gate-up", &blob, (blob.row_bytes() * 40) as u64).unwrap();
        assert!(w.chunks.len() > 1);
        for m in [1usize, 3, 9, 37, 70] {
            let x = rng.vec(m * k);
            let (xt, gut, yt) = (Tensor::from_f32(&gpu, "x", &[m, k], &x), Tensor::zeros(&gpu, "gu", &[m, 2 * inter]), Tensor::zeros(&gpu, "y", &[m, inter]));
            let mut rec = Recorder::new(&gpu);
            kernels::linear_swiglu(&mut rec, &w, &xt.buf, 0, m, &gut.buf, &yt.buf);
            let dispatches = rec.dispatches;
            rec.finish();
            let gu = cpu_linear(&x, &wd, m, 2 * inter, k);
            let want: Vec<f32> = gu.chunks_exact(2).map(|p| p[0] / (1.0 + (-p[0]).exp()) * p[1]).collect();
            let what = format!("gate|up {quant} m{m} gpu-tuned {tuned} sg8 {}", gpu.sg8());
            assert_close(&read(&gpu, &yt), &want, 1e-5, &what);
            assert_eq!(dispatches, w.chunks.len() + usize::from(!hands_over_quads(&gpu, m)), "{what}: dispatches");
        }
    }
}

#[test]
fn qkv_products_rotate_and_fill_the_caches_in_their_output_stage() {
    // linear_rope: as linear_swiglu, fused where the kernel hands over column quads, for one
    // sequence and for two with their own caches, positions and slots (a flow step's guidance
    // rows); three sequences always take the rope_scatter pass.
    let gpu = gpu();
    let mut rng = Rng(23);
    let (heads, d, k, slots) = (3usize, 8usize, 96usize, 48usize);
    let hd = heads * d;
    let table = janusflow::model::llm::rope_table(64, d, 10000.0);
    let tt = Tensor::from_f32(&gpu, "rope", &[64, d], &table);
    let layouts: [&[(usize, usize, usize)]; 3] = [&[(0, 2, 3)], &[(0, 5, 5), (1, 5, 1)], &[(0, 1, 2), (1, 3, 7), (2, 0, 9)]];
    for ((tuned, sg8), quant) in
        [(false, true), (false, false), (true, false)].into_iter().flat_map(|t| [Quant::F32, Quant::Q8, Quant::Q4].map(move |q| (t, q)))
    {
        gpu.set_gpu_tuned(tuned);
        gpu.set_sg8_allowed(sg8);
        let parts: Vec<QuantBlob> = (0..3).map(|_| QuantBlob::quantize(quant, hd, k, &rng.vec(hd * k)).unwrap()).collect();
        let stacked = QuantBlob::from_rows(&[&parts[0], &parts[1], &parts[2]], kernels::qkv_row_order(hd, d)).unwrap();
        let w = Weight::upload_with_budget(&gpu, "qkv", &stacked, (stacked.row_bytes() * 20) as u64).unwrap();
        assert!(w.chunks.len() > 1);
        // Caches in f32 and in f16 (the `fast` setting), alternately.
        let cases = layouts.iter().flat_map(|l| [1usize, 2, 19, 37].map(move |m| (*l, m)));
        for (i, (layout, per_seq)) in cases.enumerate() {
            let format = if i % 2 == 0 { KvFormat::F32 } else { KvFormat::F16 };
            let rows = layout.len() * per_seq;
            let x = rng.vec(rows * k);
            let xt = Tensor::from_f32(&gpu, "x", &[rows, k], &x);
            let caches: Vec<(Tensor, Tensor)> = layout.iter().map(|_| (cache(&gpu, "k", slots, hd, format), cache(&gpu, "v", slots, hd, format))).collect();
            let (qkvt, qt) = (Tensor::zeros(&gpu, "qkv", &[rows, 3 * hd]), Tensor::zeros(&gpu, "q", &[rows, hd]));
            let seqs: Vec<kernels::RopeSeq> = layout
                .iter()
                .zip(&caches)
                .map(|(&(_, pos0, slot0), (kc, vc))| kernels::RopeSeq { kv: Kv { k: &kc.buf, v: &vc.buf, format }, rows: per_seq, pos0, slot0 })
                .collect();
            let mut rec = Recorder::new(&gpu);
            kernels::linear_rope(&mut rec, &w, &xt.buf, 0, heads, d, &tt.buf, &seqs, &qkvt.buf, &qt.buf);
            let dispatches = rec.dispatches;
            rec.finish();
            let what = format!("qkv rope {quant} {} seqs × {per_seq} {format:?} gpu-tuned {tuned} sg8 {}", layout.len(), gpu.sg8());
            let y: Vec<Vec<f32>> = parts.iter().map(|p| cpu_linear(&x, &p.dequantize(), rows, hd, k)).collect();
            let mut want_q = y[0].clone();
            let (got_q, mut got_k, mut got_v) = (read(&gpu, &qt), Vec::new(), Vec::new());
            let (mut want_k, mut want_v) = (Vec::new(), Vec::new());
            for (si, &(_, pos0, slot0)) in layout.iter().enumerate() {
                let (kc, vc) = (read_cache(&gpu, &caches[si].0, format), read_cache(&gpu, &caches[si].1, format));
                for t in 0..per_seq {
                    let r = si * per_seq + t;
                    let cs = &table[(pos0 + t) * d..(pos0 + t + 1) * d];
                    let mut kr = y[1][r * hd..(r + 1) * hd].to_vec();
                    for hh in 0..heads {
                        cpu_rope(&mut want_q[r * hd + hh * d..r * hd + (hh + 1) * d], cs);
                        cpu_rope(&mut kr[hh * d..(hh + 1) * d], cs);
                    }
                    want_k.extend(kr);
                    want_v.extend_from_slice(&y[2][r * hd..(r + 1) * hd]);
                    got_k.extend_from_slice(&kc[(slot0 + t) * hd..(slot0 + t + 1) * hd]);
                    got_v.extend_from_slice(&vc[(slot0 + t) * hd..(slot0 + t + 1) * hd]);
                }
            }
            assert_close(&got_q, &want_q, 1e-5, &format!("{what}: q"));
            assert_cached(&got_k, &want_k, 1e-5, format, &format!("{what}: k"));
            assert_cached(&got_v, &want_v, 1e-5, format, &format!("{what}: v"));
            let fused = hands_over_quads(&gpu, rows) && layout.len() <= 2;
            let want = w.chunks.len() + if fused { 0 } else { layout.len() };
            assert_eq!(dispatches, want, "{what}: dispatches");
        }
    }
}

#[test]
fn prepared_work_runs_only_when_submitted_and_after_what_came_before() {
    // How decoding overlaps host and GPU: a step is recorded and encoded while the one before
    // runs, then submitted once its token is known, or dropped unsubmitted when the reply ends.
    let gpu = gpu();
    let n = 512;
    let ones = Tensor::from_f32(&gpu, "ones", &[n], &vec![1.0; n]);
    let y = Tensor::zeros(&gpu, "y", &[n]);
    let binds = janusflow::gpu::BindCache::default();
    let record = |gpu| {
        let mut rec = Recorder::ahead(gpu, &binds);
        kernels::add(&mut rec, &ones.buf, 0, &y.buf, 0, n);
        rec
    };
    // Dropped: never runs.
    let dropped = record(&gpu).prepare();
    assert_eq!(dropped.dispatches(), 1);
    drop(dropped);
    assert!(read(&gpu, &y).iter().all(|&v| v == 0.0), "dropped prepared work ran");
    // Prepared first, submitted after other work: runs after it, with its own parameters.
    let ahead = record(&gpu).prepare();
    let mut rec = Recorder::new(&gpu);
    kernels::silu(&mut rec, &ones.buf, 0, &y.buf, 0, n);
    rec.finish();
    ahead.submit();
    let want = 1.0 / (1.0 + (-1.0f32).exp()) + 1.0;
    assert_close(&read(&gpu, &y), &vec![want; n], 1e-6, "prepared add after silu");
    // More dispatches than one parameter arena holds: still one submit, every block in place
    // (each add at its own offset, so a block written to the wrong arena shows).
    let y = Tensor::zeros(&gpu, "y", &[n]);
    let adds = 5000;
    let mut rec = Recorder::ahead(&gpu, &binds);
    for i in 0..adds {
        kernels::add(&mut rec, &ones.buf, 0, &y.buf, i % n, 1);
    }
    let many = rec.prepare();
    assert_eq!(many.dispatches(), adds);
    many.submit();
    let want: Vec<f32> = (0..n).map(|i| (adds / n + usize::from(i < adds % n)) as f32).collect();
    assert_close(&read(&gpu, &y), &want, 0.0, "5000 prepared adds");
}

fn cpu_rmsnorm(x: &[f32], g: &[f32], eps: f32) -> Vec<f32> {
    let ms = x.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / x.len() as f64;
    let inv = 1.0 / (ms + eps as f64).sqrt();
    x.iter().zip(g).map(|(v, g)| (*v as f64 * inv) as f32 * g).collect()
}

/// Rotate-half RoPE of one head vector at angle table row `cs` ([d/2] (cos, sin) pairs).
fn cpu_rope(v: &mut [f32], cs: &[f32]) {
    let half = v.len() / 2;
    for i in 0..half {
        let (c, s) = (cs[2 * i], cs[2 * i + 1]);
        let (a, b) = (v[i], v[i + half]);
        v[i] = a * c - b * s;
        v[i + half] = b * c + a * s;
    }
}

/// The fused decode products (norm prologue; Q|K|V with RoPE into q and the cache, gate|up with
/// SwiGLU, plain) and the stacked-QKV RoPE scatter of the batched path, against CPU references,
/// in every format and with weights split into several chunks.
#[test]
fn fused_decode_products_and_rope_scatter() {
    let gpu = gpu();
    let mut rng = Rng(11);
    let (heads, d, k, inter, slots, eps) = (3usize, 8usize, 96usize, 40usize, 5usize, 1e-5f32);
    let hd = heads * d;
    let pos = 7;
    let table = janusflow::model::llm::rope_table(16, d, 10000.0);
    let tt = Tensor::from_f32(&gpu, "rope", &[16, d], &table);
    let cs = &table[pos * d..(pos + 1) * d];
    // Both kernel shape sets (GPU shapes read q4 a whole group per lane; their rows added up by
    // subgroup where this adapter has them, and by the workgroup tree).
    let shapes = [(false, true), (true, true), (true, false)];
    for ((tuned, sub), quant) in shapes.into_iter().flat_map(|t| [Quant::F32, Quant::F16, Quant::Q8, Quant::Q4, Quant::Q4A].map(move |q| (t, q))) {
        gpu.set_gpu_tuned(tuned);
        gpu.set_subgroup_reduce_allowed(sub);
        let x = rng.vec(2 * k);
        let g: Vec<f32> = rng.vec(k).iter().map(|v| 1.0 + v * 0.5).collect();
        let h = cpu_rmsnorm(&x[k..], &g, eps); // row 1 of x

        // Q|K|V: three [hd, k] matrices stacked, chunks of whole heads.
        let parts: Vec<QuantBlob> = (0..3).map(|_| QuantBlob::quantize(quant, hd, k, &rng.vec(hd * k)).unwrap()).collect();
        let stacked = QuantBlob::from_rows(&[&parts[0], &parts[1], &parts[2]], kernels::qkv_row_order(hd, d)).unwrap();
        let w = Weight::upload_with_budget(&gpu, "qkv", &stacked, (stacked.row_bytes() * 6) as u64).unwrap();
        assert!(w.chunks.len() > 1);
        let y: Vec<f32> = parts.iter().flat_map(|p| cpu_linear(&h, &p.dequantize(), 1, hd, k)).collect();
        let (mut q, mut kk, v) = (y[..hd].to_vec(), y[hd..2 * hd].to_vec(), y[2 * hd..].to_vec());
        for hh in 0..heads {
            cpu_rope(&mut q[hh * d..(hh + 1) * d], cs);
            cpu_rope(&mut kk[hh * d..(hh + 1) * d], cs);
        }
        let ht = Tensor::from_f32(&gpu, "h", &[k], &h);
        let slot = 3;
        // x · g written beside x by the residual's writer (PRESCALED, the decode path), or x
        // already normalised (NORMED).
        let xg: Vec<f32> = x.iter().enumerate().map(|(i, v)| v * g[i % k]).collect();
        let xgt = Tensor::from_f32(&gpu, "xg", &[2, k], &xg);
        let ssq = Tensor::from_f32(&gpu, "ssq", &[2, k / 4], &quad_squares(&x));
        // Prescaled into an f32 and an f16 cache (the `fast` setting), normed into f32.
        for (prescaled, format) in [(true, KvFormat::F32), (true, KvFormat::F16), (false, KvFormat::F32)] {
            let (qt, kt, vt) = (Tensor::zeros(&gpu, "q", &[hd]), cache(&gpu, "k", slots, hd, format), cache(&gpu, "v", slots, hd, format));
            let kv = Kv { k: &kt.buf, v: &vt.buf, format };
            let f = kernels::Fused::Qkv { heads, head_dim: d, pos, table: &tt.buf, q: &qt.buf, q_off: 0, kv, slot };
            assert!(kernels::whole_quads(&w));
            let mut rec = Recorder::new(&gpu);
            let input =
                if prescaled { kernels::NormIn::Prescaled { xg: &xgt.buf, ssq: &ssq.buf, off: k, eps } } else { kernels::NormIn::Normed(View::at(&ht.buf, 0)) };
            kernels::norm_matvec(&mut rec, &w, input, f);
            rec.finish();
            let what = format!("fused qkv {quant} prescaled {prescaled} {format:?} gpu-tuned {tuned} subgroups {:?}", gpu.subgroup_reduce());
            assert_close(&read(&gpu, &qt), &q, 1e-5, &what);
            let (kc, vc) = (read_cache(&gpu, &kt, format), read_cache(&gpu, &vt, format));
            assert_cached(&kc[slot * hd..(slot + 1) * hd], &kk, 1e-5, format, &what);
            assert_cached(&vc[slot * hd..(slot + 1) * hd], &v, 1e-5, format, &what);
            assert!(kc[..slot * hd].iter().chain(&kc[(slot + 1) * hd..]).all(|&e| e == 0.0), "{what}: other slots written");
        }

        // The batched path: the same stacked product for 2 rows, then RoPE + scatter.
        let xs = Tensor::from_f32(&gpu, "hs", &[2, k], &[cpu_rmsnorm(&x[..k], &g, eps), h.clone()].concat());
        let qkv = Tensor::zeros(&gpu, "qkv", &[2, 3 * hd]);
        let (q2, k2, v2) = (Tensor::zeros(&gpu, "q2", &[2, hd]), Tensor::zeros(&gpu, "k2", &[slots, hd]), Tensor::zeros(&gpu, "v2", &[slots, hd]));
        let mut rec = Recorder::new(&gpu);
        kernels::linear(&mut rec, &w, None, &xs.buf, 0, 2, Out { buf: &qkv.buf, off: 0, stride: 3 * hd, add: false });
        let kv = Kv { k: &k2.buf, v: &v2.buf, format: KvFormat::F32 };
        kernels::rope_scatter(&mut rec, &qkv.buf, 0, 2, heads, d, pos - 1, &tt.buf, &q2.buf, 0, kv, slot - 1);
        rec.finish();
        let what = format!("rope scatter {quant}");
        assert_close(&read(&gpu, &q2)[hd..], &q, 1e-5, &what);
        assert_close(&read(&gpu, &k2)[slot * hd..(slot + 1) * hd], &kk, 1e-5, &what);
        assert_close(&read(&gpu, &v2)[slot * hd..(slot + 1) * hd], &v, 1e-5, &what);

        // gate|up interleaved → silu(gate) · up, and the plain product.
        let (gw, uw) = (QuantBlob::quantize(quant, inter, k, &rng.vec(inter * k)).unwrap(), QuantBlob::quantize(quant, inter, k, &rng.vec(inter * k)).unwrap());
        let gu = QuantBlob::from_rows(&[&gw, &uw], (0..2 * inter).map(|r| (r % 2, r / 2))).unwrap();
        let w = Weight::upload_with_budget(&gpu, "gu", &gu, (gu.row_bytes() * 14) as u64).unwrap();
        assert!(w.chunks.len() > 1);
        let (a, b) = (cpu_linear(&h, &gw.dequantize(), 1, inter, k), cpu_linear(&h, &uw.dequantize(), 1, inter, k));
        let want: Vec<f32> = a.iter().zip(&b).map(|(&g, &u)| g / (1.0 + (-g).exp()) * u).collect();
        let yt = Tensor::zeros(&gpu, "y", &[inter]);
        let pt = Tensor::zeros(&gpu, "p", &[2 * inter]);
        let mut rec = Recorder::new(&gpu);
        let prescaled = kernels::NormIn::Prescaled { xg: &xgt.buf, ssq: &ssq.buf, off: k, eps };
        kernels::norm_matvec(&mut rec, &w, prescaled, kernels::Fused::GateUp { y: &yt.buf, y_off: 0 });
        kernels::norm_matvec(&mut rec, &w, kernels::NormIn::Normed(View::at(&ht.buf, 0)), kernels::Fused::Plain { y: &pt.buf, y_off: 0 });
        rec.finish();
        assert_close(&read(&gpu, &yt), &want, 1e-5, &format!("fused gate|up {quant}"));
        assert_close(&read(&gpu, &pt), &cpu_linear(&h, &gu.dequantize(), 1, 2 * inter, k), 1e-5, &format!("fused plain {quant}"));
    }
}

/// The GPU-shape matrix–vector kernels on long rows, with their activations staged in workgroup
/// memory (Gpu::stage_x: several chunks, the last one short) and read by every row (several passes,
/// loaded one at a time or in batches, the last batch partial), through every product that reads them (linear with
/// bias and accumulation, the residual writer with its norm copy, the fused decode products),
/// every format, rows added up by subgroup and by the workgroup tree.
#[test]
fn long_row_matvecs_staged_or_not_match_the_cpu() {
    let gpu = gpu();
    let mut rng = Rng(31);
    // Two whole 2048-activation chunks and a short third one.
    let (k, n, heads, d, pos, slot, eps) = (2 * 2048 + 96, 40usize, 3usize, 8usize, 5usize, 2usize, 1e-5f32);
    let hd = heads * d;
    let table = janusflow::model::llm::rope_table(8, d, 10000.0);
    let tt = Tensor::from_f32(&gpu, "rope", &[8, d], &table);
    gpu.set_gpu_tuned(true);
    // (staged, subgroup reductions, passes of loads per batch)
    let cases = [(true, true, 1), (true, false, 4), (false, true, 1), (false, true, 3)];
    for ((stage, sub, loads), quant) in cases.into_iter().flat_map(|c| [Quant::F32, Quant::F16, Quant::Q8, Quant::Q4, Quant::Q4A].map(move |q| (c, q))) {
        gpu.set_stage_x(stage);
        gpu.set_subgroup_reduce_allowed(sub);
        gpu.set_matvec_loads(loads);
        let what = format!("staged {stage} loads {loads} {quant} subgroups {:?}", gpu.subgroup_reduce());
        let blob = QuantBlob::quantize(quant, n, k, &rng.vec(n * k)).unwrap();
        let wd = blob.dequantize();
        let w = Weight::upload_with_budget(&gpu, "w", &blob, (blob.row_bytes() * 24) as u64).unwrap();
        assert!(w.chunks.len() > 1);
        // linear: 1 and 3 rows, bias, accumulated into y.
        for m in [1usize, 3] {
            let (x, bias, resid) = (rng.vec(m * k), rng.vec(n), rng.vec(m * n));
            let (xt, bt, yt) =
                (Tensor::from_f32(&gpu, "x", &[m, k], &x), Tensor::from_f32(&gpu, "b", &[n], &bias), Tensor::from_f32(&gpu, "y", &[m, n], &resid));
            let mut rec = Recorder::new(&gpu);
            kernels::linear(&mut rec, &w, Some(&bt.buf), &xt.buf, 0, m, Out { buf: &yt.buf, off: 0, stride: n, add: true });
            rec.finish();
            let want: Vec<f32> = cpu_linear(&x, &wd, m, n, k).iter().enumerate().map(|(i, v)| v + bias[i % n] + resid[i]).collect();
            assert_close(&read(&gpu, &yt), &want, 1e-5, &format!("{what}: linear m{m}"));
        }
        // The residual writer with the next norm's copy.
        let (x, resid, g) = (rng.vec(k), rng.vec(n), rng.vec(n));
        let (xt, yt, gt, ygt, ssq) = (
            Tensor::from_f32(&gpu, "x", &[k], &x),
            Tensor::from_f32(&gpu, "y", &[n], &resid),
            Tensor::from_f32(&gpu, "g", &[n], &g),
            Tensor::zeros(&gpu, "yg", &[n]),
            Tensor::zeros(&gpu, "ssq", &[n / 4]),
        );
        let mut rec = Recorder::new(&gpu);
        kernels::linear_residual(&mut rec, &w, &xt.buf, 0, View::at(&yt.buf, 0), kernels::NormCopy { g: &gt.buf, yg: &ygt.buf, ssq: &ssq.buf });
        rec.finish();
        let want: Vec<f32> = cpu_linear(&x, &wd, 1, n, k).iter().zip(&resid).map(|(a, b)| a + b).collect();
        let got = read(&gpu, &yt);
        assert_close(&got, &want, 1e-5, &format!("{what}: linear_residual"));
        assert_close(&read(&gpu, &ssq), &quad_squares(&got), 1e-6, &format!("{what}: Σ y² per 4 rows"));

        // The fused decode products, prescaled (x · g and Σ x² per 4) and normed.
        let xr = rng.vec(k);
        let gn: Vec<f32> = rng.vec(k).iter().map(|v| 1.0 + v * 0.5).collect();
        let h = cpu_rmsnorm(&xr, &gn, eps);
        let xg: Vec<f32> = xr.iter().zip(&gn).map(|(a, b)| a * b).collect();
        let (xgt, sst, ht) =
            (Tensor::from_f32(&gpu, "xg", &[k], &xg), Tensor::from_f32(&gpu, "ssq", &[k / 4], &quad_squares(&xr)), Tensor::from_f32(&gpu, "h", &[k], &h));
        let prescaled = || kernels::NormIn::Prescaled { xg: &xgt.buf, ssq: &sst.buf, off: 0, eps };
        // gate|up (the weight's rows as interleaved pairs) and plain.
        let (yt, pt) = (Tensor::zeros(&gpu, "y", &[n / 2]), Tensor::zeros(&gpu, "p", &[n]));
        let mut rec = Recorder::new(&gpu);
        kernels::norm_matvec(&mut rec, &w, prescaled(), kernels::Fused::GateUp { y: &yt.buf, y_off: 0 });
        kernels::norm_matvec(&mut rec, &w, kernels::NormIn::Normed(View::at(&ht.buf, 0)), kernels::Fused::Plain { y: &pt.buf, y_off: 0 });
        rec.finish();
        let prod = cpu_linear(&h, &wd, 1, n, k);
        let gated: Vec<f32> = prod.chunks_exact(2).map(|p| p[0] / (1.0 + (-p[0]).exp()) * p[1]).collect();
        assert_close(&read(&gpu, &yt), &gated, 1e-5, &format!("{what}: fused gate|up"));
        assert_close(&read(&gpu, &pt), &prod, 1e-5, &format!("{what}: fused plain"));
        // Q|K|V with RoPE into q and an f16 cache.
        let parts: Vec<QuantBlob> = (0..3).map(|_| QuantBlob::quantize(quant, hd, k, &rng.vec(hd * k)).unwrap()).collect();
        let stacked = QuantBlob::from_rows(&[&parts[0], &parts[1], &parts[2]], kernels::qkv_row_order(hd, d)).unwrap();
        let wq = Weight::upload_with_budget(&gpu, "qkv", &stacked, (stacked.row_bytes() * 24) as u64).unwrap();
        let format = KvFormat::F16;
        let (qt, kt, vt) = (Tensor::zeros(&gpu, "q", &[hd]), cache(&gpu, "k", 4, hd, format), cache(&gpu, "v", 4, hd, format));
        let f = kernels::Fused::Qkv { heads, head_dim: d, pos, table: &tt.buf, q: &qt.buf, q_off: 0, kv: Kv { k: &kt.buf, v: &vt.buf, format }, slot };
        let mut rec = Recorder::new(&gpu);
        kernels::norm_matvec(&mut rec, &wq, prescaled(), f);
        rec.finish();
        let y: Vec<Vec<f32>> = parts.iter().map(|p| cpu_linear(&h, &p.dequantize(), 1, hd, k)).collect();
        let (mut q, mut kk) = (y[0].clone(), y[1].clone());
        let cs = &table[pos * d..(pos + 1) * d];
        for hh in 0..heads {
            cpu_rope(&mut q[hh * d..(hh + 1) * d], cs);
            cpu_rope(&mut kk[hh * d..(hh + 1) * d], cs);
        }
        assert_close(&read(&gpu, &qt), &q, 1e-5, &format!("{what}: fused qkv q"));
        assert_cached(&read_cache(&gpu, &kt, format)[slot * hd..(slot + 1) * hd], &kk, 1e-5, format, &format!("{what}: fused qkv k"));
        assert_cached(&read_cache(&gpu, &vt, format)[slot * hd..(slot + 1) * hd], &y[2], 1e-5, format, &format!("{what}: fused qkv v"));
    }
    gpu.set_stage_x(false);
    gpu.set_matvec_loads(1);
    gpu.set_gpu_tuned(false);
}

#[test]
fn embedding_gather_across_chunks() {
    let gpu = gpu();
    let mut rng = Rng(7);
    let (rows, k) = (75, 64);
    for quant in [Quant::F32, Quant::F16, Quant::Q8, Quant::Q4, Quant::Q4A] {
        let table = rng.vec(rows * k);
        let blob = QuantBlob::quantize(quant, rows, k, &table).unwrap();
        let deq = blob.dequantize();
        let w = Weight::upload_with_budget(&gpu, "emb", &blob, (blob.row_bytes() * 16) as u64).unwrap();
        let ids: Vec<u32> = vec![0, 74, 16, 15, 33, 33, 1];
        let idb = gpu.storage_buffer_init("ids", bytemuck::cast_slice(&ids));
        let yt = Tensor::zeros(&gpu, "y", &[ids.len(), k]);
        let mut rec = Recorder::new(&gpu);
        kernels::embedding(&mut rec, &w, &idb, 0, ids.len(), &yt.buf, 0, None);
        rec.finish();
        let want: Vec<f32> = ids.iter().flat_map(|&i| deq[i as usize * k..(i as usize + 1) * k].to_vec()).collect();
        assert_eq!(read(&gpu, &yt), want, "embedding {quant}");
        // With the first norm's copy (the decode path), at an offset.
        let g = rng.vec(k);
        let (gt, y2, yg) =
            (Tensor::from_f32(&gpu, "g", &[k], &g), Tensor::zeros(&gpu, "y2", &[ids.len() + 1, k]), Tensor::zeros(&gpu, "yg", &[ids.len() + 1, k]));
        let mut rec = Recorder::new(&gpu);
        let ssq = Tensor::zeros(&gpu, "ssq", &[ids.len() + 1, k / 4]);
        kernels::embedding(&mut rec, &w, &idb, 0, ids.len(), &y2.buf, k, Some(kernels::NormCopy { g: &gt.buf, yg: &yg.buf, ssq: &ssq.buf }));
        rec.finish();
        assert_eq!(read(&gpu, &y2)[k..], want[..], "embedding {quant} with norm copy");
        let scaled: Vec<f32> = want.iter().enumerate().map(|(i, v)| v * g[i % k]).collect();
        assert_eq!(read(&gpu, &yg)[k..], scaled[..], "embedding {quant}: y · g");
        assert_close(&read(&gpu, &ssq)[k / 4..], &quad_squares(&want), 1e-6, &format!("embedding {quant}: Σ y² per 4 elements"));
    }
}

#[test]
fn topk_matches_sort_with_ties() {
    let gpu = gpu();
    let mut rng = Rng(8);
    let n = 5000;
    let mut x = rng.vec(n);
    x[4999] = 3.0;
    x[17] = 3.0; // tie: the lower index first
    x[2100] = f32::NAN;
    let xt = Tensor::from_f32(&gpu, "x", &[n], &x);
    let scratch = gpu.storage_buffer("scratch", kernels::topk_scratch_bytes(n));
    let out = gpu.storage_buffer("out", 64 * 8);
    for k in [1usize, 5, 64] {
        let mut rec = Recorder::new(&gpu);
        kernels::topk(&mut rec, &xt.buf, 0, n, k, &scratch, &out);
        rec.finish();
        let got: Vec<u32> = bytemuck::pod_collect_to_vec(&pollster::block_on(gpu.read_bytes(&out, 0, k as u64 * 8)).unwrap());
        let mut idx: Vec<usize> = (0..n).filter(|&i| !x[i].is_nan()).collect();
        idx.sort_by(|&a, &b| x[b].partial_cmp(&x[a]).unwrap().then(a.cmp(&b)));
        for r in 0..k {
            assert_eq!(got[2 * r + 1] as usize, idx[r], "k{k} rank {r}");
            assert_eq!(f32::from_bits(got[2 * r]), x[idx[r]]);
        }
    }
}

fn silu(x: f64) -> f64 {
    x / (1.0 + (-x).exp())
}

/// CPU GroupNorm statistics of a channels-last map: per group (mean, 1/sqrt(var + eps)).
fn cpu_gn(x: &[f32], c: usize, groups: usize, eps: f64) -> Vec<(f64, f64)> {
    let cpg = c / groups;
    (0..groups)
        .map(|g| {
            let vals: Vec<f64> = x.chunks_exact(c).flat_map(|px| px[g * cpg..(g + 1) * cpg].iter().map(|&v| v as f64)).collect();
            let mean = vals.iter().sum::<f64>() / vals.len() as f64;
            let var = vals.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / vals.len() as f64;
            (mean, 1.0 / (var + eps).sqrt())
        })
        .collect()
}

/// Reference convolution over channels-last maps, weights in torch layout [cout, cin, ks, ks].
#[allow(clippy::too_many_arguments)]
fn cpu_conv(
    x: &[f32],
    h: usize,
    w: usize,
    cin: usize,
    wt: &[f32],
    bias: &[f32],
    cout: usize,
    ks: usize,
    up: bool,
    gn: Option<(&[(f64, f64)], &[f32], &[f32], usize)>,
) -> Vec<f32> {
    let (oh, ow) = if up { (2 * h, 2 * w) } else { (h, w) };
    let pad = (ks / 2) as i64;
    let val = |y: usize, xx: usize, ci: usize| -> f64 {
        let v = x[(y * w + xx) * cin + ci] as f64;
        match gn {
            Some((st, g, b, groups)) => {
                let (m, r) = st[ci / (cin / groups)];
                silu((v - m) * r * g[ci] as f64 + b[ci] as f64)
            }
            None => v,
        }
    };
    let mut out = vec![0f32; oh * ow * cout];
    for oy in 0..oh {
        for ox in 0..ow {
            for o in 0..cout {
                let mut s = bias[o] as f64;
                for dy in 0..ks {
                    for dx in 0..ks {
                        let (iy, ix) = (oy as i64 + dy as i64 - pad, ox as i64 + dx as i64 - pad);
                        if iy < 0 || ix < 0 || iy >= oh as i64 || ix >= ow as i64 {
                            continue;
                        }
                        let (sy, sx) = if up { (iy as usize / 2, ix as usize / 2) } else { (iy as usize, ix as usize) };
                        for ci in 0..cin {
                            s += wt[((o * cin + ci) * ks + dy) * ks + dx] as f64 * val(sy, sx, ci);
                        }
                    }
                }
                out[(oy * ow + ox) * cout + o] = s as f32;
            }
        }
    }
    out
}

/// Convolutions (3×3 and 1×1, after the GroupNorm+SiLU pass written in place or into another
/// map, fused ×2 upsampling, residual accumulate) against the CPU, with the binding limit lowered
/// so that maps are split into bands and the GroupNorm statistics into windows; for every kernel
/// shape: the GPU tile, and on CPU rasterisers the 8-lane subgroup kernel (where the adapter's
/// subgroups are 8 wide) and the tile used elsewhere.
#[test]
fn conv2d_and_groupnorm_match_cpu_in_bands() {
    let gpu = gpu();
    let mut rng = Rng(11);
    let groups = 4;
    let cases = [
        (40usize, 32usize, 8usize, 12usize, 3usize, false, true, false, Quant::F32),
        (20, 16, 8, 8, 3, true, false, false, Quant::F16),
        (40, 32, 8, 5, 1, false, false, true, Quant::F32),
        (9, 7, 4, 3, 3, false, true, true, Quant::F16),
        (12, 10, 4, 70, 3, false, true, false, Quant::F16),
        (10, 16, 36, 40, 3, true, true, true, Quant::F32),
        (11, 13, 32, 9, 1, false, true, false, Quant::Q8),
    ];
    let shapes = [(false, true), (false, false), (true, false)];
    for (ci, (&(gpu_tuned, sg8), &(h, w, cin, cout, ks, up, norm, add, quant))) in shapes.iter().flat_map(|s| cases.iter().map(move |c| (s, c))).enumerate() {
        gpu.set_gpu_tuned(gpu_tuned);
        gpu.set_sg8_allowed(sg8);
        gpu.set_binding_cap(if h * w >= 1000 || up { 32 * 1024 } else { u64::MAX });
        let (oh, ow) = if up { (2 * h, 2 * w) } else { (h, w) };
        let x = rng.vec(h * w * cin).iter().map(|v| v * 3.0 + 0.5).collect::<Vec<_>>();
        let wt = rng.vec(cout * cin * ks * ks);
        let bias = rng.vec(cout);
        let (gamma, beta) = (rng.vec(cin).iter().map(|v| 1.0 + 0.2 * v).collect::<Vec<_>>(), rng.vec(cin));
        let prior = rng.vec(oh * ow * cout);
        // Our weight layout: [cout, ks·ks·cin], taps major.
        let mut m = vec![0f32; wt.len()];
        for o in 0..cout {
            for ci in 0..cin {
                for t in 0..ks * ks {
                    m[(o * ks * ks + t) * cin + ci] = wt[(o * cin + ci) * ks * ks + t];
                }
            }
        }
        let blob = QuantBlob::quantize(quant, cout, ks * ks * cin, &m).unwrap();
        let wdeq = blob.dequantize();
        let mut wt_used = vec![0f32; wt.len()];
        for o in 0..cout {
            for ci in 0..cin {
                for t in 0..ks * ks {
                    wt_used[(o * cin + ci) * ks * ks + t] = wdeq[(o * ks * ks + t) * cin + ci];
                }
            }
        }
        let weight = Weight::upload(&gpu, "conv", &blob).unwrap();
        let (xt, bt, yt) =
            (Tensor::from_f32(&gpu, "x", &[x.len()], &x), Tensor::from_f32(&gpu, "b", &[cout], &bias), Tensor::from_f32(&gpu, "y", &[prior.len()], &prior));
        let (gt, bet) = (Tensor::from_f32(&gpu, "g", &[cin], &gamma), Tensor::from_f32(&gpu, "be", &[cin], &beta));
        let stats = gpu.storage_buffer("gn", groups as u64 * 8);
        let partials = gpu.storage_buffer("gn-part", kernels::groupnorm_partials_bytes(h * w, groups));
        let xm = kernels::Map { buf: &xt.buf, h, w, c: cin };
        let ym = kernels::Map { buf: &yt.buf, h: oh, w: ow, c: cout };
        // Every other normalised case writes GroupNorm + SiLU into a map of its own (x stays raw).
        let xn = Tensor::zeros(&gpu, "xn", &[x.len()]);
        let separate = norm && ci % 2 == 1;
        let mut rec = Recorder::new(&gpu);
        if norm {
            kernels::groupnorm_stats(&mut rec, xm, groups, 1e-6, &partials, &stats);
            // In windows when the binding cap is small.
            kernels::groupnorm_apply(&mut rec, xm, groups, &stats, &gt.buf, &bet.buf, separate.then_some(&xn.buf), true);
        }
        let input = if separate { kernels::Map { buf: &xn.buf, ..xm } } else { xm };
        kernels::conv2d(&mut rec, &weight, ks, &bt.buf, input, up, ym, add);
        rec.finish();
        let st = cpu_gn(&x, cin, groups, 1e-6);
        let mut want = cpu_conv(&x, h, w, cin, &wt_used, &bias, cout, ks, up, norm.then_some((&st[..], &gamma[..], &beta[..], groups)));
        if add {
            want.iter_mut().zip(&prior).for_each(|(a, b)| *a += b);
        }
        let what =
            format!("conv {h}x{w} {cin}->{cout} k{ks} up {up} norm {norm} (separate {separate}) add {add} {quant} gpu-tuned {gpu_tuned} sg8 {}", gpu.sg8());
        assert_close(&read(&gpu, &yt), &want, 2e-5, &what);
        if separate {
            assert_eq!(read(&gpu, &xt), x, "{what}: the GroupNorm pass into another map leaves x as it was");
        }
        if norm {
            let got: Vec<f32> = pollster::block_on(gpu.read_f32(&stats, 0, groups * 2)).unwrap();
            for (g, (m, r)) in st.iter().enumerate() {
                assert!((got[2 * g] as f64 - m).abs() < 1e-5 && (got[2 * g + 1] as f64 - r).abs() < 1e-4 * r, "group {g}");
            }
        }
    }
    gpu.set_binding_cap(u64::MAX);
    gpu.set_sg8_allowed(true);
}

/// The GroupNorm passes alone against the CPU: statistics (groups wider than a workgroup
/// included) and the normalisation with or without SiLU, in place or into another map, with the
/// binding limit lowered so that both work in windows.
#[test]
fn groupnorm_silu_pass_matches_cpu() {
    let gpu = gpu();
    let mut rng = Rng(5);
    for &(h, w, c, groups, silu_on, inplace, capped) in &[
        (5usize, 7usize, 1032usize, 2usize, true, false, false),
        (40, 33, 64, 32, true, true, true),
        (9, 11, 12, 3, false, false, true),
        (4, 4, 8, 8, false, true, false),
    ] {
        // 256 KiB: the statistics' windows are whole 1024-pixel chunks (of 64 channels here).
        gpu.set_binding_cap(if capped { 256 * 1024 } else { u64::MAX });
        // The statistics' reductions (reduce.wgsl) with and without subgroup operations.
        gpu.set_subgroup_reduce_allowed(inplace);
        let x = rng.vec(h * w * c).iter().map(|v| v * 2.0 - 0.3).collect::<Vec<_>>();
        let (gamma, beta) = (rng.vec(c).iter().map(|v| 1.0 + 0.3 * v).collect::<Vec<_>>(), rng.vec(c));
        let (xt, yt) = (Tensor::from_f32(&gpu, "x", &[x.len()], &x), Tensor::zeros(&gpu, "y", &[x.len()]));
        let (gt, bt) = (Tensor::from_f32(&gpu, "g", &[c], &gamma), Tensor::from_f32(&gpu, "b", &[c], &beta));
        let stats = gpu.storage_buffer("gn", groups as u64 * 8);
        let partials = gpu.storage_buffer("gn-part", kernels::groupnorm_partials_bytes(h * w, groups));
        let xm = kernels::Map { buf: &xt.buf, h, w, c };
        let mut rec = Recorder::new(&gpu);
        kernels::groupnorm_stats(&mut rec, xm, groups, 1e-6, &partials, &stats);
        kernels::groupnorm_apply(&mut rec, xm, groups, &stats, &gt.buf, &bt.buf, (!inplace).then_some(&yt.buf), silu_on);
        rec.finish();
        let st = cpu_gn(&x, c, groups, 1e-6);
        let want: Vec<f32> = x
            .iter()
            .enumerate()
            .map(|(i, &v)| {
                let ch = i % c;
                let (m, r) = st[ch / (c / groups)];
                let t = (v as f64 - m) * r * gamma[ch] as f64 + beta[ch] as f64;
                (if silu_on { silu(t) } else { t }) as f32
            })
            .collect();
        let what = format!("groupnorm {h}x{w}x{c} groups {groups} silu {silu_on} in place {inplace} windows {capped}");
        assert_close(&read(&gpu, if inplace { &xt } else { &yt }), &want, 2e-5, &what);
        let got: Vec<f32> = pollster::block_on(gpu.read_f32(&stats, 0, groups * 2)).unwrap();
        for (g, (m, r)) in st.iter().enumerate() {
            assert!((got[2 * g] as f64 - m).abs() < 1e-5 && (got[2 * g + 1] as f64 - r).abs() < 1e-4 * r, "{what}: group {g}");
        }
    }
    gpu.set_binding_cap(u64::MAX);
}

/// Products whose activation buffers are over the binding limit (the VAE's maps, where the
/// mid-block's attention reads and adds into a few MiB of them) bind windows around what they
/// use: right results at unaligned offsets, and no binding over the limit (under a cap, one is an
/// error), on both kernel shapes, for one row, a small tile and a full one.
#[test]
fn products_bind_windows_of_buffers_over_the_binding_limit() {
    let gpu = gpu();
    let mut rng = Rng(29);
    let (n, k, len) = (40usize, 256usize, 40_000usize);
    let blob = QuantBlob::quantize(Quant::F16, n, k, &rng.vec(n * k)).unwrap();
    let w = Weight::upload(&gpu, "w", &blob).unwrap();
    let (x, y0, bias) = (rng.vec(len), rng.vec(len), rng.vec(n));
    let bt = Tensor::from_f32(&gpu, "b", &[n], &bias);
    // The 160 KB buffers over it, the windows (at most 72 KB) within it.
    gpu.set_binding_cap(128 * 1024);
    for tuned in [false, true] {
        gpu.set_gpu_tuned(tuned);
        for &rows in &[1usize, 5, 70] {
            let (x_off, y_off, stride) = (20_004, 30_008, 48);
            let (xt, yt) = (Tensor::from_f32(&gpu, "x", &[len], &x), Tensor::from_f32(&gpu, "y", &[len], &y0));
            let mut rec = Recorder::new(&gpu);
            kernels::linear(&mut rec, &w, Some(&bt.buf), &xt.buf, x_off, rows, Out { buf: &yt.buf, off: y_off, stride, add: true });
            rec.finish();
            let mut want = y0.clone();
            let p = cpu_linear(&x[x_off..x_off + rows * k], &blob.dequantize(), rows, n, k);
            for r in 0..rows {
                for j in 0..n {
                    want[y_off + r * stride + j] += p[r * n + j] + bias[j];
                }
            }
            assert_close(&read(&gpu, &yt), &want, 1e-5, &format!("windowed product, gpu shapes {tuned}, {rows} rows"));
        }
    }
    gpu.set_gpu_tuned(false);
    gpu.set_binding_cap(u64::MAX);
}

/// GPU errors neither panic (wgpu's default handler does) nor pass silently: a buffer over the
/// adapter's limits and an invalid binding are reported by the next check, with their kind.
#[test]
fn gpu_errors_are_reported_not_panicked() {
    use janusflow::error::{kind_of, Kind};
    let g = gpu();
    g.check_alive().unwrap();
    let _huge = g.storage_buffer("huge", g.limits.max_buffer_size + 4);
    let e = g.check_alive().unwrap_err();
    assert_eq!(kind_of(&e), Kind::Limits, "{e:#}");
    assert!(format!("{e:#}").contains("huge"), "{e:#}");

    let g = gpu();
    let small = g.storage_buffer("small", 16);
    // A binding past the end of its buffer: a validation error the engine must surface.
    let layout = g.device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
        label: None,
        entries: &[wgpu::BindGroupLayoutEntry {
            binding: 0,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer { ty: wgpu::BufferBindingType::Storage { read_only: true }, has_dynamic_offset: false, min_binding_size: None },
            count: None,
        }],
    });
    let _bg = g.device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: None,
        layout: &layout,
        entries: &[wgpu::BindGroupEntry {
            binding: 0,
            resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding { buffer: &small, offset: 0, size: std::num::NonZeroU64::new(1 << 20) }),
        }],
    });
    let e = g.check_alive().unwrap_err();
    assert!(format!("{e:#}").to_lowercase().contains("bind"), "{e:#}");
}

/// The subgroup self-check (gpu::selfcheck): at this adapter's own width every subgroup kernel of
/// either shape set agrees with the workgroup tree; with a misreported width (twice the real one,
/// as llvmpipe reports 32 lanes at 1024-bit vectors and runs 16) it finds the disagreement and
/// turns subgroups off, after which the kernels are right again.
#[test]
fn subgroup_self_check_passes_here_and_catches_a_misreported_width() {
    use janusflow::gpu::selfcheck::check_subgroups;
    let gpu = gpu();
    let Some(width) = gpu.subgroup_reduce() else {
        eprintln!("this adapter has no fixed-width subgroups: nothing to check");
        return;
    };
    let sg8 = gpu.sg8();
    for tuned in [false, true] {
        gpu.set_gpu_tuned(tuned);
        let c = pollster::block_on(check_subgroups(&gpu)).unwrap();
        eprintln!("gpu shapes {tuned}: {}", c.describe());
        assert!(c.passed && c.width == Some(width) && c.gpu_shapes == tuned, "{c:?}");
        // Reductions (norms, attention, GroupNorm, GRN); on GPU shapes also split attention and
        // (up to 32 lanes) the matrix–vector kernels: one-row products in the default preset's
        // three formats (no weights are loaded here) and four fused ones; on CPU shapes the
        // 8-lane product and convolution where there are those.
        let probes = if tuned { 6 + 7 * (width <= 32) as usize } else { 5 + 2 * sg8 as usize };
        assert_eq!(c.probes.len(), probes, "{c:?}");
        assert!(c.probes.iter().all(|p| p.diff <= 1e-5), "{c:?}");
        assert_eq!(gpu.subgroup_reduce(), Some(width));
    }

    let mut rng = Rng(17);
    let (rows, d) = (3, 2048);
    let (x, g) = (rng.vec(rows * d), rng.vec(d));
    let want: Vec<f32> = (0..rows).flat_map(|r| cpu_rmsnorm(&x[r * d..(r + 1) * d], &g, 1e-6)).collect();
    let (xt, gt) = (Tensor::from_f32(&gpu, "x", &[rows, d], &x), Tensor::from_f32(&gpu, "g", &[d], &g));
    if 2 * width > 128 {
        eprintln!("no wider subgroups to pretend than {width} lanes");
        return;
    }
    // A kernel that assumes twice its subgroups' width indexes its per-subgroup slots past their
    // end: checked shaders keep that in bounds (natively the engine's own are unchecked).
    gpu.set_trusted_shaders(false);
    for tuned in [false, true] {
        gpu.set_gpu_tuned(tuned);
        gpu.pretend_subgroup_width(Some(2 * width));
        let c = pollster::block_on(check_subgroups(&gpu)).unwrap();
        eprintln!("gpu shapes {tuned}, pretending {} lanes: {}", 2 * width, c.describe());
        assert!(!c.passed, "a misreported width must be caught: {c:?}");
        assert!(c.probes.iter().any(|p| p.diff > 1e-2), "{c:?}");
        assert_eq!((gpu.subgroup_reduce(), gpu.sg8()), (None, false), "subgroups off after a failed check");
        let yt = Tensor::zeros(&gpu, "y", &[rows, d]);
        let mut rec = Recorder::new(&gpu);
        kernels::rmsnorm(&mut rec, &xt.buf, 0, rows, d, &gt.buf, 1e-6, &yt.buf, 0);
        rec.finish();
        assert_close(&read(&gpu, &yt), &want, 1e-5, "rmsnorm after a failed check");
        // Allowed again by hand, they stay off: the device failed.
        gpu.set_subgroup_reduce_allowed(true);
        assert!(!pollster::block_on(check_subgroups(&gpu)).unwrap().passed);
        assert_eq!(gpu.subgroup_reduce(), None);
        gpu.pretend_subgroup_width(None);
        gpu.set_subgroup_reduce_allowed(true);
        gpu.set_sg8_allowed(true);
    }
    gpu.set_trusted_shaders(true);
    assert_eq!(gpu.subgroup_reduce(), Some(width));
}

/// The kernel-shape self-check (gpu::selfcheck): on GPU shapes every GPU-shape kernel agrees with
/// its CPU-shape counterpart here, with subgroup rows and with the tree, in the default preset's
/// formats and again in the format of a weight then loaded; where they disagree (the GPU-shape
/// matvec rows told twice the subgroup width, before any subgroup check), the device takes the
/// CPU shapes, and after the whole device check its products are right.
#[test]
fn shape_self_check_passes_here_and_falls_back_to_cpu_shapes() {
    use janusflow::gpu::selfcheck::{check_device, check_shapes};
    let gpu = gpu();
    gpu.set_gpu_tuned(false);
    assert!(pollster::block_on(check_shapes(&gpu)).unwrap().probes.is_empty(), "nothing to compare on CPU shapes");
    gpu.set_gpu_tuned(true);
    for sub in [true, false] {
        gpu.set_subgroup_reduce_allowed(sub);
        let c = pollster::block_on(check_shapes(&gpu)).unwrap();
        eprintln!("subgroups {:?}: {}", gpu.subgroup_reduce(), c.describe());
        // One-row and prompt products in f16, q8 and q4a (no weights loaded yet), the residual
        // writer, three fused decode products, the SwiGLU prompt product, two attention kernels
        // and a convolution.
        assert!(c.passed && c.probes.len() == 14 && c.probes.iter().all(|p| p.diff <= 1e-5), "{c:?}");
        assert_eq!(c.width, gpu.subgroup_reduce(), "checked with the width in use");
        assert!(gpu.gpu_tuned());
    }
    gpu.set_subgroup_reduce_allowed(true);
    // A model in f32 loaded: the check runs again, on f32 products (fused ones included).
    let mut rng = Rng(23);
    let f32w = Weight::upload(&gpu, "w", &QuantBlob::quantize(Quant::F32, 8, 64, &rng.vec(8 * 64)).unwrap()).unwrap();
    assert_eq!(gpu.weight_formats(), vec![Quant::F32]);
    let c = pollster::block_on(check_shapes(&gpu)).unwrap();
    let names: Vec<&str> = c.probes.iter().map(|p| p.kernel.as_str()).collect();
    assert!(c.passed && names.contains(&"matvec f32") && names.contains(&"prompt product f32") && c.probes.len() == 10, "{c:?}");
    drop(f32w);
    let Some(width) = gpu.subgroup_reduce().filter(|&w| 2 * w <= 128) else {
        eprintln!("this adapter has no fixed-width subgroups (or none narrower than 128 lanes): no wrong width to pretend");
        return;
    };
    // Checked shaders: a kernel that assumes wider subgroups indexes past its per-subgroup slots.
    gpu.set_trusted_shaders(false);
    gpu.pretend_subgroup_width(Some(2 * width));
    let c = pollster::block_on(check_shapes(&gpu)).unwrap();
    eprintln!("pretending {} lanes: {}", 2 * width, c.describe());
    assert!(!c.passed && c.probes.iter().any(|p| p.diff > 1e-2), "{c:?}");
    assert!(!gpu.gpu_tuned(), "CPU shapes after a failed shape check");
    gpu.set_gpu_tuned(true);
    let (sub, shapes) = pollster::block_on(check_device(&gpu)).unwrap();
    assert!(!shapes.passed && !gpu.gpu_tuned(), "GPU shapes stay off on a device that failed");
    assert!(!sub.passed && gpu.subgroup_reduce().is_none(), "{sub:?}");
    let mut rng = Rng(19);
    let (m, n, k) = (1, 72, 512);
    let (x, wv) = (rng.vec(m * k), rng.vec(n * k));
    let blob = QuantBlob::quantize(Quant::Q4, n, k, &wv).unwrap();
    let w = Weight::upload(&gpu, "w", &blob).unwrap();
    let (xt, yt) = (Tensor::from_f32(&gpu, "x", &[m, k], &x), Tensor::zeros(&gpu, "y", &[m, n]));
    let mut rec = Recorder::new(&gpu);
    kernels::linear(&mut rec, &w, None, &xt.buf, 0, m, Out { buf: &yt.buf, off: 0, stride: n, add: false });
    rec.finish();
    assert_close(&read(&gpu, &yt), &cpu_linear(&x, &blob.dequantize(), m, n, k), 1e-5, "matvec after a failed device check");
    gpu.pretend_subgroup_width(None);
    gpu.set_trusted_shaders(true);
}

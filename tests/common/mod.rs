//! Shared helpers for the integration tests.
#![allow(dead_code)]

use std::path::PathBuf;

use janusflow::engine::{Engine, EngineOptions};
use janusflow::gpu::Gpu;
use janusflow::weights::quant::Quant;
use janusflow::weights::ModelSource;

pub fn fixture(p: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(p)
}

pub fn engine_from(dir: &std::path::Path, preset: Quant, context: usize) -> Engine {
    let gpu = pollster::block_on(Gpu::new()).expect("a GPU adapter (lavapipe in CI)");
    let src = ModelSource::open(dir).unwrap();
    pollster::block_on(Engine::load(gpu, &src, EngineOptions { preset, context, prefill_chunk: 64, fast: false }, |_, _, _| {})).unwrap()
}

/// After a chat turn or a picture, which run the device self-check first: no check failed and
/// the kernel shapes the test chose are still in use, so the test judged the kernels it meant to
/// and not the fallbacks a failed check would have taken.
pub fn assert_kernels_kept(gpu: &Gpu, gpu_tuned: bool) {
    if let Some(c) = gpu.subgroup_check() {
        assert!(c.passed, "{}", c.describe());
    }
    if let Some(c) = gpu.shape_check() {
        assert!(c.passed, "{}", c.describe());
    }
    assert_eq!(gpu.gpu_tuned(), gpu_tuned, "the kernel shapes changed under the test");
}

pub fn engine(preset: Quant) -> Engine {
    engine_from(&fixture("tiny"), preset, 512)
}

pub fn read_npy(path: &std::path::Path) -> Vec<f32> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    npyz::NpyFile::new(&bytes[..]).unwrap().into_vec::<f32>().unwrap()
}

pub fn max_rel(got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    got.iter().zip(want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max) / scale
}

pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

pub fn argmax(v: &[f32]) -> usize {
    v.iter().enumerate().fold((0, f32::MIN), |(bi, bv), (i, &x)| if x > bv { (i, x) } else { (bi, bv) }).0
}

pub fn tempdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("janusflow-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

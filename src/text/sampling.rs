//! Next-token choice from the GPU's top-k candidates: greedy, or HF's warper order
//! temperature → top-k → top-p, then a draw from a seeded ChaCha8 generator (identical natively
//! and in wasm).

use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

/// Candidates the GPU keeps per token when sampling (HF's default top_k is 50).
pub const MAX_CANDIDATES: usize = crate::gpu::kernels::TOPK_MAX;

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct SamplingParams {
    /// 0 = greedy.
    pub temperature: f32,
    pub top_p: f32,
    /// 0 = no top-k filter (still bounded by the GPU's MAX_CANDIDATES).
    pub top_k: usize,
    pub seed: u64,
    pub max_tokens: usize,
}

impl Default for SamplingParams {
    /// The JanusFlow demo's defaults (spec §2.5).
    fn default() -> Self {
        SamplingParams { temperature: 0.1, top_p: 0.95, top_k: 50, seed: 42, max_tokens: 512 }
    }
}

impl SamplingParams {
    pub fn greedy(max_tokens: usize) -> Self {
        SamplingParams { temperature: 0.0, max_tokens, ..Default::default() }
    }
    /// Refuses values that would sample nonsense instead of failing: NaN or infinite temperature
    /// or top-p (a NaN probability picks a fixed candidate), top-p outside (0, 1], no tokens.
    pub fn validate(&self) -> anyhow::Result<()> {
        use crate::error::Kind;
        if !(self.temperature.is_finite() && (0.0..=100.0).contains(&self.temperature)) {
            crate::fail!(Kind::BadInput, "the temperature must be a number between 0 and 100 (got {})", self.temperature);
        }
        if !(self.top_p.is_finite() && self.top_p > 0.0 && self.top_p <= 1.0) {
            crate::fail!(Kind::BadInput, "top-p must be a number in (0, 1] (got {})", self.top_p);
        }
        if self.max_tokens == 0 {
            crate::fail!(Kind::BadInput, "the reply needs room for at least one token (max tokens is 0)");
        }
        Ok(())
    }

    pub fn is_greedy(&self) -> bool {
        self.temperature <= 0.0
    }
    /// How many candidates the GPU must return.
    pub fn candidates(&self) -> usize {
        if self.is_greedy() {
            1
        } else if self.top_k == 0 {
            MAX_CANDIDATES
        } else {
            self.top_k.min(MAX_CANDIDATES)
        }
    }
}

pub struct Sampler {
    params: SamplingParams,
    rng: ChaCha8Rng,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Self {
        let rng = ChaCha8Rng::seed_from_u64(params.seed);
        Sampler { params, rng }
    }

    /// `cands` are (logit, id) pairs, best first.
    pub fn pick(&mut self, cands: &[(f32, u32)]) -> u32 {
        if self.params.is_greedy() || cands.len() == 1 {
            return cands[0].1;
        }
        let t = self.params.temperature;
        let logits: Vec<f64> = cands.iter().map(|&(l, _)| (l / t) as f64).collect();
        let mx = logits[0];
        let mut p: Vec<f64> = logits.iter().map(|l| (l - mx).exp()).collect();
        let z: f64 = p.iter().sum();
        p.iter_mut().for_each(|v| *v /= z);
        // HF TopP: drop the tail whose cumulative mass (from the least likely up) is ≤ 1 − top_p.
        let mut keep = p.len();
        if self.params.top_p < 1.0 {
            let mut tail = 0.0;
            for i in (1..p.len()).rev() {
                tail += p[i];
                if tail <= 1.0 - self.params.top_p as f64 {
                    keep = i;
                } else {
                    break;
                }
            }
        }
        let z: f64 = p[..keep].iter().sum();
        let u = (self.rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64 * z;
        let mut acc = 0.0;
        for i in 0..keep {
            acc += p[i];
            if u < acc {
                return cands[i].1;
            }
        }
        cands[keep - 1].1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_first_and_sampling_is_seeded() {
        let c = [(5.0, 7u32), (4.9, 3), (1.0, 9)];
        assert_eq!(Sampler::new(SamplingParams::greedy(1)).pick(&c), 7);
        let p = SamplingParams { temperature: 1.0, top_p: 1.0, ..Default::default() };
        let a: Vec<u32> = (0..20)
            .map({
                let mut s = Sampler::new(p.clone());
                move |_| s.pick(&c)
            })
            .collect();
        let b: Vec<u32> = (0..20)
            .map({
                let mut s = Sampler::new(p.clone());
                move |_| s.pick(&c)
            })
            .collect();
        assert_eq!(a, b);
        assert!(a.contains(&7) && a.contains(&3));
        // top_p 0.5 keeps only the best token here (its mass is > 0.5).
        let p = SamplingParams { temperature: 1.0, top_p: 0.5, ..Default::default() };
        let mut s = Sampler::new(p);
        assert!((0..50).all(|_| s.pick(&c) == 7));
    }
}

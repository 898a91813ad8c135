//! Bicubic resampling that reproduces Pillow's `Image.resize(size, BICUBIC)` on 8-bit RGB
//! (the reference preprocessor resizes PIL images; torchvision hands them to Pillow).
//!
//! Pillow's algorithm: a separable convolution, horizontal pass first, then vertical. When
//! shrinking, the cubic kernel (a = −0.5, support 2) is stretched by the scale factor, which is
//! what antialiases. Weights are normalised per output pixel, turned into 22-bit fixed point,
//! and every pass rounds and clamps to 8 bits. Doing the same integer arithmetic here makes the
//! output bit-identical, not merely close.

/// Fixed-point precision of the 8-bit path (32 bits − 8 for the value − 2 for headroom).
const PRECISION_BITS: u32 = 32 - 8 - 2;

fn cubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// For each output index: the first input index and the fixed-point weights.
struct Taps {
    first: Vec<usize>,
    weights: Vec<Vec<i32>>,
}

fn taps(in_size: usize, out_size: usize) -> Taps {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = 2.0 * filterscale;
    let ss = 1.0 / filterscale;
    let mut first = Vec::with_capacity(out_size);
    let mut weights = Vec::with_capacity(out_size);
    for xx in 0..out_size {
        let center = (xx as f64 + 0.5) * scale;
        // C casts truncate toward zero; the clamp at 0 makes that equal to floor here.
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
        let mut k: Vec<f64> = (xmin..xmax).map(|x| cubic((x as f64 - center + 0.5) * ss)).collect();
        let sum: f64 = k.iter().sum();
        if sum != 0.0 {
            k.iter_mut().for_each(|w| *w /= sum);
        }
        let one = (1u64 << PRECISION_BITS) as f64;
        let fixed = k.iter().map(|&w| if w < 0.0 { (-0.5 + w * one) as i32 } else { (0.5 + w * one) as i32 }).collect();
        first.push(xmin);
        weights.push(fixed);
    }
    Taps { first, weights }
}

fn clip8(acc: i64) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Resizes packed RGB8 `src` (`w`×`h`) to `ow`×`oh`.
pub fn resize_bicubic_rgb8(src: &[u8], w: usize, h: usize, ow: usize, oh: usize) -> Vec<u8> {
    assert_eq!(src.len(), w * h * 3);
    assert!(w > 0 && h > 0 && ow > 0 && oh > 0);
    let half = 1i64 << (PRECISION_BITS - 1);
    // Horizontal pass (skipped when the width is unchanged, as Pillow does).
    let horiz = if ow != w {
        let t = taps(w, ow);
        let mut out = vec![0u8; ow * h * 3];
        for y in 0..h {
            let row = &src[y * w * 3..(y + 1) * w * 3];
            for x in 0..ow {
                for c in 0..3 {
                    let mut acc = half;
                    for (i, &k) in t.weights[x].iter().enumerate() {
                        acc += row[(t.first[x] + i) * 3 + c] as i64 * k as i64;
                    }
                    out[(y * ow + x) * 3 + c] = clip8(acc);
                }
            }
        }
        out
    } else {
        src.to_vec()
    };
    if oh == h {
        return horiz;
    }
    let t = taps(h, oh);
    let mut out = vec![0u8; ow * oh * 3];
    for y in 0..oh {
        for x in 0..ow {
            for c in 0..3 {
                let mut acc = half;
                for (i, &k) in t.weights[y].iter().enumerate() {
                    acc += horiz[((t.first[y] + i) * ow + x) * 3 + c] as i64 * k as i64;
                }
                out[(y * ow + x) * 3 + c] = clip8(acc);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_and_constant() {
        let src: Vec<u8> = (0..5 * 4 * 3).map(|i| (i * 7 % 256) as u8).collect();
        assert_eq!(resize_bicubic_rgb8(&src, 5, 4, 5, 4), src);
        let flat = vec![77u8; 9 * 7 * 3];
        assert!(resize_bicubic_rgb8(&flat, 9, 7, 4, 13).iter().all(|&v| v == 77));
    }
}

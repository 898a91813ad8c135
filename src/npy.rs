//! Float32 `.npy` arrays in (start latents for validation): the header's shape is checked against
//! the bytes actually present before anything is allocated.

use anyhow::{bail, Context as _, Result};

/// The shape and values of a float32 `.npy` file's bytes.
pub fn read_f32(bytes: &[u8]) -> Result<(Vec<u64>, Vec<f32>)> {
    let npy = npyz::NpyFile::new(bytes).context("not a .npy file")?;
    let shape = npy.shape().to_vec();
    let n = shape.iter().try_fold(1u64, |a, &d| a.checked_mul(d));
    // A header may declare any shape; the data must be there to back it.
    if n.and_then(|n| n.checked_mul(4)).is_none_or(|b| b > bytes.len() as u64) {
        bail!("the .npy header declares shape {shape:?}, more values than the file holds");
    }
    let values = npy.into_vec::<f32>().context("expected float32 values")?;
    Ok((shape, values))
}

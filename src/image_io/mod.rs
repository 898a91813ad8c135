//! Images in: decoding (PNG, JPEG, WebP, GIF, BMP) with a pixel budget checked before any pixel is
//! decoded, and the understanding preprocessor of spec §2.1 (long side to the encoder size with
//! Pillow-exact bicubic, centre padding, rescale, normalise), configured by
//! `preprocessor_config.json`.
//!
//! Colour conversion follows the reference's `PIL.Image.convert("RGB")`: alpha is dropped (not
//! composited), grey is replicated, GIFs give their first frame, 16-bit samples keep their high
//! byte. Unlike the reference, the EXIF orientation of JPEGs is honoured (a photo taken upright is
//! seen upright).

mod resample;

use std::io::Cursor;

use anyhow::{anyhow, bail, Context, Result};
use image::{DynamicImage, ImageDecoder, ImageReader, Limits};
use sha2::{Digest, Sha256};

pub use resample::resize_bicubic_rgb8;

/// Largest image accepted, in pixels (checked from the header, before decoding).
pub const MAX_PIXELS: u64 = 64 * 1024 * 1024;

/// A decoded, upright RGB8 image.
#[derive(Clone)]
pub struct Picture {
    pub width: usize,
    pub height: usize,
    /// Packed RGB, row-major.
    pub rgb: Vec<u8>,
    /// Content hash: two pictures with equal pixels share it (used to reuse cached work).
    pub hash: u64,
}

impl std::fmt::Debug for Picture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Picture({}x{}, {:016x})", self.width, self.height, self.hash)
    }
}

impl Picture {
    pub fn from_rgb8(width: usize, height: usize, rgb: Vec<u8>) -> Result<Self> {
        if width == 0 || height == 0 {
            bail!("the image is empty ({width}×{height} pixels)");
        }
        if rgb.len() != width * height * 3 {
            bail!("{} bytes of RGB data do not make a {width}×{height} image", rgb.len());
        }
        let mut h = Sha256::new();
        h.update((width as u64).to_le_bytes());
        h.update((height as u64).to_le_bytes());
        h.update(&rgb);
        let hash = u64::from_le_bytes(h.finalize()[..8].try_into().unwrap());
        Ok(Picture { width, height, rgb, hash })
    }

    /// Decodes an encoded image file. Errors name what is wrong: not an image, an unsupported
    /// format, a size over [`MAX_PIXELS`], an empty or truncated file.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        if bytes.is_empty() {
            bail!("the image file is empty");
        }
        let reader = || -> Result<ImageReader<Cursor<&[u8]>>> {
            let r = ImageReader::new(Cursor::new(bytes)).with_guessed_format().context("reading the image")?;
            if r.format().is_none() {
                bail!("this file is not an image in a supported format (PNG, JPEG, WebP, GIF, BMP)");
            }
            Ok(r)
        };
        let fmt = reader()?.format().unwrap();
        if fmt == image::ImageFormat::Jpeg && !jpeg_is_complete(bytes) {
            // The JPEG decoder fills a cut-off file with grey and reports success.
            bail!("the JPEG file is truncated or damaged (it ends before its image data does)");
        }
        let (w, h) = reader()?.into_dimensions().map_err(|e| anyhow!("cannot read the {fmt:?} header: {e}"))?;
        if w == 0 || h == 0 {
            bail!("the image is empty ({w}×{h} pixels)");
        }
        let pixels = w as u64 * h as u64;
        if pixels > MAX_PIXELS {
            bail!("the image is {w}×{h} = {:.0} megapixels, over the {} megapixel limit; scale it down first", pixels as f64 / 1e6, MAX_PIXELS / (1024 * 1024));
        }
        let mut r = reader()?;
        let mut limits = Limits::default();
        limits.max_image_width = Some(w);
        limits.max_image_height = Some(h);
        // Room for a 16-bit RGBA frame plus the decoder's own buffers.
        limits.max_alloc = Some(pixels * 8 + (64 << 20));
        r.limits(limits);
        let bad = |e: image::ImageError| anyhow!("cannot decode the {fmt:?} image ({w}×{h}): {e}");
        let mut dec = r.into_decoder().map_err(bad)?;
        let orientation = dec.orientation().unwrap_or(image::metadata::Orientation::NoTransforms);
        let mut img = DynamicImage::from_decoder(dec).map_err(bad)?;
        img.apply_orientation(orientation);
        let (width, height) = (img.width() as usize, img.height() as usize);
        Picture::from_rgb8(width, height, to_rgb8(img))
    }
}

/// Whether a JPEG holds its whole image: its marker segments lead to a scan, and an end-of-image
/// marker follows it. (Scan data never contains a bare 0xFFD9: a 0xFF data byte is stuffed as
/// 0xFF00. Segments are walked by their lengths, so an EXIF thumbnail's markers do not count.)
fn jpeg_is_complete(b: &[u8]) -> bool {
    let mut i = 2; // after SOI
    while i + 4 <= b.len() {
        if b[i] != 0xFF {
            return false;
        }
        let marker = b[i + 1];
        if marker == 0xFF {
            i += 1; // fill byte
            continue;
        }
        let len = u16::from_be_bytes([b[i + 2], b[i + 3]]) as usize;
        if marker == 0xDA {
            return b[i + 2 + len.min(b.len() - i - 2)..].windows(2).any(|w| w == [0xFF, 0xD9]);
        }
        i += 2 + len;
    }
    false
}

/// `PIL.Image.convert("RGB")`: drop alpha, replicate grey, 16-bit → high byte.
fn to_rgb8(img: DynamicImage) -> Vec<u8> {
    let hi = |v: u16| (v >> 8) as u8;
    match img {
        DynamicImage::ImageRgb16(b) => b.into_raw().into_iter().map(hi).collect(),
        DynamicImage::ImageRgba16(b) => b.into_raw().chunks_exact(4).flat_map(|p| [hi(p[0]), hi(p[1]), hi(p[2])]).collect(),
        DynamicImage::ImageLuma16(b) => b.into_raw().into_iter().flat_map(|v| [hi(v); 3]).collect(),
        DynamicImage::ImageLumaA16(b) => b.into_raw().chunks_exact(2).flat_map(|p| [hi(p[0]); 3]).collect(),
        DynamicImage::ImageRgb8(b) => b.into_raw(),
        other => other.to_rgb8().into_raw(),
    }
}

/// The image processor's settings (`preprocessor_config.json`, spec §2.1).
#[derive(Clone, Debug, PartialEq)]
pub struct Preprocess {
    pub image_size: usize,
    pub min_size: usize,
    pub background: [u8; 3],
    pub rescale: f32,
    pub do_normalize: bool,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl Preprocess {
    /// Parses `preprocessor_config.json`; `encoder_size` is the SigLIP input size from config.json,
    /// which the file must agree with.
    pub fn from_json(bytes: &[u8], encoder_size: usize) -> Result<Self> {
        let v: serde_json::Value = serde_json::from_slice(bytes).context("preprocessor_config.json is not valid JSON")?;
        let num = |k: &str| v.get(k).and_then(|x| x.as_f64()).ok_or_else(|| anyhow!("preprocessor_config.json: `{k}` is missing or not a number"));
        let triple = |k: &str| -> Result<[f32; 3]> {
            let a = v.get(k).and_then(|x| x.as_array()).ok_or_else(|| anyhow!("preprocessor_config.json: `{k}` is missing or not a list"))?;
            if a.len() != 3 {
                bail!("preprocessor_config.json: `{k}` must have 3 values, has {}", a.len());
            }
            let mut out = [0f32; 3];
            for (o, x) in out.iter_mut().zip(a) {
                *o = x.as_f64().ok_or_else(|| anyhow!("preprocessor_config.json: `{k}` holds a non-number"))? as f32;
            }
            Ok(out)
        };
        let image_size = num("image_size")? as usize;
        if image_size != encoder_size {
            bail!("preprocessor_config.json says image_size {image_size} but the vision encoder takes {encoder_size}");
        }
        let min_size = v.get("min_size").and_then(|x| x.as_u64()).unwrap_or(14) as usize;
        let mean = triple("image_mean")?;
        let std = triple("image_std")?;
        if std.iter().any(|&s| s <= 0.0) {
            bail!("preprocessor_config.json: image_std must be positive, got {std:?}");
        }
        // Upstream derives the pad colour from the mean (int(c·255)); a listed colour must agree.
        let background = mean.map(|m| (m as f64 * 255.0) as u8);
        if let Some(bg) = v.get("background_color") {
            let listed: Vec<u64> = bg.as_array().map(|a| a.iter().filter_map(|x| x.as_u64()).collect()).unwrap_or_default();
            if listed != background.iter().map(|&b| b as u64).collect::<Vec<_>>() {
                bail!("preprocessor_config.json: background_color {bg} disagrees with the colour derived from image_mean {background:?}");
            }
        }
        let rescale = num("rescale_factor")? as f32;
        if !(rescale > 0.0) {
            bail!("preprocessor_config.json: rescale_factor must be positive");
        }
        let do_normalize = v.get("do_normalize").and_then(|x| x.as_bool()).unwrap_or(true);
        Ok(Preprocess { image_size, min_size, background, rescale, do_normalize, mean, std })
    }

    /// The long side to `image_size` (truncating like Python's `int`, at least `min_size`).
    pub fn resized_dims(&self, w: usize, h: usize) -> (usize, usize) {
        let m = w.max(h) as f64;
        let s = self.image_size as f64;
        let fit = |x: usize| ((x as f64 / m * s) as usize).max(self.min_size);
        (fit(w), fit(h))
    }

    /// Resized and padded to a square: packed RGB8 [S, S, 3].
    pub fn square(&self, pic: &Picture) -> Vec<u8> {
        let s = self.image_size;
        let (w, h) = self.resized_dims(pic.width, pic.height);
        let resized = resize_bicubic_rgb8(&pic.rgb, pic.width, pic.height, w, h);
        let mut out: Vec<u8> = self.background.iter().copied().cycle().take(s * s * 3).collect();
        let (x0, y0) = ((s.saturating_sub(w)) / 2, (s.saturating_sub(h)) / 2);
        for y in 0..h.min(s) {
            let n = w.min(s) * 3;
            out[((y0 + y) * s + x0) * 3..][..n].copy_from_slice(&resized[y * w * 3..][..n]);
        }
        out
    }

    /// The encoder input: CHW f32 [3, S, S], rescaled and (if configured) normalised.
    pub fn pixels(&self, pic: &Picture) -> Vec<f32> {
        let s = self.image_size;
        let sq = self.square(pic);
        let mut out = vec![0f32; 3 * s * s];
        for c in 0..3 {
            for i in 0..s * s {
                let mut v = sq[i * 3 + c] as f32 * self.rescale;
                if self.do_normalize {
                    v = (v - self.mean[c]) / self.std[c];
                }
                out[c * s * s + i] = v;
            }
        }
        out
    }
}

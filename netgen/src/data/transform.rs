//! Per-sample transforms: augmentation, resizing and per-channel normalisation into planar `f32`.
//!
//! * Small images (MNIST-like 28×28, CIFAR 32×32): training draws a random crop of the image
//!   zero-padded by `pad` pixels on every side (4 for 32×32 as in the ResNet CIFAR recipe, 2 for
//!   28×28, where objects fill the frame) and, where the data set allows it, a horizontal flip with
//!   probability ½ — torchvision's `RandomCrop(size, padding)` then `RandomHorizontalFlip()`.
//!   Evaluation is the identity. When the network input differs from the native side, the result
//!   is resized (antialiased bilinear).
//! * Image folders (ImageNet scale): training is `RandomResizedCrop(size, scale=(0.08, 1),
//!   ratio=(3/4, 4/3))` (torchvision's parameter draw: ten tries, then a centred fallback) and a
//!   flip with probability ½; evaluation resizes the shorter side to `⌊size·256/224⌋` and takes
//!   the centred `size × size` crop (256 → 224 at full scale, timm's `crop_pct = 0.875`).
//! * Normalisation: `(x/255 − mean[c]) / std[c]`; padding is black (`x = 0`) before it.
use rand::Rng;

use super::resample::{Region, View, resample};

/// Per-channel normalisation in 0..1 pixel units.
#[derive(Debug, Clone)]
pub struct Normalize {
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}

impl Normalize {
    /// Applies `(x/255 − mean) / std` in place to a planar image with `plane` pixels per channel.
    pub fn apply(&self, img: &mut [f32], plane: usize) {
        for (ch, p) in img.chunks_mut(plane).enumerate() {
            let a = 1.0 / (255.0 * self.std[ch]);
            let b = -self.mean[ch] / self.std[ch];
            for v in p {
                *v = *v * a + b;
            }
        }
    }
}

/// Augmentation for small in-memory images.
#[derive(Debug, Clone, Copy)]
pub struct SmallAugment {
    pub pad: usize,
    pub flip: bool,
}

/// Writes one small planar image (`C × h × w`, `h = w = side`) transformed to `out`
/// (`C × size × size`, normalised). `aug = None` is the evaluation transform.
#[allow(clippy::too_many_arguments)]
pub fn small_sample(
    src: &[u8],
    channels: usize,
    side: usize,
    size: usize,
    aug: Option<(SmallAugment, &mut impl Rng)>,
    norm: &Normalize,
    out: &mut [f32],
    scratch: &mut Scratch,
) {
    let plane = side * side;
    // Crop offsets (dy, dx) into the padded image and the flip.
    let (dy, dx, pad, flip) = match aug {
        Some((a, rng)) => {
            let dy = rng.random_range(0..=2 * a.pad);
            let dx = rng.random_range(0..=2 * a.pad);
            let flip = a.flip && rng.random_bool(0.5);
            (dy, dx, a.pad, flip)
        }
        None => (0, 0, 0, false),
    };
    let shifted = dy != pad || dx != pad || flip;
    if size == side && !shifted {
        for (o, &v) in out.iter_mut().zip(&src[..channels * plane]) {
            *o = v as f32;
        }
        norm.apply(out, plane);
        return;
    }
    // Crop/flip at the native size into u8, then copy or resize.
    let buf = &mut scratch.bytes;
    buf.clear();
    buf.resize(channels * plane, 0);
    for ch in 0..channels {
        for y in 0..side {
            let sy = (y + dy) as isize - pad as isize;
            if sy < 0 || sy >= side as isize {
                continue;
            }
            for x in 0..side {
                let xc = if flip { side - 1 - x } else { x };
                let sx = (xc + dx) as isize - pad as isize;
                if sx < 0 || sx >= side as isize {
                    continue;
                }
                buf[ch * plane + y * side + x] = src[ch * plane + sy as usize * side + sx as usize];
            }
        }
    }
    if size == side {
        for (o, &v) in out.iter_mut().zip(buf.iter()) {
            *o = v as f32;
        }
    } else {
        let view = View::planar(buf, channels, side, side);
        let r = Region::whole(0, 0, side, side, size, size);
        resample(&view, &r, out, &mut scratch.floats);
    }
    norm.apply(out, size * size);
}

/// Reusable buffers of one worker.
#[derive(Default)]
pub struct Scratch {
    bytes: Vec<u8>,
    floats: Vec<f32>,
}

/// torchvision's `RandomResizedCrop.get_params` with scale (0.08, 1) and ratio (3/4, 4/3):
/// returns the crop `(top, left, height, width)` of a `height × width` image.
pub fn random_resized_crop_params(
    height: usize,
    width: usize,
    rng: &mut impl Rng,
) -> (usize, usize, usize, usize) {
    let (scale, ratio) = ((0.08f64, 1.0f64), (3.0f64 / 4.0, 4.0f64 / 3.0));
    let area = (height * width) as f64;
    let (lr0, lr1) = (ratio.0.ln(), ratio.1.ln());
    for _ in 0..10 {
        let target = area * rng.random_range(scale.0..scale.1);
        let aspect = rng.random_range(lr0..lr1).exp();
        let w = (target * aspect).sqrt().round() as usize;
        let h = (target / aspect).sqrt().round() as usize;
        if 0 < w && w <= width && 0 < h && h <= height {
            let top = rng.random_range(0..=height - h);
            let left = rng.random_range(0..=width - w);
            return (top, left, h, w);
        }
    }
    let in_ratio = width as f64 / height as f64;
    let (h, w) = if in_ratio < ratio.0 {
        (((width as f64) / ratio.0).round() as usize, width)
    } else if in_ratio > ratio.1 {
        (height, ((height as f64) * ratio.1).round() as usize)
    } else {
        (height, width)
    };
    let (h, w) = (h.clamp(1, height), w.clamp(1, width));
    ((height - h) / 2, (width - w) / 2, h, w)
}

/// Side to which evaluation resizes the shorter image side: `⌊size·256/224⌋`.
pub fn eval_resize_side(size: usize) -> usize {
    size * 256 / 224
}

/// Writes one decoded RGB image (`HWC`, `height × width`) transformed to `out`
/// (`3 × size × size`, normalised). `rng = None` is the evaluation transform.
#[allow(clippy::too_many_arguments)]
pub fn large_sample(
    rgb: &[u8],
    height: usize,
    width: usize,
    size: usize,
    rng: Option<&mut impl Rng>,
    norm: &Normalize,
    out: &mut [f32],
    scratch: &mut Scratch,
) {
    let view = View::interleaved(rgb, 3, height, width);
    let flip = match rng {
        Some(rng) => {
            let (top, left, h, w) = random_resized_crop_params(height, width, rng);
            let r = Region::whole(left, top, w, h, size, size);
            resample(&view, &r, out, &mut scratch.floats);
            rng.random_bool(0.5)
        }
        None => {
            // torchvision Resize(int): the shorter side becomes `s`, the longer `⌊s·long/short⌋`.
            let s = eval_resize_side(size);
            let (ow, oh) = if width <= height {
                (s, s * height / width)
            } else {
                (s * width / height, s)
            };
            // CenterCrop: top = round((oh − size)/2), left likewise (Python rounds half to even).
            let centre = |big: usize| ((big - size) as f64 / 2.0).round_ties_even() as usize;
            let r = Region {
                x0: 0,
                y0: 0,
                w: width,
                h: height,
                out_w: ow,
                out_h: oh,
                ox: centre(ow),
                oy: centre(oh),
                n_w: size,
                n_h: size,
            };
            resample(&view, &r, out, &mut scratch.floats);
            false
        }
    };
    if flip {
        for row in out.chunks_mut(size) {
            row.reverse();
        }
    }
    norm.apply(out, size * size);
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    use super::*;

    /// RandomResizedCrop's draws lie inside the image, with area fraction in [0.08, 1] and aspect
    /// ratio in [3/4, 4/3] up to the rounding of the sides; the fallback for extreme aspect ratios
    /// is a centred crop of the clamped ratio.
    #[test]
    fn random_resized_crop_draws_respect_scale_and_ratio() {
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        let (mut small, mut large) = (false, false);
        for _ in 0..2000 {
            let (top, left, h, w) = random_resized_crop_params(375, 500, &mut rng);
            assert!(h >= 1 && w >= 1 && top + h <= 375 && left + w <= 500);
            let frac = (h * w) as f64 / (375.0 * 500.0);
            let ratio = w as f64 / h as f64;
            assert!((0.07..=1.0).contains(&frac), "area fraction {frac}");
            assert!((0.73..=1.37).contains(&ratio), "ratio {ratio}");
            small |= frac < 0.15;
            large |= frac > 0.9;
        }
        assert!(small && large, "draws do not span the scale range");
        // A 2×100 strip always falls back: every drawn crop is at least 16 pixels of area with
        // a ratio of at most 4/3, hence at least 3 rows high; the fallback is 2×round(2·4/3).
        for _ in 0..20 {
            assert_eq!(random_resized_crop_params(2, 100, &mut rng), (0, 48, 2, 3));
        }
    }

    /// The evaluation transform (resize + centre crop) of a uniform image gives exactly the
    /// normalised colour: resampling weights sum to one.
    #[test]
    fn eval_of_uniform_image_is_normalised_colour() {
        let norm = Normalize {
            mean: vec![0.5, 0.25, 0.0],
            std: vec![0.5, 0.25, 1.0],
        };
        let rgb: Vec<u8> = [255u8, 0, 51].repeat(40 * 30);
        let mut out = vec![0.0; 3 * 16 * 16];
        large_sample(
            &rgb,
            30,
            40,
            16,
            None::<&mut ChaCha8Rng>,
            &norm,
            &mut out,
            &mut Scratch::default(),
        );
        for (ch, want) in [1.0f32, -1.0, 0.2].iter().enumerate() {
            assert!(
                out[ch * 256..(ch + 1) * 256]
                    .iter()
                    .all(|v| (v - want).abs() < 1e-5),
                "channel {ch}"
            );
        }
    }
}

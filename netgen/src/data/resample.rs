//! Antialiased bilinear resampling of a `u8` image region into `f32`, the filter of PIL's
//! `Image.resize(..., BILINEAR)` (which torchvision's `Resize` uses on PIL images).
//!
//! Each axis is resampled separately with a triangle filter `max(0, 1 − |t|)` whose support is
//! widened by the down-scaling factor `scale = in_len / out_len` when `scale > 1` (antialiasing):
//! output pixel `o` has centre `c = in_start + (o + ½)·scale` in input coordinates and takes input
//! pixels `x` with weight `tri((x + ½ − c) / max(scale, 1))`, normalised to sum 1. The horizontal
//! pass runs first, into an `f32` buffer (PIL rounds to `u8` in between; the difference is below
//! one grey level).

/// A borrowed `u8` image with explicit strides (in bytes): `data[y·row + x·pixel + ch·channel]`.
/// Interleaved RGB (`HWC`) has `pixel = 3, channel = 1`; planar (`CHW`) has `pixel = 1,
/// channel = h·w`.
#[derive(Clone, Copy)]
pub struct View<'a> {
    pub data: &'a [u8],
    pub width: usize,
    pub height: usize,
    pub channels: usize,
    pub row: usize,
    pub pixel: usize,
    pub channel: usize,
}

impl<'a> View<'a> {
    /// A planar `C × H × W` image.
    pub fn planar(data: &'a [u8], channels: usize, height: usize, width: usize) -> Self {
        View {
            data,
            width,
            height,
            channels,
            row: width,
            pixel: 1,
            channel: width * height,
        }
    }

    /// An interleaved `H × W × C` image.
    pub fn interleaved(data: &'a [u8], channels: usize, height: usize, width: usize) -> Self {
        View {
            data,
            width,
            height,
            channels,
            row: width * channels,
            pixel: channels,
            channel: 1,
        }
    }

    #[inline]
    pub fn at(&self, ch: usize, y: usize, x: usize) -> u8 {
        self.data[y * self.row + x * self.pixel + ch * self.channel]
    }
}

/// The filter taps of one axis: output `o` reads `len[o]` input pixels from `start[o]` with
/// weights `w[o·taps ..]`.
struct Taps {
    start: Vec<usize>,
    len: Vec<usize>,
    w: Vec<f32>,
    taps: usize,
}

/// Taps for outputs `out_from .. out_from + out_n` of resampling the input span
/// `[in0, in0 + in_len)` to `out_len` pixels; input pixels outside the span are not read.
fn taps(in0: usize, in_len: usize, out_len: usize, out_from: usize, out_n: usize) -> Taps {
    let scale = in_len as f64 / out_len as f64;
    let fscale = scale.max(1.0);
    let support = fscale;
    let taps = (support.ceil() as usize) * 2 + 1;
    let mut t = Taps {
        start: vec![0; out_n],
        len: vec![0; out_n],
        w: vec![0.0; out_n * taps],
        taps,
    };
    let (lo, hi) = (in0 as f64, (in0 + in_len) as f64);
    for k in 0..out_n {
        let o = out_from + k;
        let centre = lo + (o as f64 + 0.5) * scale;
        let xmin = ((centre - support + 0.5).floor()).max(lo) as usize;
        let xmax = ((centre + support + 0.5).floor()).min(hi) as usize;
        let n = xmax.saturating_sub(xmin).min(taps);
        let ws = &mut t.w[k * taps..k * taps + n];
        let mut sum = 0.0;
        for (i, w) in ws.iter_mut().enumerate() {
            let d = ((xmin + i) as f64 + 0.5 - centre) / fscale;
            let v = (1.0 - d.abs()).max(0.0);
            *w = v as f32;
            sum += v;
        }
        if sum > 0.0 {
            for w in ws.iter_mut() {
                *w = (*w as f64 / sum) as f32;
            }
        }
        t.start[k] = xmin;
        t.len[k] = n;
    }
    t
}

/// The crop box of a resampling: the input span and which part of the virtual output to produce.
#[derive(Debug, Clone, Copy)]
pub struct Region {
    /// Input rectangle `[x0, x0 + w) × [y0, y0 + h)` that is resized (pixels outside are ignored).
    pub x0: usize,
    pub y0: usize,
    pub w: usize,
    pub h: usize,
    /// Size of the full resized image.
    pub out_w: usize,
    pub out_h: usize,
    /// Window of the resized image that is written: `[ox, ox + n_w) × [oy, oy + n_h)`.
    pub ox: usize,
    pub oy: usize,
    pub n_w: usize,
    pub n_h: usize,
}

impl Region {
    /// The input rectangle `[x0, x0 + w) × [y0, y0 + h)` resized to `out_w × out_h`, all of it
    /// written.
    pub fn whole(x0: usize, y0: usize, w: usize, h: usize, out_w: usize, out_h: usize) -> Self {
        Region {
            x0,
            y0,
            w,
            h,
            out_w,
            out_h,
            ox: 0,
            oy: 0,
            n_w: out_w,
            n_h: out_h,
        }
    }
}

/// Resamples `src` over `r` into `out` (planar `C × n_h × n_w`, values in `0..=255` units);
/// `scratch` is reused between calls.
pub fn resample(src: &View, r: &Region, out: &mut [f32], scratch: &mut Vec<f32>) {
    let c = src.channels;
    assert_eq!(
        out.len(),
        c * r.n_h * r.n_w,
        "resample output buffer has the wrong size"
    );
    let tx = taps(r.x0, r.w, r.out_w, r.ox, r.n_w);
    let ty = taps(r.y0, r.h, r.out_h, r.oy, r.n_h);
    // Rows of the input that the vertical taps read.
    let row_lo = ty.start.iter().copied().min().unwrap_or(0);
    let row_hi = (0..r.n_h).map(|k| ty.start[k] + ty.len[k]).max().unwrap_or(0);
    let rows = row_hi.saturating_sub(row_lo);
    // Horizontal pass: tmp[ch][row][ox].
    scratch.clear();
    scratch.resize(c * rows * r.n_w, 0.0);
    if src.channel == 1 && src.pixel == c && c <= 4 {
        // Interleaved pixels: all channels of a tap at once, from one contiguous row slice.
        for y in 0..rows {
            let line = &src.data[(row_lo + y) * src.row..(row_lo + y) * src.row + src.width * c];
            for k in 0..r.n_w {
                let w = &tx.w[k * tx.taps..k * tx.taps + tx.len[k]];
                let px = &line[tx.start[k] * c..(tx.start[k] + tx.len[k]) * c];
                let mut acc = [0f32; 4];
                for (wi, p) in w.iter().zip(px.chunks_exact(c)) {
                    for (a, &v) in acc.iter_mut().zip(p) {
                        *a += wi * v as f32;
                    }
                }
                for (ch, a) in acc.iter().take(c).enumerate() {
                    scratch[(ch * rows + y) * r.n_w + k] = *a;
                }
            }
        }
    } else {
        horizontal_strided(src, &tx, row_lo, rows, r.n_w, scratch);
    }
    // Vertical pass.
    for ch in 0..c {
        for k in 0..r.n_h {
            let w = &ty.w[k * ty.taps..k * ty.taps + ty.len[k]];
            let dst = &mut out[(ch * r.n_h + k) * r.n_w..(ch * r.n_h + k + 1) * r.n_w];
            dst.fill(0.0);
            for (i, wi) in w.iter().enumerate() {
                let y = ty.start[k] + i - row_lo;
                let s = &scratch[(ch * rows + y) * r.n_w..(ch * rows + y + 1) * r.n_w];
                for (d, v) in dst.iter_mut().zip(s) {
                    *d += wi * v;
                }
            }
        }
    }
}

/// Horizontal pass for any strides: `tmp[ch][row][ox]`.
fn horizontal_strided(src: &View, tx: &Taps, row_lo: usize, rows: usize, n_w: usize, scratch: &mut [f32]) {
    let c = src.channels;
    for ch in 0..c {
        for y in 0..rows {
            let dst = &mut scratch[(ch * rows + y) * n_w..(ch * rows + y + 1) * n_w];
            for (k, d) in dst.iter_mut().enumerate() {
                let w = &tx.w[k * tx.taps..k * tx.taps + tx.len[k]];
                let mut acc = 0.0f32;
                for (i, wi) in w.iter().enumerate() {
                    acc += wi * src.at(ch, row_lo + y, tx.start[k] + i) as f32;
                }
                *d = acc;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Resampling to the same size is the identity (the triangle filter at unit scale puts all
    /// weight on the pixel under the centre).
    #[test]
    fn same_size_is_identity() {
        let data: Vec<u8> = (0..3 * 5 * 7).map(|i| (i * 37 % 251) as u8).collect();
        let v = View::planar(&data, 3, 5, 7);
        let r = Region {
            x0: 0,
            y0: 0,
            w: 7,
            h: 5,
            out_w: 7,
            out_h: 5,
            ox: 0,
            oy: 0,
            n_w: 7,
            n_h: 5,
        };
        let mut out = vec![0.0; data.len()];
        resample(&v, &r, &mut out, &mut Vec::new());
        for (a, b) in out.iter().zip(&data) {
            assert!((a - *b as f32).abs() < 1e-4, "{a} vs {b}");
        }
    }

    /// Halving a constant-per-2×2-block image reproduces the block values away from borders, and a
    /// constant image stays constant (weights sum to 1).
    #[test]
    fn constant_stays_constant_and_windows_agree() {
        let data = vec![77u8; 2 * 9 * 13 * 3];
        let v = View::interleaved(&data, 3, 18, 13);
        let full = Region {
            x0: 1,
            y0: 2,
            w: 11,
            h: 15,
            out_w: 6,
            out_h: 4,
            ox: 0,
            oy: 0,
            n_w: 6,
            n_h: 4,
        };
        let mut out = vec![0.0; 3 * 6 * 4];
        resample(&v, &full, &mut out, &mut Vec::new());
        assert!(out.iter().all(|x| (x - 77.0).abs() < 1e-3));
        // A window of the output equals the same window cut from the full output.
        let grad: Vec<u8> = (0..18 * 13 * 3).map(|i| (i % 200) as u8).collect();
        let g = View::interleaved(&grad, 3, 18, 13);
        let mut all = vec![0.0; 3 * 6 * 4];
        resample(&g, &full, &mut all, &mut Vec::new());
        let win = Region {
            ox: 2,
            oy: 1,
            n_w: 3,
            n_h: 2,
            ..full
        };
        let mut part = vec![0.0; 3 * 3 * 2];
        resample(&g, &win, &mut part, &mut Vec::new());
        for ch in 0..3 {
            for y in 0..2 {
                for x in 0..3 {
                    let a = part[(ch * 2 + y) * 3 + x];
                    let b = all[(ch * 4 + y + 1) * 6 + x + 2];
                    assert!((a - b).abs() < 1e-3);
                }
            }
        }
    }

    /// The interleaved fast path and the strided path agree on the same image.
    #[test]
    fn interleaved_and_planar_layouts_agree() {
        let (c, h, w) = (3, 23, 31);
        let hwc: Vec<u8> = (0..h * w * c).map(|i| ((i * 7919) % 256) as u8).collect();
        let mut chw = vec![0u8; hwc.len()];
        for y in 0..h {
            for x in 0..w {
                for ch in 0..c {
                    chw[(ch * h + y) * w + x] = hwc[(y * w + x) * c + ch];
                }
            }
        }
        let r = Region {
            x0: 3,
            y0: 2,
            w: 25,
            h: 19,
            out_w: 11,
            out_h: 13,
            ox: 1,
            oy: 2,
            n_w: 9,
            n_h: 10,
        };
        let (mut a, mut b) = (vec![0.0; c * 90], vec![0.0; c * 90]);
        resample(&View::interleaved(&hwc, c, h, w), &r, &mut a, &mut Vec::new());
        resample(&View::planar(&chw, c, h, w), &r, &mut b, &mut Vec::new());
        assert!(a.iter().zip(&b).all(|(x, y)| (x - y).abs() < 1e-3));
        assert!(a.iter().any(|&x| x > 1.0));
    }
}

//! 2-D convolution on `ndarray` (im2col + GEMM), the reference that `gbtd verify` runs original
//! conv layers and their factorized chains with. No libtorch: one OpenBLAS GEMM per image and
//! group.
//!
//! # Conventions (those of PyTorch's `torch.nn.functional.conv2d`)
//! - Input `x`: NCHW, `(n, c, h, w)`.
//! - Kernel `W`: `(o, c / g, kh, kw)` for `g` groups; `o` and `c` are multiples of `g`.
//! - Stride `(sh, sw)`, zero padding `(ph, pw)` on both sides, dilation `(dh, dw)`, groups `g`.
//! - Output `y`: `(n, o, ho, wo)` with `ho = ⌊(h + 2·ph − dh·(kh − 1) − 1) / sh⌋ + 1` (and `wo`
//!   alike). Writing `og = o / g`, `cg = c / g` and `γ(k) = ⌊k / og⌋` for the group of output
//!   channel `k`:
//!
//!   `y[i, k, p, q] = bias[k] + Σ_{m<cg} Σ_{a<kh} Σ_{b<kw} W[k, m, a, b] ·
//!                    x[i, γ(k)·cg + m, p·sh + a·dh − ph, q·sw + b·dw − pw]`,
//!
//!   where `x` is 0 outside `0..h × 0..w` (the zero padding). Like every deep-learning framework's
//!   "convolution", this is a cross-correlation (the kernel is not flipped).
//!
//! # Method
//! For image `i` and group `γ`, the patch matrix ("im2col") `C` of shape `(cg·kh·kw, ho·wo)` has
//! `C[(m·kh + a)·kw + b, p·wo + q] = x[i, γ·cg + m, p·sh + a·dh − ph, q·sw + b·dw − pw]` (0 in the
//! padding), and the output block is one GEMM: `y[i, γ·og..(γ+1)·og] = W_γ · C`, with `W_γ` the
//! `(og, cg·kh·kw)` rows of the kernel reshaped to a matrix, written in place into the output. One
//! patch buffer is allocated per call and reused for every image and group; a 1×1 conv with stride
//! 1 and no padding multiplies the input planes directly.
use ndarray::linalg::general_mat_mul;
use ndarray::{Array2, Array4, ArrayView1, ArrayView4, Axis, s};

use crate::error::{GbtdError, Result};
use crate::layers::LayerChain;
use crate::options::check_workspace;
use crate::real::Real;

/// The geometry of a 2-D convolution: stride, zero padding, dilation (each `(height, width)`) and
/// groups, as PyTorch's `Conv2d` takes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conv2d {
    /// Step between output positions, `(sh, sw)`, each ≥ 1.
    pub stride: (usize, usize),
    /// Zeros added on each side, `(ph, pw)`.
    pub padding: (usize, usize),
    /// Spacing of the kernel taps, `(dh, dw)`, each ≥ 1.
    pub dilation: (usize, usize),
    /// Number of groups `g` ≥ 1 (`g = c` with a `(c, 1, kh, kw)` kernel is a depthwise conv).
    pub groups: usize,
}

impl Default for Conv2d {
    /// Stride 1, no padding, dilation 1, one group.
    fn default() -> Self {
        Conv2d {
            stride: (1, 1),
            padding: (0, 0),
            dilation: (1, 1),
            groups: 1,
        }
    }
}

impl Conv2d {
    /// Stride 1, dilation 1, one group and padding `((kh − 1) / 2, (kw − 1) / 2)`: for odd kernel
    /// sizes the output has the input's height and width ("same" padding).
    pub fn same(kh: usize, kw: usize) -> Self {
        Conv2d {
            padding: (kh.saturating_sub(1) / 2, kw.saturating_sub(1) / 2),
            ..Conv2d::default()
        }
    }

    /// The same geometry with another stride.
    pub fn with_stride(mut self, sh: usize, sw: usize) -> Self {
        self.stride = (sh, sw);
        self
    }

    /// The same geometry with another padding.
    pub fn with_padding(mut self, ph: usize, pw: usize) -> Self {
        self.padding = (ph, pw);
        self
    }

    /// The same geometry with another dilation.
    pub fn with_dilation(mut self, dh: usize, dw: usize) -> Self {
        self.dilation = (dh, dw);
        self
    }

    /// The same geometry with another number of groups.
    pub fn with_groups(mut self, groups: usize) -> Self {
        self.groups = groups;
        self
    }

    /// The output height and width for an input of `(h, w)` and a kernel of `(kh, kw)`:
    /// `⌊(h + 2·ph − dh·(kh − 1) − 1) / sh⌋ + 1` and alike. Errors when a stride or dilation is 0
    /// or the dilated kernel does not fit the padded input.
    pub fn output_size(&self, (h, w): (usize, usize), (kh, kw): (usize, usize)) -> Result<(usize, usize)> {
        let (sh, sw) = self.stride;
        let (dh, dw) = self.dilation;
        if sh == 0 || sw == 0 || dh == 0 || dw == 0 {
            return Err(GbtdError::Options(format!(
                "stride {:?} and dilation {:?} must be at least 1",
                self.stride, self.dilation
            )));
        }
        let one = |n: usize, k: usize, p: usize, d: usize, st: usize| -> Option<usize> {
            let span = d.checked_mul(k.checked_sub(1)?)?.checked_add(1)?;
            let padded = n.checked_add(p.checked_mul(2)?)?;
            padded.checked_sub(span).map(|r| r / st + 1)
        };
        match (
            one(h, kh, self.padding.0, dh, sh),
            one(w, kw, self.padding.1, dw, sw),
        ) {
            (Some(ho), Some(wo)) => Ok((ho, wo)),
            _ => Err(GbtdError::Shape(format!(
                "a {kh}×{kw} kernel with dilation {:?} does not fit a {h}×{w} input with padding {:?}",
                self.dilation, self.padding
            ))),
        }
    }
}

/// The output positions `lo..hi` (of `n_out`) whose tap at offset `off` (`= a·d`) reads inside
/// the input, `0 ≤ q·st + off − pad < n_in`.
fn valid_range(n_out: usize, n_in: usize, st: usize, off: usize, pad: usize) -> (usize, usize) {
    // q·st ≥ pad − off
    let lo = if pad > off { (pad - off).div_ceil(st) } else { 0 };
    // q·st ≤ n_in − 1 + pad − off
    let hi = match (n_in + pad).checked_sub(off + 1) {
        Some(m) => (m / st + 1).min(n_out),
        None => 0,
    };
    (lo.min(hi), hi)
}

/// `conv2d(x, w) + bias` with the given geometry (see the module documentation for the index
/// formula): `x` is `(n, c, h, w)`, `w` is `(o, c / g, kh, kw)`, `bias` (if any) has `o` entries;
/// returns `(n, o, ho, wo)`.
///
/// Errors: [`GbtdError::Shape`] when the shapes do not fit together (channels, groups, bias, a
/// kernel larger than the padded input), [`GbtdError::Options`] for a zero stride, dilation or
/// group count, [`GbtdError::Empty`] for an empty input or kernel, and [`GbtdError::Memory`]
/// when the patch buffer and the output would exceed [`crate::options::workspace_limit`] of the
/// input's size (checked before allocating).
pub fn conv2d<T: Real>(
    x: &ArrayView4<'_, T>,
    w: &ArrayView4<'_, T>,
    bias: Option<&ArrayView1<'_, T>>,
    geometry: &Conv2d,
) -> Result<Array4<T>> {
    let (n, c, h, wd) = x.dim();
    let (o, cg, kh, kw) = w.dim();
    let g = geometry.groups;
    if g == 0 {
        return Err(GbtdError::Options("a convolution needs groups >= 1".into()));
    }
    if [n, c, h, wd].contains(&0) || [o, cg, kh, kw].contains(&0) {
        return Err(GbtdError::Empty(format!(
            "convolution of an input {:?} with a kernel {:?}",
            x.shape(),
            w.shape()
        )));
    }
    if c % g != 0 || o % g != 0 || c / g != cg {
        return Err(GbtdError::Shape(format!(
            "a kernel {:?} with {g} group(s) needs {} input channels and output channels divisible by {g}; the input {:?} has {c}",
            w.shape(),
            cg * g,
            x.shape()
        )));
    }
    if let Some(b) = bias
        && b.len() != o
    {
        return Err(GbtdError::Shape(format!(
            "bias of {} entries for {o} output channels",
            b.len()
        )));
    }
    let (ho, wo) = geometry.output_size((h, wd), (kh, kw))?;
    let (og, k, positions) = (o / g, cg * kh * kw, ho * wo);
    let direct = kh == 1 && kw == 1 && geometry.stride == (1, 1) && geometry.padding == (0, 0);
    let elem = std::mem::size_of::<T>() as u128;
    let buffer = if direct { 0 } else { k as u128 * positions as u128 };
    let needed = (buffer + n as u128 * o as u128 * positions as u128) * elem;
    check_workspace(needed, (x.len() + w.len()) as u128 * elem, "this convolution")?;

    let x = x.as_standard_layout();
    let wstd = w.as_standard_layout();
    let wmat = wstd
        .view()
        .into_shape_with_order((o, k))
        .map_err(|e| GbtdError::internal(format!("kernel as a matrix: {e}")))?;
    let mut y = Array4::<T>::zeros((n, o, ho, wo));
    let beta = match bias {
        Some(b) => {
            for (ch, &v) in b.iter().enumerate() {
                y.slice_mut(s![.., ch, .., ..]).fill(v);
            }
            T::one()
        }
        None => T::zero(),
    };
    let mut cols = Array2::<T>::zeros((if direct { 0 } else { k }, positions));
    let xs = x
        .as_slice()
        .ok_or_else(|| GbtdError::internal("standard-layout input is not contiguous"))?;
    let rows_per_channel = kh * kw * positions;
    for i in 0..n {
        let mut yi = y
            .index_axis_mut(Axis(0), i)
            .into_shape_with_order((o, positions))
            .map_err(|e| GbtdError::internal(format!("output as a matrix: {e}")))?;
        for grp in 0..g {
            let wg = wmat.slice(s![grp * og..(grp + 1) * og, ..]);
            let mut yg = yi.slice_mut(s![grp * og..(grp + 1) * og, ..]);
            if direct {
                let planes = x
                    .index_axis(Axis(0), i)
                    .slice_move(s![grp * cg..(grp + 1) * cg, .., ..])
                    .into_shape_with_order((cg, positions))
                    .map_err(|e| GbtdError::internal(format!("input planes as a matrix: {e}")))?;
                general_mat_mul(T::one(), &wg, &planes, beta, &mut yg);
                continue;
            }
            let cs = cols
                .as_slice_mut()
                .ok_or_else(|| GbtdError::internal("patch buffer is not contiguous"))?;
            for m in 0..cg {
                let base = (i * c + grp * cg + m) * h * wd;
                im2col_channel(
                    &xs[base..base + h * wd],
                    (h, wd),
                    (kh, kw),
                    (ho, wo),
                    geometry,
                    &mut cs[m * rows_per_channel..(m + 1) * rows_per_channel],
                );
            }
            general_mat_mul(T::one(), &wg, &cols, beta, &mut yg);
        }
    }
    Ok(y)
}

/// Fills the `kh·kw` rows (each `ho·wo` long) of the patch matrix that come from one input plane
/// of `(h, w)`: row `a·kw + b`, column `p·wo + q` holds `plane[p·sh + a·dh − ph, q·sw + b·dw − pw]`,
/// or 0 in the padding.
fn im2col_channel<T: Real>(
    plane: &[T],
    (h, w): (usize, usize),
    (kh, kw): (usize, usize),
    (ho, wo): (usize, usize),
    geo: &Conv2d,
    out: &mut [T],
) {
    let (sh, sw) = geo.stride;
    let (ph, pw) = geo.padding;
    let (dh, dw) = geo.dilation;
    let positions = ho * wo;
    for a in 0..kh {
        let (p_lo, p_hi) = valid_range(ho, h, sh, a * dh, ph);
        for b in 0..kw {
            let (q_lo, q_hi) = valid_range(wo, w, sw, b * dw, pw);
            let row = &mut out[(a * kw + b) * positions..(a * kw + b + 1) * positions];
            row[..p_lo * wo].fill(T::zero());
            row[p_hi * wo..].fill(T::zero());
            for p in p_lo..p_hi {
                let ih = p * sh + a * dh - ph;
                let src = &plane[ih * w..(ih + 1) * w];
                let dst = &mut row[p * wo..(p + 1) * wo];
                dst[..q_lo].fill(T::zero());
                dst[q_hi..].fill(T::zero());
                if q_lo < q_hi {
                    let first = q_lo * sw + b * dw - pw;
                    if sw == 1 {
                        dst[q_lo..q_hi].copy_from_slice(&src[first..first + (q_hi - q_lo)]);
                    } else {
                        for (d, v) in dst[q_lo..q_hi].iter_mut().zip(src[first..].iter().step_by(sw)) {
                            *d = *v;
                        }
                    }
                }
            }
        }
    }
}

impl<T: Real> LayerChain<T> {
    /// Runs the chain on `x` (`(n, d3, h, w)`): `reduce` (1×1), then `grouped` (`kh × kw`,
    /// `groups = R`, with the stride, padding and dilation of `spatial`), then `expand` (1×1, plus
    /// `bias` if given), with no nonlinearity between them. By linearity the result equals
    /// [`conv2d`] of `x` with [`LayerChain::kernel`] and the geometry `spatial`.
    ///
    /// `spatial` is the geometry of the dense conv the chain replaces, so its `groups` must be 1.
    pub fn forward(
        &self,
        x: &ArrayView4<'_, T>,
        spatial: &Conv2d,
        bias: Option<&ArrayView1<'_, T>>,
    ) -> Result<Array4<T>> {
        self.dims()?;
        if spatial.groups != 1 {
            return Err(GbtdError::Shape(format!(
                "a layer chain replaces a dense conv (groups 1), got groups {}",
                spatial.groups
            )));
        }
        let reduced = conv2d(x, &self.reduce.view(), None, &Conv2d::default())?;
        let grouped = conv2d(
            &reduced.view(),
            &self.grouped.view(),
            None,
            &spatial.with_groups(self.groups),
        )?;
        conv2d(&grouped.view(), &self.expand.view(), bias, &Conv2d::default())
    }
}

//! The paper's Generalized Block Term Decomposition (Definition 2, Eq. 4) of a conv layer, as an
//! operator on feature maps (Eq. 7–10).
//!
//! [`GeneralizedBtd`] is the one type of the crate that stores the paper's layout: its cores are
//! `(kh, kw, d3*, d4*)`, written exactly as Eq. 8–10 index them, so that the operator can be
//! checked against the equations term by term. It is the operator form of a
//! [`crate::layers::LayerChain`]; its cores are permuted from and to the PyTorch layout only by
//! [`crate::layers::paper_from_torch`] and [`crate::layers::torch_from_paper`] (in
//! [`GeneralizedBtd::from_btd`] and [`GeneralizedBtd::kernel`]), and what users read and write
//! stays in PyTorch layout `(out, in, kh, kw)`.
//!
//! # Model and shapes (paper notation, Eq. 6)
//! A [`GeneralizedBtd`] holds `R` terms, each made of
//! - a core `G_r` of shape `(kh, kw, d3*, d4*)` (paper layout: kernel height, kernel width, input
//!   rank, output rank),
//! - `A3_r` of shape `(d3, d3*)` (input channels × input rank),
//! - `A4_r` of shape `(d4, d4*)` (output channels × output rank),
//!
//! and an elementwise `σ` ([`Sigma`]: identity, ReLU or any closure).
//!
//! # Evaluation (Eq. 8–10, followed literally)
//! The input feature map `U` is stored PyTorch-like as `(d3, H, W)` (channels first) — the paper
//! writes `U(i, j, m)` with the channel last; `U(i,j,m)` here is `u[[m, i, j]]`. With stride `s` and
//! zero padding `(ph, pw)` (PyTorch's convention; "same" padding `((kh−1)/2, (kw−1)/2)` at stride 1
//! for odd kernels is the paper's setting, where `δ` is the half-width):
//!
//! - Eq. 8: `T1_r(i, j, p) = σ( Σ_m U(i, j, m) · A3_r(m, p) )`, i.e. `T1_r = σ(U ×_channel A3_rᵀ)`;
//! - Eq. 9: `T2_r(x, y, q) = σ( Σ_p Σ_{a<kh} Σ_{b<kw} T1_r(s·x − ph + a, s·y − pw + b, p) ·
//!   G_r(a, b, p, q) )`,
//!   the k×k convolution (cross-correlation, as in PyTorch) of `T1_r` with `G_r`, where positions
//!   outside the map read 0 (zero padding is applied to `T1_r`, after σ, as a conv layer pads its
//!   input);
//! - Eq. 10: `V(x, y, c) = Σ_r Σ_q T2_r(x, y, q) · A4_r(c, q)` (no σ after the last product).
//!
//! The output `V` is `(d4, H', W')` with `H' = (H + 2ph − kh)/s + 1` and likewise `W'`.
//! With `σ = identity`, `V` is the convolution of `U` with the dense kernel
//! `X(a, b, m, c) = Σ_r Σ_{p,q} G_r(a, b, p, q) A3_r(m, p) A4_r(c, q)` (Eq. 6), which
//! [`GeneralizedBtd::kernel`] returns in PyTorch layout `(d4, d3, kh, kw)`.
use std::fmt;
use std::sync::Arc;

use ndarray::{Array2, Array3, Array4, ArrayView3, ArrayView4, Axis, s};

use crate::btd::Btd;
use crate::error::{GbtdError, Result};
use crate::layers::{paper_from_torch, torch_from_paper};
use crate::real::Real;
use crate::tensor::{Activation, multi_mode_dot};

/// The elementwise nonlinearity σ of a generalized mode-n product (Definition 1).
#[derive(Clone)]
pub enum Sigma<T> {
    /// A built-in activation (identity or ReLU).
    Act(Activation),
    /// Any elementwise function.
    Custom(Arc<dyn Fn(T) -> T + Send + Sync>),
}

impl<T: Real> Sigma<T> {
    /// σ = identity.
    pub fn identity() -> Self {
        Sigma::Act(Activation::Identity)
    }

    /// σ = ReLU.
    pub fn relu() -> Self {
        Sigma::Act(Activation::Relu)
    }

    /// σ = `f`.
    pub fn custom<F: Fn(T) -> T + Send + Sync + 'static>(f: F) -> Self {
        Sigma::Custom(Arc::new(f))
    }

    /// Applies σ to one value.
    pub fn apply(&self, v: T) -> T {
        match self {
            Sigma::Act(a) => a.apply(v),
            Sigma::Custom(f) => f(v),
        }
    }

    /// Whether σ is the built-in identity.
    pub fn is_identity(&self) -> bool {
        matches!(self, Sigma::Act(Activation::Identity))
    }
}

impl<T> Default for Sigma<T> {
    fn default() -> Self {
        Sigma::Act(Activation::Identity)
    }
}

impl<T> From<Activation> for Sigma<T> {
    fn from(a: Activation) -> Self {
        Sigma::Act(a)
    }
}

impl<T> fmt::Debug for Sigma<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Sigma::Act(a) => write!(f, "Sigma::Act({a:?})"),
            Sigma::Custom(_) => write!(f, "Sigma::Custom(..)"),
        }
    }
}

/// Stride and zero padding of the k×k convolution of Eq. 9 (PyTorch's conventions).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvGeometry {
    /// Stride `s` (≥ 1) of the spatial convolution.
    pub stride: usize,
    /// Zero padding `(ph, pw)` on each side of the height and width.
    pub padding: (usize, usize),
}

impl ConvGeometry {
    /// Stride 1 and "same" padding `((kh−1)/2, (kw−1)/2)`, the paper's setting; the kernel sizes
    /// must be odd.
    pub fn same(kh: usize, kw: usize) -> Result<Self> {
        if kh % 2 != 1 || kw % 2 != 1 {
            return Err(GbtdError::Shape(format!(
                "'same' padding needs odd kernel sizes, got {kh}×{kw}"
            )));
        }
        Ok(ConvGeometry {
            stride: 1,
            padding: ((kh - 1) / 2, (kw - 1) / 2),
        })
    }

    /// Output size `((h + 2ph − kh)/s + 1, (w + 2pw − kw)/s + 1)`, or an error if the padded map
    /// is smaller than the kernel or the stride is 0.
    pub fn output_size(&self, h: usize, w: usize, kh: usize, kw: usize) -> Result<(usize, usize)> {
        if self.stride == 0 {
            return Err(GbtdError::Options("stride must be at least 1".into()));
        }
        let (hp, wp) = (h + 2 * self.padding.0, w + 2 * self.padding.1);
        if hp < kh || wp < kw {
            return Err(GbtdError::Shape(format!(
                "a {kh}×{kw} kernel does not fit a {h}×{w} map padded by {:?}",
                self.padding
            )));
        }
        Ok(((hp - kh) / self.stride + 1, (wp - kw) / self.stride + 1))
    }
}

/// A generalized BTD of a conv layer: per-term cores `G_r (kh, kw, d3*, d4*)`, factors
/// `A3_r (d3, d3*)` and `A4_r (d4, d4*)`, and σ (see the module documentation).
#[derive(Debug, Clone)]
pub struct GeneralizedBtd<T> {
    /// `G_r`, paper layout `(kh, kw, d3*, d4*)`.
    pub cores: Vec<Array4<T>>,
    /// `A3_r`, `(d3, d3*)`.
    pub a3: Vec<Array2<T>>,
    /// `A4_r`, `(d4, d4*)`.
    pub a4: Vec<Array2<T>>,
    /// The elementwise σ of Eq. 8 and 9.
    pub sigma: Sigma<T>,
}

/// Sizes shared by all terms of a [`GeneralizedBtd`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GbtdDims {
    /// Number of terms `R`.
    pub terms: usize,
    /// Kernel height.
    pub kh: usize,
    /// Kernel width.
    pub kw: usize,
    /// Input channels `d3`.
    pub d3: usize,
    /// Output channels `d4`.
    pub d4: usize,
    /// Input rank `d3*`.
    pub d3_star: usize,
    /// Output rank `d4*`.
    pub d4_star: usize,
}

impl<T: Real> GeneralizedBtd<T> {
    /// Builds and validates (see [`GeneralizedBtd::dims`]).
    pub fn new(
        cores: Vec<Array4<T>>,
        a3: Vec<Array2<T>>,
        a4: Vec<Array2<T>>,
        sigma: Sigma<T>,
    ) -> Result<Self> {
        let g = GeneralizedBtd { cores, a3, a4, sigma };
        g.dims()?;
        Ok(g)
    }

    /// Checks the parts and returns their sizes: `R ≥ 1` terms, all cores of one shape
    /// `(kh, kw, d3*, d4*)`, all `A3_r` of shape `(d3, d3*)`, all `A4_r` of shape `(d4, d4*)`, and
    /// finite entries.
    pub fn dims(&self) -> Result<GbtdDims> {
        let r = self.cores.len();
        if r == 0 {
            return Err(GbtdError::Rank(
                "a generalized BTD needs at least one term".into(),
            ));
        }
        if self.a3.len() != r || self.a4.len() != r {
            return Err(GbtdError::Shape(format!(
                "{r} cores but {} A3 and {} A4 factors",
                self.a3.len(),
                self.a4.len()
            )));
        }
        let (kh, kw, d3s, d4s) = self.cores[0].dim();
        let (d3, d4) = (self.a3[0].nrows(), self.a4[0].nrows());
        for t in 0..r {
            if self.cores[t].dim() != (kh, kw, d3s, d4s) {
                return Err(GbtdError::Shape(format!(
                    "core {t} has shape {:?}, core 0 has {:?}",
                    self.cores[t].dim(),
                    (kh, kw, d3s, d4s)
                )));
            }
            if self.a3[t].dim() != (d3, d3s) {
                return Err(GbtdError::Shape(format!(
                    "A3 of term {t} has shape {:?}, expected ({d3}, {d3s})",
                    self.a3[t].dim()
                )));
            }
            if self.a4[t].dim() != (d4, d4s) {
                return Err(GbtdError::Shape(format!(
                    "A4 of term {t} has shape {:?}, expected ({d4}, {d4s})",
                    self.a4[t].dim()
                )));
            }
            let finite = self.cores[t]
                .iter()
                .chain(self.a3[t].iter())
                .chain(self.a4[t].iter())
                .all(|v| v.finite());
            if !finite {
                return Err(GbtdError::NonFinite(format!("term {t} of a generalized BTD")));
            }
        }
        if [kh, kw, d3s, d4s, d3, d4].contains(&0) {
            return Err(GbtdError::Empty(format!(
                "generalized BTD with a zero size: core {:?}, d3 = {d3}, d4 = {d4}",
                (kh, kw, d3s, d4s)
            )));
        }
        Ok(GbtdDims {
            terms: r,
            kh,
            kw,
            d3,
            d4,
            d3_star: d3s,
            d4_star: d4s,
        })
    }

    /// The same decomposition with another σ.
    pub fn with_sigma(mut self, sigma: Sigma<T>) -> Self {
        self.sigma = sigma;
        self
    }

    /// From a BTD of a conv kernel in PyTorch layout `(out, in, kh, kw)` = `(d4, d3, kh, kw)` that
    /// factorizes at least modes 0 and 1: `A4_r` is the factor of mode 0, `A3_r` the factor of
    /// mode 1, and `G_r` is the core, with any factors of the spatial modes 2 and 3 multiplied into
    /// it, permuted to `(kh, kw, d3*, d4*)`. With `σ = identity` the operator is the convolution
    /// with [`Btd::reconstruct`].
    pub fn from_btd(b: &Btd<T>, sigma: Sigma<T>) -> Result<Self> {
        b.validate()?;
        if b.shape.len() != 4 {
            return Err(GbtdError::Shape(format!(
                "a conv kernel (out, in, kh, kw) has order 4, this BTD has shape {:?}",
                b.shape
            )));
        }
        let pos = |m: usize| b.modes.iter().position(|&x| x == m);
        let (Some(i_out), Some(i_in)) = (pos(0), pos(1)) else {
            return Err(GbtdError::Shape(format!(
                "the BTD must factorize the channel modes 0 and 1, it factorizes {:?}",
                b.modes
            )));
        };
        let spatial: Vec<usize> = (0..b.modes.len()).filter(|&i| b.modes[i] >= 2).collect();
        let spatial_modes: Vec<usize> = spatial.iter().map(|&i| b.modes[i]).collect();
        let mut cores = Vec::with_capacity(b.terms.len());
        let mut a3 = Vec::with_capacity(b.terms.len());
        let mut a4 = Vec::with_capacity(b.terms.len());
        for t in &b.terms {
            let views: Vec<_> = spatial.iter().map(|&i| t.factors[i].view()).collect();
            let core = multi_mode_dot(&t.core.view(), &views, Some(&spatial_modes), None, false)?;
            // (d4*, d3*, kh, kw) -> (kh, kw, d3*, d4*)
            let core = paper_from_torch(&core.view())?.into_dimensionality::<ndarray::Ix4>()?;
            cores.push(core);
            a3.push(t.factors[i_in].clone());
            a4.push(t.factors[i_out].clone());
        }
        GeneralizedBtd::new(cores, a3, a4, sigma)
    }

    /// The dense kernel `X = Σ_r G_r ×_3 A3_r ×_4 A4_r` (Eq. 6, σ ignored) in PyTorch layout
    /// `(d4, d3, kh, kw)`.
    pub fn kernel(&self) -> Result<Array4<T>> {
        let d = self.dims()?;
        let mut x = Array4::<T>::zeros((d.d4, d.d3, d.kh, d.kw));
        for t in 0..d.terms {
            // (kh, kw, d3*, d4*) -> (d4*, d3*, kh, kw), then ×0 A4_r ×1 A3_r.
            let g = torch_from_paper(&self.cores[t].view().into_dyn())?;
            let views = [self.a4[t].view(), self.a3[t].view()];
            let xt = multi_mode_dot(&g.view(), &views, Some(&[0, 1]), None, false)?;
            x += &xt.into_dimensionality::<ndarray::Ix4>()?;
        }
        Ok(x)
    }

    /// Number of parameters `R·(kh·kw·d3*·d4* + d3·d3* + d4·d4*)`.
    pub fn n_params(&self) -> Result<usize> {
        let d = self.dims()?;
        Ok(d.terms * (d.kh * d.kw * d.d3_star * d.d4_star + d.d3 * d.d3_star + d.d4 * d.d4_star))
    }

    /// Evaluates the operator on one feature map `u` of shape `(d3, H, W)` at stride 1 with "same"
    /// padding (odd kernels), following Eq. 8–10 (see the module documentation).
    pub fn apply(&self, u: &ArrayView3<'_, T>) -> Result<Array3<T>> {
        let d = self.dims()?;
        self.apply_with(u, ConvGeometry::same(d.kh, d.kw)?)
    }

    /// Evaluates the operator on one feature map `u` of shape `(d3, H, W)` with the given stride and
    /// padding, following Eq. 8–10 literally, term by term. Returns `(d4, H', W')`.
    pub fn apply_with(&self, u: &ArrayView3<'_, T>, geom: ConvGeometry) -> Result<Array3<T>> {
        let d = self.dims()?;
        let (c, h, w) = u.dim();
        if c != d.d3 {
            return Err(GbtdError::Shape(format!(
                "input has {c} channels, the operator expects d3 = {}",
                d.d3
            )));
        }
        if u.iter().any(|v| !v.finite()) {
            return Err(GbtdError::NonFinite("input feature map".into()));
        }
        let (ho, wo) = geom.output_size(h, w, d.kh, d.kw)?;
        let u2 = u.as_standard_layout();
        let u2 = u2.view().into_shape_with_order((c, h * w))?;
        let mut v = Array2::<T>::zeros((d.d4, ho * wo));
        for t in 0..d.terms {
            // Eq. 8: T1_r = σ(A3_rᵀ · U), channels (d3*) × pixels.
            let mut t1 = self.a3[t].t().dot(&u2);
            t1.mapv_inplace(|x| self.sigma.apply(x));
            let t1 = t1.into_shape_with_order((d.d3_star, h, w))?;
            // Eq. 9: T2_r = σ(conv(T1_r, G_r)) through the patch matrix (d3*·kh·kw) × (H'·W').
            let cols = im2col(&t1.view(), d.kh, d.kw, geom, ho, wo);
            // G_r as (d4*, d3*·kh·kw), columns in the patch order (p, a, b).
            let gmat = torch_from_paper(&self.cores[t].view().into_dyn())?
                .into_shape_with_order((d.d4_star, d.d3_star * d.kh * d.kw))?;
            let mut t2 = gmat.dot(&cols);
            t2.mapv_inplace(|x| self.sigma.apply(x));
            // Eq. 10: V += A4_r · T2_r.
            v += &self.a4[t].dot(&t2);
        }
        Ok(v.into_shape_with_order((d.d4, ho, wo))?)
    }

    /// [`GeneralizedBtd::apply_with`] on a batch `(N, d3, H, W)`, returning `(N, d4, H', W')`.
    pub fn apply_batch(&self, u: &ArrayView4<'_, T>, geom: ConvGeometry) -> Result<Array4<T>> {
        let d = self.dims()?;
        let (n, _, h, w) = u.dim();
        let (ho, wo) = geom.output_size(h, w, d.kh, d.kw)?;
        let mut out = Array4::<T>::zeros((n, d.d4, ho, wo));
        for (img, mut o) in u.outer_iter().zip(out.outer_iter_mut()) {
            o.assign(&self.apply_with(&img, geom)?);
        }
        Ok(out)
    }
}

/// The patch matrix of a `(C, H, W)` map for a `kh × kw` cross-correlation: row `p·kh·kw + a·kw + b`,
/// column `x·wo + y` holds `t(p, s·x − ph + a, s·y − pw + b)`, or 0 outside the map.
fn im2col<T: Real>(
    t: &ArrayView3<'_, T>,
    kh: usize,
    kw: usize,
    geom: ConvGeometry,
    ho: usize,
    wo: usize,
) -> Array2<T> {
    let (c, h, w) = t.dim();
    let (ph, pw) = geom.padding;
    let st = geom.stride;
    let mut cols = Array2::<T>::zeros((c * kh * kw, ho * wo));
    for p in 0..c {
        let tp = t.index_axis(Axis(0), p);
        for a in 0..kh {
            for b in 0..kw {
                let mut row = cols.row_mut(p * kh * kw + a * kw + b);
                for x in 0..ho {
                    let i = (st * x + a) as isize - ph as isize;
                    if i < 0 || i >= h as isize {
                        continue;
                    }
                    let src = tp.slice(s![i as usize, ..]);
                    for y in 0..wo {
                        let j = (st * y + b) as isize - pw as isize;
                        if j >= 0 && j < w as isize {
                            row[x * wo + y] = src[j as usize];
                        }
                    }
                }
            }
        }
    }
    cols
}

//! The factorized form of one compressed layer, as the weights of the layers that replace it.
//!
//! # A conv with `G` groups: [`GroupedChain`]
//! A conv with kernel `W` `(out, in/G, kh, kw)` and `groups = G` computes `G` independent convs,
//! group `g` mapping input channels `g·in/G..(g+1)·in/G` to output channels
//! `g·out/G..(g+1)·out/G` with the kernel `W_g = W[g·out/G..(g+1)·out/G]`. Each `W_g` is
//! decomposed on its own into a [`LayerChain`] with the same `R` and ranks `(r_out, r_in)`, and the
//! `G` chains are stacked into three convs:
//!
//! | conv | weight | groups |
//! | --- | --- | --- |
//! | 1×1 reduce | `(G·R·r_in, in/G, 1, 1)`, rows `g·R·r_in..` = chain `g`'s `reduce` | `G` |
//! | `kh×kw` middle | `(G·R·r_out, r_in, kh, kw)`, rows `g·R·r_out..` = chain `g`'s `grouped` | `G·R` |
//! | 1×1 expand | `(out, R·r_out, 1, 1)`, rows `g·out/G..` = chain `g`'s `expand` | `G` |
//!
//! Group `g` of each stacked conv reads exactly the channels that chain `g` produced, so the
//! three convs compute `G` chains side by side: by linearity, the grouped conv whose kernel
//! stacks the chains' kernels ([`GroupedChain::kernel`]). With `G = 1` this is one `LayerChain`.
//! The middle conv keeps the original conv's stride, padding and dilation; the 1×1 convs have
//! stride 1 and no padding.
//!
//! # A linear layer: [`SvdChain`]
//! `W` `(out, in)` ≈ `U_r Σ_r V_rᵀ` (the truncated SVD, the best rank-`r` approximation in the
//! Frobenius norm) becomes two linear layers: `first = V_rᵀ` `(r, in)` without bias, then
//! `second = U_r Σ_r` `(out, r)` with the original bias.
use ndarray::{Array2, Array4, ArrayView1, ArrayView2, ArrayView4, ArrayViewD, Axis, concatenate, s};
use ndarray_linalg::SVDDC;
use ndarray_linalg::svddc::JobSvd;

use crate::conv::{Conv2d, conv2d};
use crate::error::{GbtdError, Result};
use crate::layers::LayerChain;
use crate::real::Real;

/// The chains of the `G` groups of one conv, stacked into three convs (see the module
/// documentation).
#[derive(Debug, Clone, PartialEq)]
pub struct GroupedChain<T> {
    /// One chain per group, in group order; all with the same `R` and ranks.
    pub parts: Vec<LayerChain<T>>,
}

impl<T: Real> GroupedChain<T> {
    /// Checks that the parts have equal shapes and groups.
    pub fn new(parts: Vec<LayerChain<T>>) -> Result<Self> {
        let Some(first) = parts.first() else {
            return Err(GbtdError::Empty(
                "a grouped chain needs at least one group".into(),
            ));
        };
        first.dims()?;
        for (g, p) in parts.iter().enumerate() {
            p.dims()?;
            if p.groups != first.groups
                || p.reduce.dim() != first.reduce.dim()
                || p.grouped.dim() != first.grouped.dim()
                || p.expand.dim() != first.expand.dim()
            {
                return Err(GbtdError::Shape(format!(
                    "the chain of group {g} differs in shape or groups from that of group 0"
                )));
            }
        }
        Ok(GroupedChain { parts })
    }

    /// Splits the three stacked weights of a chain with `groups = [G, G·R, G]` (as written in a
    /// compressed checkpoint) into its `G` per-group chains; the inverse of
    /// [`GroupedChain::weights`].
    pub fn from_weights(weights: [Array4<T>; 3], groups: [usize; 3]) -> Result<Self> {
        let [reduce, grouped, expand] = weights;
        let [g, gr, g2] = groups;
        if g == 0 || g2 != g || gr == 0 || gr % g != 0 {
            return Err(GbtdError::Shape(format!(
                "a stacked chain has groups [G, G·R, G] with G, R >= 1, got {groups:?}"
            )));
        }
        let split = |a: &Array4<T>, what: &str| -> Result<Vec<Array4<T>>> {
            let n = a.len_of(Axis(0));
            if !n.is_multiple_of(g) {
                return Err(GbtdError::Shape(format!(
                    "the {what} conv has {n} output channels, not divisible by {g} groups"
                )));
            }
            let per = n / g;
            Ok((0..g)
                .map(|k| a.slice(s![k * per..(k + 1) * per, .., .., ..]).to_owned())
                .collect())
        };
        let (rs, ms, es) = (
            split(&reduce, "reduce")?,
            split(&grouped, "middle")?,
            split(&expand, "expand")?,
        );
        let parts = rs
            .into_iter()
            .zip(ms)
            .zip(es)
            .map(|((r, m), e)| LayerChain::new(r, m, e, gr / g))
            .collect::<Result<Vec<_>>>()?;
        GroupedChain::new(parts)
    }

    /// `G`, the groups of the original conv.
    pub fn groups(&self) -> usize {
        self.parts.len()
    }

    /// The groups of the three stacked convs: `[G, G·R, G]`.
    pub fn conv_groups(&self) -> [usize; 3] {
        let g = self.groups();
        [g, g * self.parts[0].groups, g]
    }

    /// The three stacked weights: reduce, middle, expand (see the module documentation).
    pub fn weights(&self) -> Result<[Array4<T>; 3]> {
        let stack = |f: fn(&LayerChain<T>) -> &Array4<T>| -> Result<Array4<T>> {
            let views: Vec<_> = self.parts.iter().map(|p| f(p).view()).collect();
            Ok(concatenate(Axis(0), &views)?)
        };
        Ok([
            stack(|p| &p.reduce)?,
            stack(|p| &p.grouped)?,
            stack(|p| &p.expand)?,
        ])
    }

    /// Number of weights of the three convs.
    pub fn n_params(&self) -> usize {
        self.parts.iter().map(LayerChain::n_params).sum()
    }

    /// The grouped kernel `(out, in/G, kh, kw)` the chain computes: the parts' kernels stacked
    /// along the output mode.
    pub fn kernel(&self) -> Result<Array4<T>> {
        let ks = self
            .parts
            .iter()
            .map(LayerChain::kernel)
            .collect::<Result<Vec<_>>>()?;
        let views: Vec<_> = ks.iter().map(|k| k.view()).collect();
        Ok(concatenate(Axis(0), &views)?)
    }

    /// Runs the three stacked convs on `x` `(n, in, h, w)`, the middle one with the stride,
    /// padding and dilation of `spatial` (whose `groups` must be `G`), the last with `bias`. By
    /// linearity this equals [`conv2d`] of `x` with [`GroupedChain::kernel`] and `spatial`.
    pub fn forward(
        &self,
        x: &ArrayView4<'_, T>,
        spatial: &Conv2d,
        bias: Option<&ArrayView1<'_, T>>,
    ) -> Result<Array4<T>> {
        let [g, gr, _] = self.conv_groups();
        if spatial.groups != g {
            return Err(GbtdError::Shape(format!(
                "this chain replaces a conv with {g} groups, the geometry says {}",
                spatial.groups
            )));
        }
        let [reduce, middle, expand] = self.weights()?;
        let one = Conv2d::default().with_groups(g);
        let y = conv2d(x, &reduce.view(), None, &one)?;
        let y = conv2d(&y.view(), &middle.view(), None, &spatial.with_groups(gr))?;
        conv2d(&y.view(), &expand.view(), bias, &one)
    }
}

/// A linear layer's weight `(out, in)` as two linear layers (see the module documentation).
#[derive(Debug, Clone, PartialEq)]
pub struct SvdChain<T> {
    /// `V_rᵀ`, `(r, in)`: the first linear layer, without bias.
    pub first: Array2<T>,
    /// `U_r Σ_r`, `(out, r)`: the second linear layer, which takes the original bias.
    pub second: Array2<T>,
}

impl<T: Real> SvdChain<T> {
    /// The truncated SVD of rank `rank` of `w` `(out, in)`, by LAPACK `gesdd` in `T`'s
    /// precision. Errors: a weight that is not 2-D, a rank outside `1..=min(out, in)`, NaN.
    pub fn truncated_svd(w: &ArrayViewD<'_, T>, rank: usize) -> Result<Self> {
        let w: ArrayView2<'_, T> = w.view().into_dimensionality().map_err(|_| {
            GbtdError::Shape(format!(
                "a linear layer's weight is 2-D (out, in), got shape {:?}",
                w.shape()
            ))
        })?;
        let (o, i) = w.dim();
        if rank == 0 || rank > o.min(i) {
            return Err(GbtdError::Rank(format!(
                "SVD rank {rank} of a {o}×{i} weight must be between 1 and {}",
                o.min(i)
            )));
        }
        if w.iter().any(|v| !v.finite()) {
            return Err(GbtdError::NonFinite("linear weight".into()));
        }
        let a = w.as_standard_layout().into_owned();
        let (u, sv, vt) = a.svddc(JobSvd::Some)?;
        let (u, vt) = match (u, vt) {
            (Some(u), Some(vt)) => (u, vt),
            _ => return Err(GbtdError::internal("gesdd returned no singular vectors")),
        };
        let mut second = u.slice(s![.., ..rank]).to_owned();
        for (mut col, &sk) in second.columns_mut().into_iter().zip(sv.iter()) {
            col.mapv_inplace(|v| v * T::from_f64_lossy(sk.to_f64_exact()));
        }
        Ok(SvdChain {
            first: vt.slice(s![..rank, ..]).to_owned(),
            second,
        })
    }

    /// The rank `r`.
    pub fn rank(&self) -> usize {
        self.first.nrows()
    }

    /// Number of weights of the two layers.
    pub fn n_params(&self) -> usize {
        self.first.len() + self.second.len()
    }

    /// The weight `second · first` `(out, in)` the two layers compute.
    pub fn weight(&self) -> Array2<T> {
        self.second.dot(&self.first)
    }
}

/// The factorized form of one compressed layer.
#[derive(Debug, Clone, PartialEq)]
pub enum Factorized<T> {
    /// A conv (dense or grouped) as three convs.
    Conv(GroupedChain<T>),
    /// A linear layer as two linear layers.
    Linear(SvdChain<T>),
}

impl<T: Real> Factorized<T> {
    /// Number of weights (no biases).
    pub fn n_params(&self) -> usize {
        match self {
            Factorized::Conv(c) => c.n_params(),
            Factorized::Linear(l) => l.n_params(),
        }
    }

    /// The weight the factorized layers compute, in the original layer's shape.
    pub fn weight(&self) -> Result<ndarray::ArrayD<T>> {
        Ok(match self {
            Factorized::Conv(c) => c.kernel()?.into_dyn(),
            Factorized::Linear(l) => l.weight().into_dyn(),
        })
    }
}

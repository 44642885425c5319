//! Conv-kernel layouts and the conversions between kernel factorizations and layer weights.
//!
//! # Kernel layouts: the one conversion
//! PyTorch (and every file or flag `gbtd` reads or writes) stores a conv kernel as
//! `(out, in, kh, kw)`. The paper writes `X ∈ R^{d1×d2×d3×d4}` = `(kh, kw, in, out)`. The two are
//! related by `X_paper(a, b, m, c) = W_torch(c, m, a, b)`: [`paper_from_torch`] and
//! [`torch_from_paper`] are the only place in the crate where this permutation is written. The
//! one type that stores the paper's layout is the operator [`GeneralizedBtd`] (cores
//! `(kh, kw, d3*, d4*)`), whose conversions live here.
//!
//! # Factorization ↔ layers (paper §3.2, Figure 1(c))
//! A generalized BTD with `R` terms `(G_r, A3_r, A4_r)` ([`GeneralizedBtd`]) is the chain of three
//! convolutions held by a [`LayerChain`], all weights in PyTorch layout:
//! 1. `reduce`, a 1×1 conv `d3 → R·d3*`, weight `(R·d3*, d3, 1, 1)`:
//!    `reduce[r·d3* + p, m, 0, 0] = A3_r(m, p)` (rows `r·d3*..(r+1)·d3*` are `A3_rᵀ`);
//! 2. `grouped`, a `kh × kw` conv `R·d3* → R·d4*` with `groups = R`, weight `(R·d4*, d3*, kh, kw)`:
//!    `grouped[r·d4* + q, p, a, b] = G_r(a, b, p, q)` (group `r` is `G_r`);
//! 3. `expand`, a 1×1 conv `R·d4* → d4`, weight `(d4, R·d4*, 1, 1)`:
//!    `expand[c, r·d4* + q, 0, 0] = A4_r(c, q)` (columns `r·d4*..(r+1)·d4*` are `A4_r`).
//!
//! With no nonlinearity between them the chain is the dense conv with kernel
//! `X = Σ_r G_r ×_3 A3_r ×_4 A4_r` (Eq. 6); with σ after the first two convs it is the generalized
//! BTD operator of Eq. 8–10.
//!
//! Special cases:
//! - **Tucker-2** (ResNet, WRN): `R = 1`, the Tucker core is the grouped (here dense) conv.
//! - **Collective** (Eq. 12): one chain per kernel; all chains share `reduce` and `grouped`, and
//!   kernel `l`'s `expand` holds its blocks `A4_r^l`.
//! - **CP** of rank `K` of a kernel `(out, in, kh, kw)`, `W = Σ_k w_k a_k ∘ b_k ∘ c_k ∘ e_k`: a chain
//!   with `R = K` terms of rank `d3* = d4* = 1` whose spatial cores are rank one,
//!   `G_k(a, b, 0, 0) = w_k c_k(a) e_k(b)`, `A3_k = b_k`, `A4_k = a_k`: a 1×1 conv `in → K`, a
//!   depthwise `kh × kw` conv (`groups = K`), and a 1×1 conv `K → out`.
use ndarray::{Array1, Array2, Array4, ArrayD, ArrayViewD, Axis, s};

use crate::btd::{BlockTerm, Btd, lapack_ready};
use crate::collective::Collective;
use crate::cp::Cp;
use crate::error::{GbtdError, Result};
use crate::generalized::{GbtdDims, GeneralizedBtd, Sigma};
use crate::linalg::{leading_left_singular_vectors, singular_values};
use crate::options::Convergence;
use crate::real::Real;
use crate::tensor::validate_modes;
use crate::tucker::Tucker;
use ndarray_linalg::QR;

fn check_kernel_order(k: &ArrayViewD<'_, impl Clone>, what: &str) -> Result<()> {
    if k.ndim() != 4 {
        return Err(GbtdError::Shape(format!(
            "{what} must have 4 modes, got shape {:?}",
            k.shape()
        )));
    }
    Ok(())
}

/// PyTorch layout `(out, in, kh, kw)` → paper layout `(kh, kw, in, out)`:
/// `X(a, b, m, c) = W(c, m, a, b)`.
pub fn paper_from_torch<T: Clone>(w: &ArrayViewD<'_, T>) -> Result<ArrayD<T>> {
    check_kernel_order(w, "a PyTorch conv kernel (out, in, kh, kw)")?;
    Ok(w.view()
        .permuted_axes(vec![2, 3, 1, 0])
        .as_standard_layout()
        .into_owned())
}

/// Paper layout `(kh, kw, in, out)` → PyTorch layout `(out, in, kh, kw)`:
/// `W(c, m, a, b) = X(a, b, m, c)`.
pub fn torch_from_paper<T: Clone>(x: &ArrayViewD<'_, T>) -> Result<ArrayD<T>> {
    check_kernel_order(x, "a paper-layout conv kernel (kh, kw, in, out)")?;
    Ok(x.view()
        .permuted_axes(vec![3, 2, 0, 1])
        .as_standard_layout()
        .into_owned())
}

/// The three conv layers of a (generalized) BTD of a conv kernel, PyTorch layout (see the module
/// documentation for the exact index mapping).
#[derive(Debug, Clone, PartialEq)]
pub struct LayerChain<T> {
    /// 1×1 conv `d3 → R·d3*`: `(R·d3*, d3, 1, 1)`.
    pub reduce: Array4<T>,
    /// `kh × kw` grouped conv `R·d3* → R·d4*`, `groups = R`: `(R·d4*, d3*, kh, kw)`.
    pub grouped: Array4<T>,
    /// 1×1 conv `R·d4* → d4`: `(d4, R·d4*, 1, 1)`.
    pub expand: Array4<T>,
    /// Number of groups `R` of `grouped`.
    pub groups: usize,
}

impl<T: Real> LayerChain<T> {
    /// Checks the weights fit together and returns the sizes of the equivalent generalized BTD.
    pub fn dims(&self) -> Result<GbtdDims> {
        let r = self.groups;
        if r == 0 {
            return Err(GbtdError::Rank("a layer chain needs groups >= 1".into()));
        }
        let (rd3s, d3, rh, rw) = self.reduce.dim();
        let (rd4s, d3s, kh, kw) = self.grouped.dim();
        let (d4, rd4s_e, eh, ew) = self.expand.dim();
        if (rh, rw) != (1, 1) || (eh, ew) != (1, 1) {
            return Err(GbtdError::Shape(format!(
                "reduce and expand must be 1×1 convs, got {rh}×{rw} and {eh}×{ew}"
            )));
        }
        if rd3s % r != 0 || rd4s % r != 0 {
            return Err(GbtdError::Shape(format!(
                "{rd3s} reduced and {rd4s} grouped output channels are not divisible by {r} groups"
            )));
        }
        if rd3s / r != d3s {
            return Err(GbtdError::Shape(format!(
                "grouped conv takes {d3s} channels per group, reduce gives {} per group",
                rd3s / r
            )));
        }
        if rd4s_e != rd4s {
            return Err(GbtdError::Shape(format!(
                "expand takes {rd4s_e} channels, the grouped conv gives {rd4s}"
            )));
        }
        let dims = GbtdDims {
            terms: r,
            kh,
            kw,
            d3,
            d4,
            d3_star: d3s,
            d4_star: rd4s / r,
        };
        if [kh, kw, d3, d4, d3s, dims.d4_star].contains(&0) {
            return Err(GbtdError::Empty(format!(
                "layer chain with a zero size: {dims:?}"
            )));
        }
        let finite = self
            .reduce
            .iter()
            .chain(self.grouped.iter())
            .chain(self.expand.iter())
            .all(|v| v.finite());
        if !finite {
            return Err(GbtdError::NonFinite("layer chain weights".into()));
        }
        Ok(dims)
    }

    /// Builds and validates a chain.
    pub fn new(reduce: Array4<T>, grouped: Array4<T>, expand: Array4<T>, groups: usize) -> Result<Self> {
        let c = LayerChain {
            reduce,
            grouped,
            expand,
            groups,
        };
        c.dims()?;
        Ok(c)
    }

    /// Number of weights of the three layers (no biases).
    pub fn n_params(&self) -> usize {
        self.reduce.len() + self.grouped.len() + self.expand.len()
    }

    /// The layers of a generalized BTD (σ is not stored in the weights).
    pub fn from_generalized(g: &GeneralizedBtd<T>) -> Result<Self> {
        let d = g.dims()?;
        let (r, d3s, d4s) = (d.terms, d.d3_star, d.d4_star);
        let mut reduce = Array4::<T>::zeros((r * d3s, d.d3, 1, 1));
        let mut grouped = Array4::<T>::zeros((r * d4s, d3s, d.kh, d.kw));
        let mut expand = Array4::<T>::zeros((d.d4, r * d4s, 1, 1));
        for t in 0..r {
            // reduce[t·d3* + p, m] = A3_t(m, p)
            reduce
                .slice_mut(s![t * d3s..(t + 1) * d3s, .., 0, 0])
                .assign(&g.a3[t].t());
            // grouped[t·d4* + q, p, a, b] = G_t(a, b, p, q)
            grouped
                .slice_mut(s![t * d4s..(t + 1) * d4s, .., .., ..])
                .assign(&torch_from_paper(&g.cores[t].view().into_dyn())?);
            // expand[c, t·d4* + q] = A4_t(c, q)
            expand
                .slice_mut(s![.., t * d4s..(t + 1) * d4s, 0, 0])
                .assign(&g.a4[t]);
        }
        Ok(LayerChain {
            reduce,
            grouped,
            expand,
            groups: r,
        })
    }

    /// The generalized BTD of the chain, with the given σ (inverse of
    /// [`LayerChain::from_generalized`]).
    pub fn to_generalized(&self, sigma: Sigma<T>) -> Result<GeneralizedBtd<T>> {
        let d = self.dims()?;
        let (d3s, d4s) = (d.d3_star, d.d4_star);
        let mut cores = Vec::with_capacity(d.terms);
        let mut a3 = Vec::with_capacity(d.terms);
        let mut a4 = Vec::with_capacity(d.terms);
        for t in 0..d.terms {
            a3.push(
                self.reduce
                    .slice(s![t * d3s..(t + 1) * d3s, .., 0, 0])
                    .t()
                    .to_owned(),
            );
            let g = self.grouped.slice(s![t * d4s..(t + 1) * d4s, .., .., ..]);
            cores.push(paper_from_torch(&g.into_dyn())?.into_dimensionality()?);
            a4.push(self.expand.slice(s![.., t * d4s..(t + 1) * d4s, 0, 0]).to_owned());
        }
        GeneralizedBtd::new(cores, a3, a4, sigma)
    }

    /// The layers of a BTD of a conv kernel in PyTorch layout that factorizes modes 0 and 1
    /// (factors of spatial modes, if any, are multiplied into the cores); see
    /// [`GeneralizedBtd::from_btd`].
    pub fn from_btd(b: &Btd<T>) -> Result<Self> {
        LayerChain::from_generalized(&GeneralizedBtd::from_btd(b, Sigma::identity())?)
    }

    /// The partial BTD of the kernel `(d4, d3, kh, kw)` that the chain represents: modes `[0, 1]`,
    /// term `r` with core `(d4*, d3*, kh, kw)` = group `r` of `grouped` and factors
    /// `[A4_r, A3_r]` (inverse of [`LayerChain::from_btd`] for a BTD on modes `[0, 1]`). The
    /// convergence record is empty.
    pub fn to_btd(&self) -> Result<Btd<T>> {
        let d = self.dims()?;
        let (d3s, d4s) = (d.d3_star, d.d4_star);
        let terms = (0..d.terms)
            .map(|t| BlockTerm {
                core: self
                    .grouped
                    .slice(s![t * d4s..(t + 1) * d4s, .., .., ..])
                    .to_owned()
                    .into_dyn(),
                factors: vec![
                    self.expand.slice(s![.., t * d4s..(t + 1) * d4s, 0, 0]).to_owned(),
                    self.reduce
                        .slice(s![t * d3s..(t + 1) * d3s, .., 0, 0])
                        .t()
                        .to_owned(),
                ],
            })
            .collect();
        Ok(Btd {
            terms,
            modes: vec![0, 1],
            shape: vec![d.d4, d.d3, d.kh, d.kw],
            convergence: Convergence::default(),
        })
    }

    /// The layers of a Tucker decomposition of a conv kernel in PyTorch layout that factorizes
    /// modes 0 and 1 (Tucker-2; factors of spatial modes are multiplied into the core): `R = 1`,
    /// `reduce = A_1ᵀ`, `grouped = G`, `expand = A_0`.
    pub fn from_tucker(t: &Tucker<T>) -> Result<Self> {
        if t.factors.len() != t.modes.len() || t.core.ndim() != 4 {
            return Err(GbtdError::Shape(format!(
                "a Tucker of a 4-way kernel with one factor per mode is needed, \
                 got core {:?}, {} factors, modes {:?}",
                t.core.shape(),
                t.factors.len(),
                t.modes
            )));
        }
        validate_modes(&t.modes, 4)?;
        let b = Btd {
            terms: vec![BlockTerm {
                core: t.core.clone(),
                factors: t.factors.clone(),
            }],
            modes: t.modes.clone(),
            shape: t.shape(),
            convergence: t.convergence.clone(),
        };
        LayerChain::from_btd(&b)
    }

    /// The Tucker-2 decomposition (modes `[0, 1]`) of a chain with `groups = 1`. The factors are
    /// made orthonormal as [`Tucker`] requires: `A = Q·T` (QR) for `A_0 = expand` and
    /// `A_1 = reduceᵀ`, with the triangular `T`s multiplied into the core, which leaves the
    /// represented kernel unchanged.
    pub fn to_tucker(&self) -> Result<Tucker<T>> {
        let d = self.dims()?;
        if d.terms != 1 {
            return Err(GbtdError::Rank(format!(
                "a Tucker-2 is a chain with 1 group, this one has {}",
                d.terms
            )));
        }
        if d.d4_star > d.d4 || d.d3_star > d.d3 {
            return Err(GbtdError::Rank(format!(
                "Tucker ranks ({}, {}) exceed the channels ({}, {})",
                d.d4_star, d.d3_star, d.d4, d.d3
            )));
        }
        let b = self.to_btd()?;
        let t = &b.terms[0];
        let (q0, r0) = lapack_ready(&t.factors[0].view()).qr()?;
        let (q1, r1) = lapack_ready(&t.factors[1].view()).qr()?;
        let core = crate::tensor::mode_dot(&t.core.view(), &r0.view(), 0)?;
        let core = crate::tensor::mode_dot(&core.view(), &r1.view(), 1)?;
        Ok(Tucker {
            core,
            factors: vec![q0, q1],
            modes: vec![0, 1],
            convergence: Convergence::default(),
        })
    }

    /// The layers of a CP decomposition of a conv kernel `(out, in, kh, kw)` (see the module
    /// documentation): `R = K`, `d3* = d4* = 1`, `reduce[k, :] = b_k`, `grouped[k, 0] =
    /// w_k · c_k e_kᵀ` (depthwise), `expand[:, k] = a_k`.
    pub fn from_cp(c: &Cp<T>) -> Result<Self> {
        if c.factors.len() != 4 {
            return Err(GbtdError::Shape(format!(
                "a CP of a 4-way kernel is needed, got {} factors",
                c.factors.len()
            )));
        }
        let k = c.weights.len();
        if k == 0 || c.factors.iter().any(|f| f.ncols() != k) {
            return Err(GbtdError::Shape(format!(
                "CP factors need {k} >= 1 columns (the number of weights)"
            )));
        }
        let (d4, d3, kh, kw) = (
            c.factors[0].nrows(),
            c.factors[1].nrows(),
            c.factors[2].nrows(),
            c.factors[3].nrows(),
        );
        let mut reduce = Array4::<T>::zeros((k, d3, 1, 1));
        let mut grouped = Array4::<T>::zeros((k, 1, kh, kw));
        let mut expand = Array4::<T>::zeros((d4, k, 1, 1));
        for j in 0..k {
            reduce.slice_mut(s![j, .., 0, 0]).assign(&c.factors[1].column(j));
            expand.slice_mut(s![.., j, 0, 0]).assign(&c.factors[0].column(j));
            let w = c.weights[j];
            for a in 0..kh {
                for b in 0..kw {
                    grouped[[j, 0, a, b]] = w * c.factors[2][[a, j]] * c.factors[3][[b, j]];
                }
            }
        }
        LayerChain::new(reduce, grouped, expand, k)
    }

    /// The CP decomposition of a chain with `d3* = d4* = 1` (inverse of [`LayerChain::from_cp`]).
    /// Each depthwise spatial core `G_k` (`kh × kw`) is factored by its SVD as `s_1 u_1 v_1ᵀ`; the
    /// conversion fails with [`GbtdError::Rank`] if a core is not rank one within `tol`
    /// (`s_2 > tol · s_1`). Columns are normalised to unit norm with the scale in the weights.
    pub fn to_cp(&self, tol: f64) -> Result<Cp<T>> {
        let d = self.dims()?;
        if d.d3_star != 1 || d.d4_star != 1 {
            return Err(GbtdError::Rank(format!(
                "a CP chain has d3* = d4* = 1, this one has ({}, {})",
                d.d3_star, d.d4_star
            )));
        }
        let k = d.terms;
        let mut f = [
            Array2::<T>::zeros((d.d4, k)),
            Array2::<T>::zeros((d.d3, k)),
            Array2::<T>::zeros((d.kh, k)),
            Array2::<T>::zeros((d.kw, k)),
        ];
        let mut weights = Array1::<T>::zeros(k);
        for j in 0..k {
            let g = lapack_ready(&self.grouped.slice(s![j, 0, .., ..]));
            let sv = singular_values(&g.view())?;
            let s1 = sv[0].to_f64_exact();
            if sv.len() > 1 && sv[1].to_f64_exact() > tol * s1 {
                return Err(GbtdError::Rank(format!(
                    "spatial core {j} is not rank one: singular values {} and {}",
                    s1,
                    sv[1].to_f64_exact()
                )));
            }
            let (u, _) = leading_left_singular_vectors(&g.view(), 1)?;
            let u = u.column(0).to_owned();
            // g ≈ s1 u vᵀ with v = gᵀu / s1.
            let gv = g.t().dot(&u);
            let a = self.expand.slice(s![.., j, 0, 0]).to_owned();
            let b = self.reduce.slice(s![j, .., 0, 0]).to_owned();
            let (na, nb, nv) = (vnorm(&a), vnorm(&b), vnorm(&gv));
            weights[j] = na * nb * nv;
            for (col, (v, n)) in [(0, (&a, na)), (1, (&b, nb)), (2, (&u, T::one())), (3, (&gv, nv))] {
                if n > T::zero() {
                    f[col].column_mut(j).assign(&v.mapv(|x| x / n));
                }
            }
        }
        Ok(Cp {
            weights,
            factors: f.into_iter().collect(),
            convergence: Convergence::default(),
        })
    }

    /// The dense kernel `(d4, d3, kh, kw)` the chain computes without nonlinearity.
    pub fn kernel(&self) -> Result<Array4<T>> {
        self.to_generalized(Sigma::identity())?.kernel()
    }

    /// One chain per kernel of a collective factorization (Eq. 12): all share `reduce` and
    /// `grouped` (the chains hold equal copies), and chain `l`'s `expand` holds the blocks
    /// `A4_r^l` of kernel `l`.
    pub fn from_collective(c: &Collective<T>) -> Result<Vec<Self>> {
        c.validate()?;
        (0..c.n_kernels())
            .map(|l| LayerChain::from_btd(&c.kernel_btd(l)?))
            .collect()
    }

    /// The concatenated-kernel BTD of chains that share `reduce`, `grouped` and `groups` (inverse
    /// of [`LayerChain::from_collective`]): modes `[0, 1]` of `(Σ_l d4_l, d3, kh, kw)`, with each
    /// `A4_r` stacking the chains' blocks in order; also returns the `d4_l`.
    pub fn collective_btd_from_chains(chains: &[Self]) -> Result<(Btd<T>, Vec<usize>)> {
        let Some(first) = chains.first() else {
            return Err(GbtdError::Empty("no layer chains".into()));
        };
        first.dims()?;
        for (l, c) in chains.iter().enumerate() {
            c.dims()?;
            if c.groups != first.groups || c.reduce != first.reduce || c.grouped != first.grouped {
                return Err(GbtdError::Shape(format!(
                    "chain {l} does not share reduce, grouped and groups with chain 0"
                )));
            }
        }
        let btds = chains.iter().map(|c| c.to_btd()).collect::<Result<Vec<_>>>()?;
        let out_channels: Vec<usize> = btds.iter().map(|b| b.shape[0]).collect();
        let mut b = btds[0].clone();
        for (r, t) in b.terms.iter_mut().enumerate() {
            let blocks: Vec<_> = btds.iter().map(|bl| bl.terms[r].factors[0].view()).collect();
            t.factors[0] = ndarray::concatenate(Axis(0), &blocks)?;
        }
        b.shape[0] = out_channels.iter().sum();
        Ok((b, out_channels))
    }
}

fn vnorm<T: Real>(v: &Array1<T>) -> T {
    v.iter().fold(T::zero(), |a, &x| a + x * x).sqrt()
}

//! Collective tensor factorization (paper §4.1, Eq. 12): `L` conv kernels that share their input
//! channels and spatial size are factorized jointly, sharing the cores `G_r` and the input factors
//! `A3_r`, with one output-factor block per kernel.
//!
//! # Model and shapes (PyTorch layout)
//! Kernel `l` is `X_l` of shape `(d4_l, d3, kh, kw)` (`out, in, kh, kw`); the `d4_l` may differ.
//! They are concatenated along the output mode into `X⁺` of shape `(Σ_l d4_l, d3, kh, kw)` (the
//! paper's 4th-mode concatenation `[X_1*, …, X_L*]`), and `X⁺` gets a partial BTD on modes
//! `(0, 1)` with rank `(d4*, d3*)` and `R` terms ([`crate::btd`]):
//!
//! `X⁺ = Σ_r G_r ×_0 A4_r ×_1 A3_r`, `G_r: (d4*, d3*, kh, kw)`, `A3_r: (d3, d3*)`,
//! `A4_r: (Σ_l d4_l, d4*)`.
//!
//! Rows `o_l..o_l + d4_l` of `A4_r` (`o_l = Σ_{k<l} d4_k`) form kernel `l`'s block `A4_r^l`, so
//! `X_l = Σ_r G_r ×_0 A4_r^l ×_1 A3_r`: every kernel is a BTD of rank `(d4*, d3*)` with the cores
//! and `A3` tied across kernels ("decomposing each `X_l` separately and then sharing the first two
//! factor terms", §4.1). Parameters: `R·(kh·kw·d3*·d4* + d3·d3* + Σ_l d4_l·d4*)`, against
//! `Σ_l R·(kh·kw·d3*·d4* + d3·d3* + d4_l·d4*)` for `L` independent BTDs of the same rank.
use ndarray::{ArrayD, ArrayView2, ArrayViewD, Axis, s};

use crate::btd::{BlockTerm, Btd, BtdOptions, btd};
use crate::error::{GbtdError, Result};
use crate::options::{Acceleration, Init, IterOptions, Progress, iterative_setters};
use crate::real::Real;
use crate::tensor::{relative_error, validate_tensor};

/// The ranks of the two channel modes of every term of a collective factorization: `d4*` of the
/// output mode (mode 0 in PyTorch layout) and `d3*` of the input mode (mode 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelRanks {
    /// `d4*`, the rank of the output-channel mode.
    pub out: usize,
    /// `d3*`, the rank of the input-channel mode.
    pub input: usize,
}

impl ChannelRanks {
    /// `d4* = out`, `d3* = input`.
    pub fn new(out: usize, input: usize) -> Self {
        ChannelRanks { out, input }
    }
}

/// Options of [`collective_btd`], mirroring [`BtdOptions`] with the modes fixed to the channel
/// modes `(0, 1)` of the concatenated kernel.
#[derive(Debug, Clone)]
pub struct CollectiveOptions<'a, T> {
    /// Number of block terms `R` (the groups of the shared k×k conv).
    pub terms: usize,
    /// `d4*` and `d3*`: the ranks of the output and input channel modes.
    pub rank: ChannelRanks,
    /// Iteration count, tolerance and seed.
    pub iter: IterOptions,
    /// Initialisation. [`Init::Given`] takes two matrices: `Â_4 = [A4_0 … A4_{R-1}]` of shape
    /// `(Σ_l d4_l, R·d4*)` and `Â_3 = [A3_0 … A3_{R-1}]` of shape `(d3, R·d3*)`.
    pub init: Init<T>,
    /// Extrapolation between sweeps ([`Acceleration::LineSearch`] by default).
    pub acceleration: Acceleration,
    /// Called after each sweep with the sweep number and the relative error of `X⁺`.
    pub progress: Progress<'a>,
}

impl<T> CollectiveOptions<'_, T> {
    /// `terms` terms of ranks `rank`, SVD initialisation, default iteration settings,
    /// line-search acceleration and no progress callback.
    pub fn new(terms: usize, rank: ChannelRanks) -> Self {
        CollectiveOptions {
            terms,
            rank,
            iter: IterOptions::default(),
            init: Init::Svd,
            acceleration: Acceleration::default(),
            progress: Progress::none(),
        }
    }

    /// The same options with another [`Acceleration`].
    pub fn with_acceleration(mut self, acceleration: Acceleration) -> Self {
        self.acceleration = acceleration;
        self
    }
}

iterative_setters!(CollectiveOptions);

/// The result of [`collective_btd`] (see the module documentation).
#[derive(Debug, Clone, PartialEq)]
pub struct Collective<T> {
    /// The BTD of the concatenated kernel `X⁺` (`modes = [0, 1]`; each term's factors are
    /// `[A4_r, A3_r]`, its core `G_r` is `(d4*, d3*, kh, kw)`).
    pub btd: Btd<T>,
    /// `d4_l` of each kernel, in input order.
    pub out_channels: Vec<usize>,
    /// `‖X_l − X̂_l‖ / ‖X_l‖` for each kernel.
    pub rel_errors: Vec<f64>,
}

impl<T: Real> Collective<T> {
    /// Number of kernels `L`.
    pub fn n_kernels(&self) -> usize {
        self.out_channels.len()
    }

    /// Number of terms `R`.
    pub fn n_terms(&self) -> usize {
        self.btd.n_terms()
    }

    /// First output row of kernel `l` in `X⁺`, `o_l = Σ_{k<l} d4_k`.
    pub fn offset(&self, l: usize) -> usize {
        self.out_channels[..l.min(self.out_channels.len())].iter().sum()
    }

    /// Checks the shapes: the BTD factorizes exactly modes `[0, 1]` of an order-4 tensor whose
    /// mode 0 has `Σ_l d4_l` rows, and `L ≥ 1`.
    pub fn validate(&self) -> Result<()> {
        self.btd.validate()?;
        if self.btd.shape.len() != 4 || self.btd.modes != [0, 1] {
            return Err(GbtdError::Shape(format!(
                "a collective BTD factorizes modes [0, 1] of a 4-way kernel, got modes {:?} of shape {:?}",
                self.btd.modes, self.btd.shape
            )));
        }
        if self.out_channels.is_empty() || self.out_channels.contains(&0) {
            return Err(GbtdError::Empty(format!(
                "output channels {:?}",
                self.out_channels
            )));
        }
        let total: usize = self.out_channels.iter().sum();
        if total != self.btd.shape[0] {
            return Err(GbtdError::Shape(format!(
                "output channels {:?} sum to {total}, the concatenated kernel has {}",
                self.out_channels, self.btd.shape[0]
            )));
        }
        Ok(())
    }

    fn check_kernel(&self, l: usize) -> Result<()> {
        self.validate()?;
        if l >= self.n_kernels() {
            return Err(GbtdError::Shape(format!(
                "kernel {l} requested of a collective factorization of {} kernels",
                self.n_kernels()
            )));
        }
        Ok(())
    }

    /// The shared core `G_r`, PyTorch layout `(d4*, d3*, kh, kw)`.
    pub fn core(&self, r: usize) -> Option<&ArrayD<T>> {
        self.btd.terms.get(r).map(|t| &t.core)
    }

    /// The shared input factor `A3_r` (`d3 × d3*`).
    pub fn a3(&self, r: usize) -> Option<ArrayView2<'_, T>> {
        self.btd
            .terms
            .get(r)
            .and_then(|t| t.factors.get(1))
            .map(|f| f.view())
    }

    /// Kernel `l`'s block `A4_r^l` (`d4_l × d4*`): rows `o_l..o_l + d4_l` of `A4_r`.
    pub fn a4_block(&self, l: usize, r: usize) -> Result<ArrayView2<'_, T>> {
        self.check_kernel(l)?;
        let t =
            self.btd.terms.get(r).ok_or_else(|| {
                GbtdError::Shape(format!("term {r} requested of {} terms", self.btd.n_terms()))
            })?;
        let o = self.offset(l);
        Ok(t.factors[0].slice(s![o..o + self.out_channels[l], ..]))
    }

    /// Kernel `l`'s BTD: shape `(d4_l, d3, kh, kw)`, term `r` with core `G_r` and factors
    /// `[A4_r^l, A3_r]` (shared cores and `A3`, the kernel's own `A4` blocks).
    pub fn kernel_btd(&self, l: usize) -> Result<Btd<T>> {
        self.check_kernel(l)?;
        let mut terms = Vec::with_capacity(self.n_terms());
        for r in 0..self.n_terms() {
            let t = &self.btd.terms[r];
            terms.push(BlockTerm {
                core: t.core.clone(),
                factors: vec![self.a4_block(l, r)?.to_owned(), t.factors[1].clone()],
            });
        }
        let mut shape = self.btd.shape.clone();
        shape[0] = self.out_channels[l];
        Ok(Btd {
            terms,
            modes: vec![0, 1],
            shape,
            convergence: self.btd.convergence.clone(),
        })
    }

    /// The approximation `X̂_l` of kernel `l`, `(d4_l, d3, kh, kw)`.
    pub fn reconstruct_kernel(&self, l: usize) -> Result<ArrayD<T>> {
        self.kernel_btd(l)?.reconstruct()
    }

    /// The approximations of all kernels, in input order.
    pub fn reconstruct(&self) -> Result<Vec<ArrayD<T>>> {
        (0..self.n_kernels())
            .map(|l| self.reconstruct_kernel(l))
            .collect()
    }

    /// Parameters of the collective form, `R·(kh·kw·d3*·d4* + d3·d3* + Σ_l d4_l·d4*)` (the stored
    /// size of [`Collective::btd`]).
    pub fn n_params(&self) -> usize {
        self.btd.n_params()
    }

    /// Parameters of `L` independent BTDs of the same `R` and rank,
    /// `Σ_l R·(kh·kw·d3*·d4* + d3·d3* + d4_l·d4*)`: each kernel stores its own cores and `A3`.
    pub fn n_params_independent(&self) -> usize {
        self.btd
            .terms
            .iter()
            .map(|t| {
                let shared = t.core.len() + t.factors.get(1).map_or(0, |f| f.len());
                let d4s = t.factors.first().map_or(0, |f| f.ncols());
                self.out_channels
                    .iter()
                    .map(|&d4| shared + d4 * d4s)
                    .sum::<usize>()
            })
            .sum()
    }
}

/// Collective factorization of `kernels` (PyTorch layout `(d4_l, d3, kh, kw)`, equal `d3`, `kh`,
/// `kw`), Eq. 12: a partial BTD of their concatenation along the output mode (see the module
/// documentation), calling `opts.progress(sweep, rel_error of X⁺)` after each sweep.
///
/// Errors: [`GbtdError::Empty`] for no kernels or an empty kernel, [`GbtdError::Shape`] for a
/// kernel that is not 4-way or disagrees with the first on `(d3, kh, kw)`,
/// [`GbtdError::NonFinite`], and every error of [`crate::btd::btd`] (ranks, terms, options).
pub fn collective_btd<T: Real>(
    kernels: &[ArrayViewD<'_, T>],
    opts: &CollectiveOptions<'_, T>,
) -> Result<Collective<T>> {
    let Some(first) = kernels.first() else {
        return Err(GbtdError::Empty("collective factorization of no kernels".into()));
    };
    for (l, k) in kernels.iter().enumerate() {
        validate_tensor(k, &format!("kernel {l}"))?;
        if k.ndim() != 4 {
            return Err(GbtdError::Shape(format!(
                "kernel {l} has shape {:?}, expected (out, in, kh, kw)",
                k.shape()
            )));
        }
        if k.shape()[1..] != first.shape()[1..] {
            return Err(GbtdError::Shape(format!(
                "kernel {l} has shape {:?}, kernel 0 has {:?}: (in, kh, kw) must agree",
                k.shape(),
                first.shape()
            )));
        }
    }
    let out_channels: Vec<usize> = kernels.iter().map(|k| k.shape()[0]).collect();
    let x = ndarray::concatenate(Axis(0), kernels)?;
    let bopts = BtdOptions {
        terms: opts.terms,
        rank: vec![opts.rank.out, opts.rank.input],
        modes: Some(vec![0, 1]),
        iter: opts.iter,
        init: opts.init.clone(),
        acceleration: opts.acceleration,
        progress: opts.progress,
    };
    let b = btd(&x.view(), &bopts)?;
    let mut c = Collective {
        btd: b,
        out_channels,
        rel_errors: Vec::new(),
    };
    c.rel_errors = kernels
        .iter()
        .enumerate()
        .map(|(l, k)| relative_error(k, &c.reconstruct_kernel(l)?.view()))
        .collect::<Result<Vec<_>>>()?;
    Ok(c)
}

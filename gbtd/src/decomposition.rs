//! What every fitted decomposition of one tensor offers, whatever its method: the
//! [`Decomposition`] trait (implemented by [`Tucker`], [`Cp`] and [`Btd`]), and the [`Method`]
//! names used on the command line and in factors files.
use std::fmt;

use ndarray::ArrayD;

use crate::btd::Btd;
use crate::cp::Cp;
use crate::error::Result;
use crate::layers::LayerChain;
use crate::options::Convergence;
use crate::real::Real;
use crate::tucker::Tucker;

/// A decomposition of one tensor: it rebuilds the tensor, counts its stored values, reports its
/// fit, describes its factorized modes and names its parts, and converts to a chain of conv
/// layers when the tensor is a conv kernel.
pub trait Decomposition<T: Real>: fmt::Debug {
    /// The shape of the represented tensor.
    fn shape(&self) -> Vec<usize>;

    /// The factorized modes (all modes for CP).
    fn modes(&self) -> Vec<usize>;

    /// The ranks, one per factorized mode (`[R]` for CP; the first term's ranks for a BTD).
    fn ranks(&self) -> Vec<usize>;

    /// Number of terms: `R` for CP and BTD, 1 for Tucker.
    fn terms(&self) -> usize;

    /// The full tensor the decomposition represents.
    fn reconstruct(&self) -> Result<ArrayD<T>>;

    /// Number of stored values (cores, factors and weights).
    fn n_params(&self) -> usize;

    /// The fit's error history and iteration count (empty for a decomposition built by hand or
    /// read from a file).
    fn convergence(&self) -> &Convergence;

    /// The chain of conv layers (1×1, grouped `kh × kw`, 1×1) that computes the decomposed conv
    /// kernel, which must be 4-way in PyTorch layout `(out, in, kh, kw)`.
    fn to_layers(&self) -> Result<LayerChain<T>>;

    /// The stored parts with their names: `core` and `factor.{m}` (Tucker), `weights` and
    /// `factor.{m}` (CP), `term.{t}.core` and `term.{t}.factor.{m}` (BTD), where `m` is the mode a
    /// factor multiplies. These are the tensors of a factors file ([`crate::formats::factors`]).
    fn named_tensors(&self) -> Vec<(String, ArrayD<T>)>;
}

/// The decomposition methods of `gbtd decompose --method` and of a factors file's `method` key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// Tucker (HOOI) on all modes, or on the modes given.
    Tucker,
    /// Tucker-2: partial Tucker on two modes (the channel modes `(0, 1)` of a conv kernel).
    Tucker2,
    /// CP (PARAFAC) by ALS on all modes.
    Cp,
    /// Block term decomposition, partial on the channel modes of a conv kernel.
    Btd,
}

impl Method {
    /// The name used in files and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Tucker => "tucker",
            Method::Tucker2 => "tucker2",
            Method::Cp => "cp",
            Method::Btd => "btd",
        }
    }

    /// Parses `tucker`, `tucker2`, `cp` or `btd`.
    pub fn parse(s: &str) -> Option<Method> {
        [Method::Tucker, Method::Tucker2, Method::Cp, Method::Btd]
            .into_iter()
            .find(|m| m.as_str() == s)
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl<T: Real> Decomposition<T> for Tucker<T> {
    fn shape(&self) -> Vec<usize> {
        Tucker::shape(self)
    }
    fn modes(&self) -> Vec<usize> {
        self.modes.clone()
    }
    fn ranks(&self) -> Vec<usize> {
        self.rank()
    }
    fn terms(&self) -> usize {
        1
    }
    fn reconstruct(&self) -> Result<ArrayD<T>> {
        Tucker::reconstruct(self)
    }
    fn n_params(&self) -> usize {
        Tucker::n_params(self)
    }
    fn convergence(&self) -> &Convergence {
        &self.convergence
    }
    fn to_layers(&self) -> Result<LayerChain<T>> {
        LayerChain::from_tucker(self)
    }
    fn named_tensors(&self) -> Vec<(String, ArrayD<T>)> {
        let mut out = vec![("core".to_string(), self.core.clone())];
        for (f, &m) in self.factors.iter().zip(&self.modes) {
            out.push((format!("factor.{m}"), f.clone().into_dyn()));
        }
        out
    }
}

impl<T: Real> Decomposition<T> for Cp<T> {
    fn shape(&self) -> Vec<usize> {
        Cp::shape(self)
    }
    fn modes(&self) -> Vec<usize> {
        (0..self.factors.len()).collect()
    }
    fn ranks(&self) -> Vec<usize> {
        vec![self.rank()]
    }
    fn terms(&self) -> usize {
        self.rank()
    }
    fn reconstruct(&self) -> Result<ArrayD<T>> {
        Cp::reconstruct(self)
    }
    fn n_params(&self) -> usize {
        Cp::n_params(self)
    }
    fn convergence(&self) -> &Convergence {
        &self.convergence
    }
    fn to_layers(&self) -> Result<LayerChain<T>> {
        LayerChain::from_cp(self)
    }
    fn named_tensors(&self) -> Vec<(String, ArrayD<T>)> {
        let mut out = vec![("weights".to_string(), self.weights.clone().into_dyn())];
        for (m, f) in self.factors.iter().enumerate() {
            out.push((format!("factor.{m}"), f.clone().into_dyn()));
        }
        out
    }
}

impl<T: Real> Decomposition<T> for Btd<T> {
    fn shape(&self) -> Vec<usize> {
        self.shape.clone()
    }
    fn modes(&self) -> Vec<usize> {
        self.modes.clone()
    }
    fn ranks(&self) -> Vec<usize> {
        self.rank()
    }
    fn terms(&self) -> usize {
        self.n_terms()
    }
    fn reconstruct(&self) -> Result<ArrayD<T>> {
        Btd::reconstruct(self)
    }
    fn n_params(&self) -> usize {
        Btd::n_params(self)
    }
    fn convergence(&self) -> &Convergence {
        &self.convergence
    }
    fn to_layers(&self) -> Result<LayerChain<T>> {
        LayerChain::from_btd(self)
    }
    fn named_tensors(&self) -> Vec<(String, ArrayD<T>)> {
        let mut out = Vec::new();
        for (t, term) in self.terms.iter().enumerate() {
            out.push((format!("term.{t}.core"), term.core.clone()));
            for (f, &m) in term.factors.iter().zip(&self.modes) {
                out.push((format!("term.{t}.factor.{m}"), f.clone().into_dyn()));
            }
        }
        out
    }
}

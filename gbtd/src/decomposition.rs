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

/// The decomposition methods: `gbtd decompose --method`, `gbtd compress --method`, a factors
/// file's `method` key and the Python package's functions all name one of these.
///
/// For a conv kernel `(out, in, kh, kw)` factorized on its channel modes `[0, 1]` (what `compress`
/// does), each method is a chain of three convs ([`crate::layers::LayerChain`]) with `R` groups in
/// the middle and per-term ranks `(r_out, r_in)`: Tucker-2 has `R = 1`, BTD `R = terms`, CP of
/// rank `K` has `R = K` and `r_out = r_in = 1` ([`Method::chain_dims`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// Tucker (HOOI) on all modes, or on the modes given.
    Tucker,
    /// Tucker-2: partial Tucker on two modes (the channel modes `(0, 1)` of a conv kernel).
    Tucker2,
    /// CP (PARAFAC) by ALS on all modes.
    Cp,
    /// Block term decomposition with `terms` block terms, partial on the channel modes of a
    /// conv kernel.
    Btd {
        /// `R`, the number of block terms (the groups of the chain's middle conv).
        terms: usize,
    },
}

impl Method {
    /// The name used in files and on the command line: `tucker`, `tucker2`, `cp` or `btd`.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Tucker => "tucker",
            Method::Tucker2 => "tucker2",
            Method::Cp => "cp",
            Method::Btd { .. } => "btd",
        }
    }

    /// Parses `tucker`, `tucker2`, `cp` or `btd`; `btd` gets `terms` block terms (the other
    /// methods ignore it).
    pub fn parse(s: &str, terms: usize) -> Option<Method> {
        match s {
            "tucker" => Some(Method::Tucker),
            "tucker2" => Some(Method::Tucker2),
            "cp" => Some(Method::Cp),
            "btd" => Some(Method::Btd { terms }),
            _ => None,
        }
    }

    /// Whether this is a block term decomposition (any number of terms).
    pub fn is_btd(self) -> bool {
        matches!(self, Method::Btd { .. })
    }

    /// How many ranks a conv layer compressed by this method takes: 1 (`[K]`) for CP, 2
    /// (`[r_out, r_in]`, per term for BTD) otherwise.
    pub fn n_ranks(self) -> usize {
        match self {
            Method::Cp => 1,
            _ => 2,
        }
    }

    /// `(R, r_out, r_in)` of the conv-layer chain for a conv kernel compressed with `ranks`
    /// (`[r_out, r_in]`, or `[K]` for CP): the chain's middle conv has `R` groups of `r_in`
    /// input and `r_out` output channels.
    pub fn chain_dims(self, ranks: &[usize]) -> (usize, usize, usize) {
        match self {
            Method::Tucker | Method::Tucker2 => (1, ranks[0], ranks[1]),
            Method::Btd { terms } => (terms, ranks[0], ranks[1]),
            Method::Cp => (ranks[0], 1, 1),
        }
    }

    /// The weights of the chain for a dense conv kernel of `shape` `(out, in, kh, kw)` (any
    /// trailing spatial modes multiply into `kh·kw`) with `ranks`:
    /// `R·(r_in·in + r_out·r_in·kh·kw + out·r_out)` with `(R, r_out, r_in)` from
    /// [`Method::chain_dims`] (CP: `K·(in + kh·kw + out)`).
    pub fn chain_params(self, shape: &[usize], ranks: &[usize]) -> usize {
        let (o, i) = (shape[0], shape[1]);
        let s: usize = shape[2..].iter().product();
        let (r, ro, ri) = self.chain_dims(ranks);
        r * (ri * i + ro * ri * s + o * ro)
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

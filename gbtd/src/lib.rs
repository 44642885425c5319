//! # gbtd — Generalized Block Term Decomposition
//!
//! The math core of the CRU-Net toolkit ("Sharing Residual Units Through Collective Tensor
//! Factorization", Chen et al.): tensor algebra, Tucker, CP, Block Term Decomposition, the paper's
//! generalized BTD, and collective factorization of stacked convolution kernels, on `ndarray`
//! tensors with LAPACK/BLAS (OpenBLAS) kernels. It does not depend on libtorch.
//!
//! Conventions:
//! - Tensors are `ndarray::ArrayD<T>` with `T` = `f32` or `f64` ([`Real`]). Modes count from 0.
//! - Unfolding is row-major, as in TensorLy (see [`tensor`]).
//! - Everything user-facing stores conv kernels in PyTorch layout `(out, in, kh, kw)`.
pub mod btd;
pub mod collective;
pub mod cp;
pub mod display;
pub mod error;
pub mod generalized;
pub mod io;
pub mod layers;
pub mod linalg;
pub mod openblas;
pub mod options;
pub mod parallel;
#[doc(hidden)]
pub mod peers;
pub mod random;
pub mod real;
pub mod tensor;
pub mod tucker;

pub use error::{GbtdError, Result};
pub use real::Real;
pub use tensor::{
    Activation, fold, generalized_mode_dot, inner, khatri_rao, kron, mode_dot, multi_mode_dot, norm,
    relative_error, unfold,
};

// Link OpenBLAS (CBLAS for ndarray's matrix products).
extern crate blas_src;

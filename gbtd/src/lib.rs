//! # gbtd — Generalized Block Term Decomposition
//!
//! The math core of the CRU-Net toolkit ("Sharing Residual Units Through Collective Tensor
//! Factorization", Chen et al.): tensor algebra, Tucker, CP, Block Term Decomposition, the paper's
//! generalized BTD, and collective factorization of stacked convolution kernels, on `ndarray`
//! tensors with LAPACK/BLAS (OpenBLAS) kernels. It does not depend on libtorch.
//!
//! Each decomposition is one function taking one options struct, as in TensorLy's decomposition
//! module ([`tucker::tucker`], [`cp::parafac`], [`btd::btd`], [`collective::collective_btd`];
//! see [`options`]); their results implement [`Decomposition`] (rebuild, count, convert to conv
//! layers). [`formats`] reads `.npy`, `.npz` and `.safetensors` tensors and stores
//! decompositions in factors files. The `gbtd` program is behind the default `cli` feature;
//! `default-features = false` gives the library without its command-line dependencies.
//!
//! Conventions:
//! - Tensors are `ndarray::ArrayD<T>` with `T` = `f32` or `f64` ([`Real`]). Modes count from 0.
//! - Unfolding is row-major, as in TensorLy (see [`tensor`]).
//! - Everything user-facing stores conv kernels in PyTorch layout `(out, in, kh, kw)`.
pub mod btd;
pub mod collective;
pub mod compress;
pub mod conv;
pub mod cp;
pub mod decomposition;
pub mod display;
pub mod error;
pub mod fit;
pub mod formats;
pub mod generalized;
pub mod layers;
mod layout;
pub mod linalg;
pub mod openblas;
pub mod options;
pub mod parallel;
pub mod random;
pub mod ranks;
pub mod real;
pub mod tensor;
pub mod tucker;
// PyTorch checkpoints: the two torch.save container formats and the restricted pickle reader.
pub mod pth;

pub use decomposition::{Decomposition, Method};
pub use error::{GbtdError, Result};
pub use real::Real;
pub use tensor::{
    Activation, fold, generalized_mode_dot, inner, khatri_rao, kron, mode_dot, multi_mode_dot, norm,
    relative_error, unfold,
};

// Link OpenBLAS (CBLAS for ndarray's matrix products).
extern crate blas_src;

//! Typed errors for every fallible operation of the crate. User input never panics: shapes,
//! ranks, non-finite values and empty tensors are reported through [`GbtdError`].
use thiserror::Error;

/// Errors returned by `gbtd`'s algebra and decompositions.
#[derive(Debug, Error)]
pub enum GbtdError {
    /// Two operands do not fit together (for example a factor whose column count differs from
    /// the mode size it multiplies).
    #[error("shape mismatch: {0}")]
    Shape(String),
    /// A requested rank exceeds the dimension it factorizes, or is zero.
    #[error("invalid rank: {0}")]
    Rank(String),
    /// The input holds NaN or infinite values.
    #[error("non-finite input: {0}")]
    NonFinite(String),
    /// A mode list is invalid: empty, a mode out of range for the tensor's order, or a mode listed
    /// twice. Every function that takes modes reports these mistakes with this variant.
    #[error("invalid modes: {0}")]
    Mode(String),
    /// The input tensor has no elements or no modes.
    #[error("empty tensor: {0}")]
    Empty(String),
    /// An option is out of its valid range (for example a negative tolerance).
    #[error("invalid option: {0}")]
    Options(String),
    /// The decomposition's estimated factor and workspace memory exceeds the limit of
    /// [`crate::options::check_workspace`]; refused before anything large is allocated.
    #[error("too large: {0}")]
    Memory(String),
    /// A progress callback asked to stop (see [`crate::options::Progress::interruptible`]).
    #[error("interrupted")]
    Interrupted,
    /// A LAPACK routine reported a failure.
    #[error("linear algebra failure: {0}")]
    Linalg(String),
    /// An internal invariant does not hold: a bug in `gbtd`, not a problem with the input.
    /// Please report it with the input's shape and the options used.
    #[error("internal error (a bug in gbtd, please report it): {0}")]
    Internal(String),
}

impl GbtdError {
    /// An [`GbtdError::Internal`] error with the given description.
    pub(crate) fn internal(what: impl Into<String>) -> Self {
        GbtdError::Internal(what.into())
    }
}

impl From<ndarray_linalg::error::LinalgError> for GbtdError {
    fn from(e: ndarray_linalg::error::LinalgError) -> Self {
        GbtdError::Linalg(e.to_string())
    }
}

impl From<ndarray::ShapeError> for GbtdError {
    fn from(e: ndarray::ShapeError) -> Self {
        GbtdError::Shape(e.to_string())
    }
}

/// Result alias used throughout the crate.
pub type Result<T> = std::result::Result<T, GbtdError>;

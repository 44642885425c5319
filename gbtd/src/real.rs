//! The element types the crate computes with: `f32` and `f64`.
use ndarray::ScalarOperand;
use ndarray_linalg::{Lapack, Scalar};

/// A real floating-point element type backed by LAPACK: implemented for `f32` and `f64`.
///
/// Use the [`Scalar`] methods (`sqrt`, `abs`, ...) and the conversion helpers below; the trait
/// deliberately does not also pull in `num_traits::Float`, whose methods would clash.
pub trait Real: Lapack + Scalar<Real = Self> + ScalarOperand + PartialOrd + Send + Sync {
    /// Converts from `f64` (rounding for `f32`).
    fn from_f64_lossy(x: f64) -> Self;
    /// Converts to `f64` exactly.
    fn to_f64_exact(self) -> f64;
    /// Machine epsilon of the type.
    fn epsilon() -> Self;
    /// Whether the value is neither NaN nor infinite.
    fn finite(self) -> bool;
}

impl Real for f32 {
    fn from_f64_lossy(x: f64) -> Self {
        x as f32
    }
    fn to_f64_exact(self) -> f64 {
        self as f64
    }
    fn epsilon() -> Self {
        f32::EPSILON
    }
    fn finite(self) -> bool {
        self.is_finite()
    }
}

impl Real for f64 {
    fn from_f64_lossy(x: f64) -> Self {
        x
    }
    fn to_f64_exact(self) -> f64 {
        self
    }
    fn epsilon() -> Self {
        f64::EPSILON
    }
    fn finite(self) -> bool {
        self.is_finite()
    }
}

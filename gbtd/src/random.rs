//! Seeded random numbers: every decomposition is deterministic for a given `seed`.
use ndarray::{ArrayD, IxDyn};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

use crate::real::Real;

/// The generator used throughout the crate (ChaCha8, portable across platforms).
pub type Rng = ChaCha8Rng;

/// A generator seeded with `seed`.
pub fn rng(seed: u64) -> Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

/// A tensor of the given shape with i.i.d. standard normal entries.
pub fn randn<T: Real>(shape: &[usize], rng: &mut Rng) -> ArrayD<T> {
    ArrayD::from_shape_simple_fn(IxDyn(shape), || {
        let v: f64 = StandardNormal.sample(rng);
        T::from_f64_lossy(v)
    })
}

/// A matrix with i.i.d. standard normal entries.
pub fn randn2<T: Real>(rows: usize, cols: usize, rng: &mut Rng) -> ndarray::Array2<T> {
    ndarray::Array2::from_shape_simple_fn((rows, cols), || {
        let v: f64 = StandardNormal.sample(rng);
        T::from_f64_lossy(v)
    })
}

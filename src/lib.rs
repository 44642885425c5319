//! Facade over the toolkit's two crates: [`gbtd`] (the tensor-decomposition core, no libtorch)
//! and [`netgen`] (architectures, parameter/FLOP counts and tch networks).
pub use gbtd;
pub use netgen;

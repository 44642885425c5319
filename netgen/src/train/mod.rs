//! Training and evaluation of netgen networks through tch.
//!
//! - [`source`]: what the loop reads batches from ([`TrainData`]), an adapter for
//!   [`crate::data::Data`], and a small in-memory data set for tests and benches.
//! - [`recipe`]: the optimisation recipe (`--recipe modern|paper`, learning-rate schedules).
//! - [`sgd`]: SGD with momentum / Nesterov and decoupled-from-BN weight decay, on tch tensors.
//! - [`checkpoint`]: atomic writes of weights and optimiser state.
//! - [`metrics`], [`plot`]: `metrics.csv` and `curves.png` of a run directory.
//! - [`budget`]: wall-clock budgets (`--budget 10m`) turned into a number of steps.
//! - [`trainer`]: the loop itself, with resume, NaN stop, Ctrl-C and `--stop-after-steps`.
//! - [`eval`]: a forward-only pass over the test split (top-1, top-5, mean loss).
//!
//! # Run directory
//! `spec.json` (the network), `config.json` ([`TrainConfig`], every resolved option),
//! `metrics.csv` (one row per evaluation), `curves.png`, `last.safetensors` and `best.safetensors`
//! (weights and BN statistics with torchvision-style names), `state.safetensors` (momentum buffers
//! named `momentum.<parameter>`, and the loop position under `meta.*`).
pub mod budget;
pub mod checkpoint;
pub mod config;
pub mod eval;
pub mod metrics;
pub mod plot;
pub mod recipe;
pub mod sgd;
pub mod source;
pub mod trainer;

pub use config::TrainConfig;
pub use eval::{EvalResult, evaluate};
pub use recipe::{Recipe, RecipeKind, Schedule};
pub use sgd::Sgd;
pub use source::{DataShape, InMemoryData, TrainData};
pub use trainer::{Outcome, RunOptions, RunSummary, train};

use thiserror::Error;

/// Errors of training and evaluation. Every message is one line and says what to do next.
#[derive(Debug, Error)]
pub enum TrainError {
    /// An option is invalid or inconsistent.
    #[error("{0}")]
    Config(String),
    /// The data source failed.
    #[error("data: {0}")]
    Data(String),
    /// A file of the run directory could not be read or written.
    #[error("{path}: {msg}")]
    Io {
        /// The file.
        path: String,
        /// What went wrong.
        msg: String,
    },
    /// The loss became NaN or infinite.
    #[error(
        "loss is {loss} at step {step} (lr {lr:.4}); stopped. The last good checkpoint is kept{kept}; \
         try a lower --lr, a longer --warmup-epochs or --clip-grad 5"
    )]
    NonFinite {
        /// The step whose loss was not finite (1-based).
        step: u64,
        /// The loss value printed ("NaN", "inf").
        loss: String,
        /// Learning rate at that step.
        lr: f64,
        /// " at step N in DIR/last.safetensors", or "" when none was written yet.
        kept: String,
    },
    /// Network construction or weight loading failed.
    #[error(transparent)]
    Nn(#[from] crate::nn::NnError),
    /// libtorch reported an error.
    #[error("libtorch: {0}")]
    Tch(#[from] tch::TchError),
}

/// Result alias of this module.
pub type Result<T> = std::result::Result<T, TrainError>;

/// An I/O error on `path` as a [`TrainError`].
pub(crate) fn io_err(path: &std::path::Path, e: impl std::fmt::Display) -> TrainError {
    TrainError::Io {
        path: path.display().to_string(),
        msg: e.to_string(),
    }
}

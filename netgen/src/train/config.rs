//! Every resolved option of a training run, as written to `config.json` of the run directory and
//! read back by `--resume` and `netgen eval --run`.
use serde::{Deserialize, Serialize};

use super::recipe::Recipe;

/// A run's configuration (all values resolved; nothing left to defaults at read time).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Data source in `--data` form (`fashion-mnist`, `cifar10:DIR`, …).
    pub data: String,
    /// Train-time augmentation.
    pub augment: bool,
    /// Data-loader worker threads.
    pub workers: usize,
    /// Training mini-batch size.
    pub batch_size: usize,
    /// Evaluation batch size.
    pub eval_batch_size: usize,
    /// Optimisation recipe.
    pub recipe: Recipe,
    /// Epochs requested (`--epochs`), if any.
    pub epochs: Option<f64>,
    /// Step limit requested (`--max-steps`), if any.
    pub max_steps: Option<u64>,
    /// Wall-clock budget in seconds (`--budget`), if any.
    pub budget_seconds: Option<f64>,
    /// Seed of the initialisation and of the data order.
    pub seed: u64,
    /// libtorch intra-op threads.
    pub threads: usize,
    /// Device as requested (`auto`, `cpu`, `cuda`, `cuda:N`).
    pub device: String,
    /// Mixed precision (CUDA autocast + loss scaling).
    pub amp: bool,
    /// Channels-last memory format for weights and inputs (CUDA).
    pub channels_last: bool,
    /// Evaluate on the first N test images only (`None`: all). Set by a budgeted run whose full
    /// test pass would take more than a quarter of the budget; `netgen eval --run` uses it too.
    #[serde(default)]
    pub eval_samples: Option<usize>,
}

impl TrainConfig {
    /// Steps of the run given by `--epochs` / `--max-steps` (the smaller when both are given), or
    /// `None` when only a budget decides.
    pub fn planned_steps(&self, per_epoch: u64) -> Option<u64> {
        let from_epochs = self.epochs.map(|e| (e * per_epoch as f64).round() as u64);
        match (from_epochs, self.max_steps) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Checks values that do not depend on the data.
    pub fn validate(&self) -> Result<(), String> {
        if self.batch_size == 0 {
            return Err("--batch-size must be at least 1".into());
        }
        if self.eval_batch_size == 0 {
            return Err("--eval-batch-size must be at least 1".into());
        }
        if let Some(e) = self.epochs
            && !(e.is_finite() && e > 0.0)
        {
            return Err(format!("--epochs must be a positive number, got {e}"));
        }
        if self.eval_samples == Some(0) {
            return Err("--eval-samples must be at least 1".into());
        }
        if self.max_steps == Some(0) {
            return Err("--max-steps must be at least 1".into());
        }
        if let Some(b) = self.budget_seconds
            && !(b.is_finite() && b > 0.0)
        {
            return Err("--budget must be a positive duration such as 10m".into());
        }
        self.recipe.validate()
    }
}

//! The training loop: build (or resume) the network, run the recipe's steps, evaluate at every
//! epoch end and at the end, keep the run directory up to date.
//!
//! # Step `t` (0-based)
//! `lr = recipe.lr_at(t, T, E)`; gradients zeroed; logits of the batch in training mode (BN batch
//! statistics); cross-entropy with label smoothing; backward; optional global-norm clipping; one
//! [`Sgd`] update. On CUDA with `amp`, the forward runs under autocast and the loss is scaled
//! (dynamic loss scaling: × 0.5 and the step skipped on an overflow, × 2 after 2000 clean steps).
//!
//! # Exact resume
//! The data order is a function of `(seed, epoch)` and the position in the epoch, and the loop draws
//! no other random numbers (the initialisation is overwritten by the checkpoint), so restoring the
//! weights, BN statistics, momentum buffers and the position reproduces the uninterrupted run on a
//! CPU with a fixed thread count. `last.safetensors` and `state.safetensors` carry the step in
//! their metadata, and a resume refuses a mismatched pair.
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tch::nn::{ModuleT, VarStore};
use tch::{Device, Kind, Reduction, Tensor};

use super::budget::fit_steps;
use super::checkpoint::{LoopState, load_tensors, read_metadata, save_tensors, write_text};
use super::config::TrainConfig;
use super::eval::{EvalResult, as_channels_last, evaluate, to_device_input};
use super::metrics::{self, Row};
use super::recipe::PlateauState;
use super::sgd::Sgd;
use super::source::TrainData;
use super::{Result, TrainError, io_err, plot};
use crate::arch::NetSpec;
use crate::nn::{Network, load_safetensors};

/// How a call to [`train`] is run (not part of the run's configuration).
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The run directory.
    pub out: PathBuf,
    /// Continue the run in `out` from its checkpoint.
    pub resume: bool,
    /// The device (already resolved).
    pub device: Device,
    /// No progress bars and no per-epoch lines.
    pub quiet: bool,
    /// Per-epoch lines go to stderr (stdout is reserved for a JSON summary).
    pub lines_to_stderr: bool,
    /// Stop once the run has taken this many steps (in all), with a checkpoint, as if interrupted.
    pub stop_after_steps: Option<u64>,
    /// Set (e.g. by a Ctrl-C handler) to stop after the current step with a checkpoint.
    pub interrupt: Option<Arc<AtomicBool>>,
    /// When the run started (a budget counts from here).
    pub started: Instant,
    /// Test knob: make the loss of this step (1-based) NaN.
    pub poison_step: Option<u64>,
}

impl RunOptions {
    /// Options for a fresh run in `out` on `device`, quiet.
    pub fn new(out: impl Into<PathBuf>, device: Device) -> Self {
        Self {
            out: out.into(),
            resume: false,
            device,
            quiet: true,
            lines_to_stderr: false,
            stop_after_steps: None,
            interrupt: None,
            started: Instant::now(),
            poison_step: None,
        }
    }
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// All steps taken, final evaluation done.
    Finished,
    /// Stopped by `--stop-after-steps` (checkpoint written; `--resume` continues).
    Stopped,
    /// Stopped by an interrupt (checkpoint written; `--resume` continues).
    Interrupted,
}

/// What a run reports at the end.
#[derive(Debug, Clone, PartialEq)]
pub struct RunSummary {
    /// How it ended.
    pub outcome: Outcome,
    /// Final evaluation (`None` when stopped before any evaluation).
    pub last_eval: Option<EvalResult>,
    /// Best test top-1 (%) over the evaluations (NaN when none).
    pub best_acc: f64,
    /// Step of the best evaluation.
    pub best_step: u64,
    /// Steps taken in all.
    pub steps: u64,
    /// Planned steps of the run.
    pub total_steps: u64,
    /// Steps per epoch.
    pub steps_per_epoch: u64,
    /// Epochs completed (fractional).
    pub epochs: f64,
    /// Wall-clock seconds of the run (all sessions of a resumed run).
    pub seconds: f64,
    /// Trainable parameters.
    pub params: u64,
    /// Multiply-adds of one forward pass of one image.
    pub flops: u64,
    /// Device used.
    pub device: String,
    /// Training throughput of the last session (images/s, evaluation excluded).
    pub img_per_s: f64,
}

impl RunSummary {
    /// The `--json` object.
    pub fn to_json(&self, out: &Path) -> serde_json::Value {
        let nan_to_null = |v: f64| {
            if v.is_finite() {
                serde_json::json!(v)
            } else {
                serde_json::Value::Null
            }
        };
        serde_json::json!({
            "outcome": match self.outcome {
                Outcome::Finished => "finished",
                Outcome::Stopped => "stopped",
                Outcome::Interrupted => "interrupted",
            },
            "test_acc": self.last_eval.map(|e| e.top1),
            "test_top5": self.last_eval.map(|e| e.top5),
            "test_loss": self.last_eval.map(|e| e.loss),
            "test_samples": self.last_eval.map(|e| e.samples),
            "best_acc": nan_to_null(self.best_acc),
            "best_step": self.best_step,
            "epochs": self.epochs,
            "steps": self.steps,
            "total_steps": self.total_steps,
            "seconds": self.seconds,
            "img_per_s": self.img_per_s,
            "params": self.params,
            "flops": self.flops,
            "flops_unit": "multiply-adds",
            "device": self.device,
            "run_dir": out.display().to_string(),
        })
    }
}

/// Human name of a device.
pub fn device_name(d: Device) -> String {
    match d {
        Device::Cpu => "cpu".into(),
        Device::Cuda(i) => format!("cuda:{i}"),
        other => format!("{other:?}").to_lowercase(),
    }
}

/// Number of weighted layers along the depth (stem conv + convs of each unit's residual branch + fc),
/// the depth of the paper's network names (ResNet-50: 50; CRU-Net-56: 56).
pub fn weighted_depth(spec: &NetSpec) -> usize {
    let per_unit = |u: &crate::arch::UnitSpec| match u {
        crate::arch::UnitSpec::Cru { extra_conv: true, .. } => 4,
        _ => 3,
    };
    2 + spec
        .stages
        .iter()
        .map(|s| s.depth * per_unit(&s.unit))
        .sum::<usize>()
}

/// Dynamic loss scaling for float16 autocast.
struct LossScaler {
    scale: f64,
    clean: u32,
}

impl LossScaler {
    fn new() -> Self {
        Self {
            scale: 65536.0,
            clean: 0,
        }
    }
}

/// Per-step bookkeeping between two metric rows.
struct Window {
    loss: Tensor,
    correct: Tensor,
    samples: u64,
    seconds: f64,
}

impl Window {
    fn new(device: Device) -> Self {
        Self {
            loss: Tensor::zeros([], (Kind::Float, device)),
            correct: Tensor::zeros([], (Kind::Int64, device)),
            samples: 0,
            seconds: 0.0,
        }
    }
}

/// Everything the loop mutates.
struct Run<'a> {
    spec: &'a NetSpec,
    cfg: TrainConfig,
    data: &'a dyn TrainData,
    opts: &'a RunOptions,
    vs: VarStore,
    net: Network,
    sgd: Sgd,
    st: LoopState,
    plateau: PlateauState,
    per_epoch: u64,
    rows: Vec<Row>,
    last_saved: Option<u64>,
    session_start: Instant,
    seconds_before: f64,
    scaler: LossScaler,
}

/// Trains `spec` on `data` with `cfg` into the run directory `opts.out` (which must exist).
///
/// A fresh run writes `spec.json` and `config.json` first; a resumed run (`opts.resume`) reads
/// `last.safetensors`, `state.safetensors` and `metrics.csv` and continues. `cfg` is the run's
/// configuration (for a resume: the stored one, possibly extended).
pub fn train(
    spec: &NetSpec,
    cfg: &TrainConfig,
    data: &dyn TrainData,
    opts: &RunOptions,
) -> Result<RunSummary> {
    cfg.validate().map_err(TrainError::Config)?;
    if cfg.threads > 0 {
        tch::set_num_threads(cfg.threads as i32);
    }
    let shape = data.shape();
    if (shape.channels, shape.input_size, shape.classes) != (spec.in_channels, spec.input_size, spec.classes)
    {
        return Err(TrainError::Config(format!(
            "the network takes {}×{}×{} inputs with {} classes but the data set {} has {}×{}×{} with {} classes; \
             leave --in-channels/--input/--classes out to follow the data",
            spec.in_channels,
            spec.input_size,
            spec.input_size,
            spec.classes,
            shape.name,
            shape.channels,
            shape.input_size,
            shape.input_size,
            shape.classes
        )));
    }
    let per_epoch = data.train_batches_per_epoch(cfg.batch_size) as u64;
    if per_epoch == 0 {
        return Err(TrainError::Config(format!(
            "--batch-size {} is larger than the training split ({} samples); use a smaller batch",
            cfg.batch_size, shape.train_len
        )));
    }
    let device = opts.device;
    tch::manual_seed(cfg.seed as i64);
    let vs = VarStore::new(device);
    let net = Network::new(&vs.root(), spec)?;
    let named: Vec<(String, Tensor)> = vs
        .variables()
        .into_iter()
        .filter(|(_, t)| t.requires_grad())
        .collect();
    let sgd = Sgd::new(
        named,
        cfg.recipe.momentum,
        cfg.recipe.nesterov,
        cfg.recipe.weight_decay,
    );
    let mut run = Run {
        spec,
        cfg: cfg.clone(),
        data,
        opts,
        vs,
        net,
        sgd,
        st: LoopState {
            step: 0,
            total_steps: cfg.planned_steps(per_epoch).unwrap_or(0),
            best_acc: f64::NEG_INFINITY,
            best_step: 0,
            plateau_factor: 1.0,
            plateau_best: f64::NEG_INFINITY,
            plateau_bad: 0,
            seconds: 0.0,
            seed: cfg.seed,
        },
        plateau: PlateauState::default(),
        per_epoch,
        rows: Vec::new(),
        last_saved: None,
        session_start: Instant::now(),
        seconds_before: 0.0,
        scaler: LossScaler::new(),
    };
    if opts.resume {
        run.restore()?;
    } else {
        let spec_json = spec
            .to_json_pretty()
            .map_err(|e| TrainError::Config(e.to_string()))?;
        write_text(&opts.out.join("spec.json"), &spec_json)?;
        let cfg_json = serde_json::to_string_pretty(cfg).map_err(|e| TrainError::Config(e.to_string()))?;
        write_text(&opts.out.join("config.json"), &(cfg_json + "\n"))?;
    }
    if cfg.channels_last && device.is_cuda() {
        tch::no_grad(|| {
            for (_, mut v) in run.vs.variables() {
                if v.dim() == 4 {
                    let cl = as_channels_last(&v);
                    v.set_data(&cl);
                }
            }
        });
    }
    run.run()
}

impl Run<'_> {
    fn path(&self, name: &str) -> PathBuf {
        self.opts.out.join(name)
    }

    /// Loads the checkpoint pair and the metrics of a resumed run.
    fn restore(&mut self) -> Result<()> {
        let last = self.path("last.safetensors");
        let state_path = self.path("state.safetensors");
        if !state_path.exists() || !last.exists() {
            return Err(io_err(
                &self.opts.out,
                "no checkpoint to resume (last.safetensors and state.safetensors are written at each epoch end, \
                 on Ctrl-C and with --stop-after-steps); start a new run with --out",
            ));
        }
        let (m1, m2) = (read_metadata(&last)?, read_metadata(&state_path)?);
        if m1.get("step") != m2.get("step") {
            return Err(io_err(
                &self.opts.out,
                format!(
                    "last.safetensors (step {}) and state.safetensors (step {}) do not match; the run was stopped \
                     while saving: delete both to start over",
                    m1.get("step").map_or("?", |s| s.as_str()),
                    m2.get("step").map_or("?", |s| s.as_str())
                ),
            ));
        }
        load_safetensors(&self.vs, &last)?;
        let named = load_tensors(&state_path)?;
        let st = LoopState::from_tensors(&named, &state_path)?;
        self.sgd
            .load_state(&named)
            .map_err(|e| io_err(&state_path, format!("{e}; the state belongs to another network")))?;
        let planned = self.cfg.planned_steps(self.per_epoch);
        self.st = LoopState {
            // Flags given with --resume may extend the run.
            total_steps: st.total_steps.max(planned.unwrap_or(0)),
            seed: self.cfg.seed,
            ..st
        };
        self.plateau = PlateauState {
            factor: st.plateau_factor,
            best: st.plateau_best,
            bad: st.plateau_bad as u32,
        };
        self.seconds_before = st.seconds;
        self.last_saved = Some(st.step);
        let mut rows = metrics::read(&self.path("metrics.csv"))?;
        rows.retain(|r| r.step <= st.step);
        self.rows = rows;
        if self.st.step >= self.st.total_steps {
            return Err(TrainError::Config(format!(
                "the run in {} already took all its {} steps; pass a larger --epochs or --max-steps with --resume \
                 to extend it",
                self.opts.out.display(),
                self.st.total_steps
            )));
        }
        Ok(())
    }

    fn seconds(&self) -> f64 {
        self.seconds_before + self.session_start.elapsed().as_secs_f64()
    }

    /// Writes `last.safetensors` then `state.safetensors` (both tagged with the step).
    fn save_checkpoint(&mut self) -> Result<()> {
        let step = self.st.step;
        let mut meta = HashMap::new();
        meta.insert("step".to_string(), step.to_string());
        meta.insert("format".to_string(), "netgen".to_string());
        let weights = self.weights();
        save_tensors(&self.path("last.safetensors"), &weights, meta.clone())?;
        self.st.seconds = self.seconds();
        self.st.plateau_factor = self.plateau.factor;
        self.st.plateau_best = self.plateau.best;
        self.st.plateau_bad = u64::from(self.plateau.bad);
        let mut state = self.sgd.state();
        state.extend(self.st.to_tensors());
        save_tensors(&self.path("state.safetensors"), &state, meta)?;
        self.last_saved = Some(step);
        Ok(())
    }

    /// The store's variables (parameters and BN statistics), sorted by name, contiguous.
    fn weights(&self) -> Vec<(String, Tensor)> {
        let mut v: Vec<(String, Tensor)> = self
            .vs
            .variables()
            .into_iter()
            .map(|(n, t)| (n, t.detach().contiguous()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    fn kept(&self) -> String {
        match self.last_saved {
            Some(s) => format!(" (step {s}, {})", self.path("last.safetensors").display()),
            None => String::new(),
        }
    }

    /// Times a few forward+backward passes on one training batch (no update; BN statistics
    /// restored) and one evaluation batch, and returns (seconds per step, seconds per full test pass).
    fn probe(&mut self) -> Result<(f64, f64)> {
        let device = self.opts.device;
        let first = self
            .data
            .train_batches(0, self.cfg.seed, self.cfg.batch_size, 0)
            .next()
            .ok_or_else(|| TrainError::Data("no training batch".into()))?
            .map_err(TrainError::Data)?;
        let x = to_device_input(&first.0, device, self.cfg.channels_last && device.is_cuda());
        let y = first.1.to_device(device);
        let buffers: Vec<(Tensor, Tensor)> = tch::no_grad(|| {
            self.vs
                .variables()
                .into_values()
                .filter(|t| !t.requires_grad())
                .map(|t| {
                    let copy = t.copy();
                    (t, copy)
                })
                .collect()
        });
        let mut times = Vec::new();
        for _ in 0..3 {
            let t = Instant::now();
            self.sgd.zero_grad();
            let logits = tch::autocast(self.cfg.amp && device.is_cuda(), || self.net.forward_t(&x, true));
            let loss = logits.to_kind(Kind::Float).cross_entropy_loss::<Tensor>(
                &y,
                None,
                Reduction::Mean,
                -100,
                0.0,
            );
            loss.backward();
            sync(device);
            times.push(t.elapsed().as_secs_f64());
            // Slow steps: one (or two) passes are measurement enough, and each costs budget.
            if times[times.len() - 1] > 5.0 {
                break;
            }
        }
        self.sgd.zero_grad();
        tch::no_grad(|| {
            for (mut t, copy) in buffers {
                t.copy_(&copy);
            }
        });
        // The first pass also allocates; average the later ones when there are any.
        let timed = if times.len() > 1 { &times[1..] } else { &times[..] };
        let step_s = timed.iter().sum::<f64>() / timed.len() as f64;
        // One evaluation batch (at most 128 images), timed on its second run.
        let test = self
            .data
            .test_batches(self.cfg.eval_batch_size.min(128))
            .next()
            .ok_or_else(|| TrainError::Data("the test split is empty".into()))?
            .map_err(TrainError::Data)?;
        let n = test.0.size()[0] as f64;
        let xt = to_device_input(&test.0, device, self.cfg.channels_last && device.is_cuda());
        let mut eval_t = 0.0;
        for _ in 0..2 {
            let t = Instant::now();
            tch::no_grad(|| {
                let _ = self.net.forward_t(&xt, false);
            });
            sync(device);
            eval_t = t.elapsed().as_secs_f64();
        }
        Ok((step_s, eval_t / n * self.eval_len() as f64))
    }

    /// Images of one evaluation.
    fn eval_len(&self) -> usize {
        let all = self.data.shape().test_len;
        self.cfg.eval_samples.map_or(all, |n| n.min(all))
    }

    /// Fits the total steps to the budget given a step cost and an evaluation cost.
    fn fit_budget(&mut self, budget: f64, step_s: f64, eval_s: f64) {
        let elapsed = self.opts.started.elapsed().as_secs_f64();
        // Keep a margin for checkpoints, the plot and timing noise.
        let left = budget - elapsed - (0.02 * budget + 1.0);
        let done = self.st.step;
        let done_evals = self.rows.len() as u64;
        let cap = self.cfg.planned_steps(self.per_epoch);
        self.st.total_steps = fit_steps(left, step_s, eval_s, self.per_epoch, done, done_evals, cap);
    }

    fn say(&self, line: &str) {
        if self.opts.quiet {
            return;
        }
        if self.opts.lines_to_stderr {
            eprintln!("{line}");
        } else {
            println!("{line}");
        }
    }

    fn run(&mut self) -> Result<RunSummary> {
        let device = self.opts.device;
        let amp = self.cfg.amp && device.is_cuda();
        let cl = self.cfg.channels_last && device.is_cuda();
        let per_epoch = self.per_epoch;
        let budget = if self.opts.resume {
            None
        } else {
            self.cfg.budget_seconds
        };
        let mut eval_s_est = 0.0;
        let mut refit_at = None;
        if let Some(b) = budget {
            let (step_s, mut eval_s) = self.probe()?;
            let all = self.eval_len();
            if eval_s > 0.25 * b && self.cfg.eval_samples.is_none() {
                // A full test pass would eat the budget: evaluate on the first images only, in
                // whole evaluation batches, and record it so that `netgen eval --run` does the same.
                let want = (all as f64 * 0.25 * b / eval_s) as usize;
                let eb = self.cfg.eval_batch_size;
                let n = (want / eb * eb).clamp(eb.min(all), all);
                self.cfg.eval_samples = Some(n);
                eval_s *= n as f64 / all as f64;
                let cfg_json =
                    serde_json::to_string_pretty(&self.cfg).map_err(|e| TrainError::Config(e.to_string()))?;
                write_text(&self.path("config.json"), &(cfg_json + "\n"))?;
                if !self.opts.quiet {
                    eprintln!(
                        "netgen: a full test pass would take a large part of the budget: evaluating on the first {n} \
                         of {all} test images (netgen eval --run DIR --samples {all} gives the full test accuracy)"
                    );
                }
            }
            eval_s_est = eval_s;
            self.fit_budget(b, step_s, eval_s);
            if !self.opts.quiet {
                eprintln!(
                    "netgen: budget {:.0} s: a step takes ≈ {:.3} s and a test pass ≈ {:.1} s → {} steps ({:.2} epochs)",
                    b,
                    step_s,
                    eval_s,
                    self.st.total_steps,
                    self.st.total_steps as f64 / per_epoch as f64
                );
            }
            refit_at = Some(3);
        }
        if self.st.total_steps == 0 {
            return Err(TrainError::Config(
                "no length given: pass --epochs, --max-steps or --budget".into(),
            ));
        }
        let mut window = Window::new(device);
        let mut last_eval = None;
        let mut session_imgs = 0u64;
        let mut session_steps = 0u64;
        // The session's first step also starts the loader and allocates: budgets leave it out.
        let mut first_step_s = 0.0;
        let mut session_train_s = 0.0;
        let ls = self.cfg.recipe.label_smoothing;
        while self.st.step < self.st.total_steps {
            let epoch = self.st.step / per_epoch;
            let skip = self.st.step % per_epoch;
            let this_epoch = (per_epoch - skip).min(self.st.total_steps - self.st.step);
            let bar = self.bar(epoch, skip, this_epoch);
            let mut batches =
                self.data
                    .train_batches(epoch, self.cfg.seed, self.cfg.batch_size, skip as usize);
            let epoch_end = self.st.step + this_epoch;
            let mut t_last = Instant::now();
            let mut lr = 0.0;
            while self.st.step < epoch_end.min(self.st.total_steps) {
                if let Some(flag) = &self.opts.interrupt
                    && flag.load(Ordering::SeqCst)
                {
                    bar.finish_and_clear();
                    return self.stop(Outcome::Interrupted, last_eval, session_imgs, session_train_s);
                }
                let (x, y) = match batches.next() {
                    Some(b) => b.map_err(TrainError::Data)?,
                    None => return Err(TrainError::Data(format!("epoch {epoch} ended early"))),
                };
                let n = y.size()[0];
                let x = to_device_input(&x, device, cl);
                let y = y.to_device(device);
                lr = self
                    .cfg
                    .recipe
                    .lr_at(self.st.step, self.st.total_steps, per_epoch, self.plateau.factor);
                self.sgd.zero_grad();
                let logits = tch::autocast(amp, || self.net.forward_t(&x, true));
                let mut loss = logits.to_kind(Kind::Float).cross_entropy_loss::<Tensor>(
                    &y,
                    None,
                    Reduction::Mean,
                    -100,
                    ls,
                );
                if self.opts.poison_step == Some(self.st.step + 1) {
                    loss *= f64::NAN;
                }
                let loss_v = loss.double_value(&[]);
                if !loss_v.is_finite() {
                    bar.finish_and_clear();
                    return Err(TrainError::NonFinite {
                        step: self.st.step + 1,
                        loss: format!("{loss_v}"),
                        lr,
                        kept: self.kept(),
                    });
                }
                if amp {
                    (&loss * self.scaler.scale).backward();
                    if !self.unscale_grads() {
                        // Overflow in float16: skip this update, retry with a smaller scale.
                        self.scaler.scale *= 0.5;
                        self.scaler.clean = 0;
                    } else {
                        self.scaler.clean += 1;
                        if self.scaler.clean >= 2000 {
                            self.scaler.scale *= 2.0;
                            self.scaler.clean = 0;
                        }
                        self.update(lr);
                    }
                } else {
                    loss.backward();
                    self.update(lr);
                }
                tch::no_grad(|| {
                    window.loss += loss.detach() * n as f64;
                    window.correct += logits.argmax(1, false).eq_tensor(&y).sum(Kind::Int64);
                });
                self.st.step += 1;
                window.samples += n as u64;
                let now = Instant::now();
                let dt = now.duration_since(t_last).as_secs_f64();
                t_last = now;
                window.seconds += dt;
                session_imgs += n as u64;
                session_steps += 1;
                if session_steps == 1 {
                    first_step_s = dt;
                }
                session_train_s += dt;
                // On a GPU, reading the running sums synchronises: refresh the message less often.
                if !self.opts.quiet && (!device.is_cuda() || self.st.step.is_multiple_of(20)) {
                    let acc = 100.0 * window.correct.int64_value(&[]) as f64 / window.samples as f64;
                    bar.set_message(format!(
                        "loss {:.4} acc {:.1}% {:.0} img/s",
                        window.loss.double_value(&[]) / window.samples as f64,
                        acc,
                        window.samples as f64 / window.seconds.max(1e-9)
                    ));
                }
                bar.inc(1);
                if self.opts.stop_after_steps == Some(self.st.step) && self.st.step < self.st.total_steps {
                    bar.finish_and_clear();
                    return self.stop(Outcome::Stopped, last_eval, session_imgs, session_train_s);
                }
                if let (Some(b), Some(at)) = (budget, refit_at)
                    && self.st.step >= at
                {
                    // Refit with the measured cost of real steps (data loading included), at steps
                    // 3, 6, 12, … while less than half of the run is done, so that the plan follows
                    // the machine's load.
                    refit_at = Some(2 * self.st.step).filter(|&n| n < self.st.total_steps / 2 + 3);
                    let step_s = (session_train_s - first_step_s) / (session_steps - 1).max(1) as f64;
                    let before = self.st.total_steps;
                    self.fit_budget(b, step_s, eval_s_est);
                    self.st.total_steps = self.st.total_steps.max(self.st.step + 1);
                    if self.st.total_steps != before && !self.opts.quiet {
                        bar.println(format!(
                            "netgen: measured {step_s:.3} s/step: run refitted to {} steps",
                            self.st.total_steps
                        ));
                    }
                    bar.set_length(bar.position() + (self.st.total_steps.min(epoch_end) - self.st.step));
                }
                // Do not start a step that could not finish, with the final evaluation, in time.
                let step_avg = session_train_s / session_steps.max(1) as f64;
                if let Some(b) = budget
                    && self.opts.started.elapsed().as_secs_f64() + step_avg + eval_s_est > b
                    && self.st.step < self.st.total_steps
                {
                    bar.println(format!(
                        "netgen: the budget is used up at step {} of {}: stopping early (learning rate not fully \
                         annealed)",
                        self.st.step, self.st.total_steps
                    ));
                    self.st.total_steps = self.st.step;
                }
            }
            bar.finish_and_clear();
            drop(batches);
            let at_epoch_end = self.st.step.is_multiple_of(per_epoch);
            if at_epoch_end || self.st.step >= self.st.total_steps {
                let t_eval = Instant::now();
                let eval = self.evaluate()?;
                let eval_took = t_eval.elapsed().as_secs_f64();
                if budget.is_some() {
                    eval_s_est = eval_took;
                }
                last_eval = Some(eval);
                self.record(eval, lr, &mut window)?;
                if let (Some(b), true) = (budget, self.st.step < self.st.total_steps) {
                    let step_s = session_train_s / session_steps.max(1) as f64;
                    self.fit_budget(b, step_s, eval_s_est);
                    self.st.total_steps = self.st.total_steps.max(self.st.step + 1);
                }
            }
        }
        Ok(self.summary(Outcome::Finished, last_eval, session_imgs, session_train_s))
    }

    fn update(&mut self, lr: f64) {
        if let Some(c) = self.cfg.recipe.clip_grad {
            self.sgd.clip_grad_norm(c);
        }
        self.sgd.step(lr);
    }

    /// Divides the gradients by the loss scale; false when any is not finite.
    fn unscale_grads(&mut self) -> bool {
        let inv = 1.0 / self.scaler.scale;
        tch::no_grad(|| {
            let grads = self.sgd.grads();
            let mut finite = true;
            for g in &grads {
                let mut g = g.shallow_clone();
                let _ = g.g_mul_scalar_(inv);
            }
            if !grads.is_empty() {
                let sums: Vec<Tensor> = grads.iter().map(|g| g.sum(Kind::Float)).collect();
                finite = Tensor::stack(&sums, 0).isfinite().all().int64_value(&[]) != 0;
            }
            finite
        })
    }

    fn bar(&self, epoch: u64, skip: u64, len: u64) -> ProgressBar {
        if self.opts.quiet {
            return ProgressBar::hidden();
        }
        let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
        let style = ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg} ({elapsed} < {eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
        bar.set_style(style);
        let epochs = self.st.total_steps.div_ceil(self.per_epoch);
        bar.set_prefix(format!("epoch {}/{epochs}", epoch + 1));
        if skip > 0 {
            bar.set_message(format!("resumed at batch {skip}"));
        }
        bar
    }

    fn evaluate(&self) -> Result<EvalResult> {
        let bar = if self.opts.quiet {
            ProgressBar::hidden()
        } else {
            let b = ProgressBar::new_spinner();
            b.set_draw_target(ProgressDrawTarget::stderr());
            b.set_message(format!(
                "evaluating on {} test images",
                self.data.shape().test_len
            ));
            b.enable_steady_tick(std::time::Duration::from_millis(200));
            b
        };
        let r = evaluate(
            &self.net,
            self.data,
            self.cfg.eval_batch_size,
            self.cfg.eval_samples,
            self.opts.device,
            self.cfg.amp,
            self.cfg.channels_last && self.opts.device.is_cuda(),
        );
        bar.finish_and_clear();
        r
    }

    /// After an evaluation: best checkpoint, plateau rule, checkpoint, metrics row, plot, line.
    fn record(&mut self, eval: EvalResult, lr: f64, window: &mut Window) -> Result<()> {
        let step = self.st.step;
        if eval.top1 > self.st.best_acc {
            self.st.best_acc = eval.top1;
            self.st.best_step = step;
            let mut meta = HashMap::new();
            meta.insert("step".to_string(), step.to_string());
            meta.insert("top1".to_string(), format!("{}", eval.top1));
            meta.insert("format".to_string(), "netgen".to_string());
            save_tensors(&self.path("best.safetensors"), &self.weights(), meta)?;
        }
        if self.plateau.observe(&self.cfg.recipe.schedule, eval.top1) {
            self.say(&format!(
                "netgen: test accuracy saturated: learning rate × {:.3} from now on",
                self.plateau.factor
            ));
        }
        self.save_checkpoint()?;
        let samples = window.samples.max(1) as f64;
        let (train_loss, train_acc) = if window.samples > 0 {
            (
                window.loss.double_value(&[]) / samples,
                100.0 * window.correct.int64_value(&[]) as f64 / samples,
            )
        } else {
            (f64::NAN, f64::NAN)
        };
        let row = Row {
            step,
            epoch: step as f64 / self.per_epoch as f64,
            lr,
            train_loss,
            train_acc,
            test_loss: eval.loss,
            test_top1: eval.top1,
            test_top5: eval.top5,
            img_per_s: window.samples as f64 / window.seconds.max(1e-9),
            seconds: self.seconds(),
        };
        self.rows.push(row);
        metrics::write(&self.path("metrics.csv"), &self.rows)?;
        match plot::draw(&self.path("curves.png"), &self.rows, &self.spec.name) {
            Ok(true) => {}
            Ok(false) => self
                .say("netgen: no TrueType font found: curves.png has no labels (install fonts-dejavu-core)"),
            Err(e) => self.say(&format!("netgen: warning: could not draw curves.png: {e}")),
        }
        self.say(&format!(
            "epoch {:.2}/{:.2} (step {}/{}): lr {:.4}, train loss {:.4} acc {:.2}%, test loss {:.4} top-1 {:.2}% \
             top-5 {:.2}%, {:.0} img/s, {:.0} s",
            row.epoch,
            self.st.total_steps as f64 / self.per_epoch as f64,
            step,
            self.st.total_steps,
            lr,
            train_loss,
            train_acc,
            eval.loss,
            eval.top1,
            eval.top5,
            row.img_per_s,
            row.seconds
        ));
        *window = Window::new(self.opts.device);
        Ok(())
    }

    fn stop(
        &mut self,
        outcome: Outcome,
        last_eval: Option<EvalResult>,
        imgs: u64,
        secs: f64,
    ) -> Result<RunSummary> {
        self.save_checkpoint()?;
        Ok(self.summary(outcome, last_eval, imgs, secs))
    }

    fn summary(&self, outcome: Outcome, last_eval: Option<EvalResult>, imgs: u64, secs: f64) -> RunSummary {
        let counts = crate::count::count(self.spec).ok();
        RunSummary {
            outcome,
            last_eval,
            best_acc: if self.st.best_acc.is_finite() {
                self.st.best_acc
            } else {
                f64::NAN
            },
            best_step: self.st.best_step,
            steps: self.st.step,
            total_steps: self.st.total_steps,
            steps_per_epoch: self.per_epoch,
            epochs: self.st.step as f64 / self.per_epoch as f64,
            seconds: self.seconds(),
            params: crate::nn::trainable_param_count(&self.vs) as u64,
            flops: counts.map_or(0, |c| c.flops),
            device: device_name(self.opts.device),
            img_per_s: imgs as f64 / secs.max(1e-9),
        }
    }
}

fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

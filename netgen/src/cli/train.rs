//! `netgen train` (and `netgen [ARCH FLAGS]` without a subcommand): resolve the options, open the
//! data, build the network that fits them, train into a run directory.
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use clap::Args;
use netgen::arch::spec::NetSpec;
use netgen::count::count;
use netgen::data::{Data, DataOptions, DataSource};
use netgen::table;
use netgen::train::budget::parse_duration;
use netgen::train::trainer::{Outcome, RunOptions, RunSummary, device_name, train, weighted_depth};
use netgen::train::{Recipe, RecipeKind, Schedule, TrainConfig, TrainError};
use tch::Device;

use crate::{EmitArgs, UserError};

/// Default length of a run on a GPU (or whenever a length is needed and none was given, except on
/// a CPU, where a 10-minute budget applies).
const DEFAULT_EPOCHS: f64 = 30.0;
/// The budget a CPU run gets when no length is given.
const DEFAULT_CPU_BUDGET: &str = "10m";
/// The batch size of that budgeted CPU run unless --batch-size is given.
const DEFAULT_CPU_BUDGET_BATCH: usize = 32;

/// Data, recipe and run options of `netgen train` (also accepted by `netgen` without a subcommand).
#[derive(Args, Debug, Default)]
pub(crate) struct TrainFlags {
    /// fashion-mnist (default), fashion-mnist:DIR, mnist:DIR, cifar10:DIR, cifar100:DIR, imagefolder:DIR.
    #[arg(long, value_name = "SOURCE", help_heading = "Data")]
    pub(crate) data: Option<String>,
    /// No training-time augmentation (random crop + flip).
    #[arg(long, help_heading = "Data")]
    pub(crate) no_augment: bool,
    /// Data-loader worker threads (default: min(4, cores)).
    #[arg(long, value_name = "N", help_heading = "Data")]
    pub(crate) workers: Option<usize>,

    /// Epochs to train (the whole run, also on --resume). Fractions allowed.
    #[arg(long, value_name = "E", help_heading = "Length")]
    pub(crate) epochs: Option<f64>,
    /// Steps to train (the whole run, also on --resume).
    #[arg(long, value_name = "N", help_heading = "Length")]
    pub(crate) max_steps: Option<u64>,
    /// Wall-clock budget (e.g. 10m, 90s, 1h): the steps are fitted to it, evaluations included.
    /// Default on a CPU when no length is given: 10m.
    #[arg(long, value_name = "DURATION", help_heading = "Length")]
    pub(crate) budget: Option<String>,

    /// Named recipe: modern (default; warm-up + cosine) or paper (the CRU-Net paper's setting).
    #[arg(long, value_name = "NAME", help_heading = "Recipe")]
    pub(crate) recipe: Option<RecipeKind>,
    /// Mini-batch size (default 128; 32 for the default 10-minute CPU budget).
    #[arg(long, value_name = "N", help_heading = "Recipe")]
    pub(crate) batch_size: Option<usize>,
    /// Evaluation batch size (default 2 × batch size).
    #[arg(long, value_name = "N", help_heading = "Recipe")]
    pub(crate) eval_batch_size: Option<usize>,
    /// Base learning rate (modern: 0.1 × batch / 128).
    #[arg(long, value_name = "LR", help_heading = "Recipe")]
    pub(crate) lr: Option<f64>,
    /// Momentum (0.9).
    #[arg(long, value_name = "M", help_heading = "Recipe")]
    pub(crate) momentum: Option<f64>,
    /// Nesterov momentum (true); `--nesterov false` for heavy-ball momentum.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true", help_heading = "Recipe")]
    pub(crate) nesterov: Option<bool>,
    /// L2 weight decay, not applied to BN parameters and biases (5e-4).
    #[arg(long, value_name = "WD", help_heading = "Recipe")]
    pub(crate) weight_decay: Option<f64>,
    /// cosine (modern), plateau (paper), constant, or step:E1,E2,… (× 0.1 at those epochs).
    #[arg(long, value_name = "SCHEDULE", help_heading = "Recipe")]
    pub(crate) schedule: Option<String>,
    /// Linear warm-up length in epochs (modern default: 3% of the run).
    #[arg(long, value_name = "E", help_heading = "Recipe")]
    pub(crate) warmup_epochs: Option<f64>,
    /// Label smoothing of the cross-entropy (0).
    #[arg(long, value_name = "EPS", help_heading = "Recipe")]
    pub(crate) label_smoothing: Option<f64>,
    /// Clip the global gradient norm to this value (off).
    #[arg(long, value_name = "NORM", help_heading = "Recipe")]
    pub(crate) clip_grad: Option<f64>,
    /// Evaluate on the first N test images only (default: all; a budget may lower it when a full
    /// test pass would take more than a quarter of the budget).
    #[arg(long, value_name = "N", help_heading = "Recipe")]
    pub(crate) eval_samples: Option<usize>,
    /// Seed of the initialisation and the data order (0).
    #[arg(long, value_name = "N", help_heading = "Recipe")]
    pub(crate) seed: Option<u64>,

    /// auto (CUDA when available), cpu, cuda, cuda:N.
    #[arg(long, value_name = "DEVICE", help_heading = "Device")]
    pub(crate) device: Option<String>,
    /// libtorch intra-op threads (default: all cores).
    #[arg(long, value_name = "N", help_heading = "Device")]
    pub(crate) threads: Option<usize>,
    /// Mixed precision (float16 autocast with loss scaling); CUDA only, ignored with a note on a CPU.
    #[arg(long, help_heading = "Device")]
    pub(crate) amp: bool,
    /// Channels-last memory format for weights and inputs (CUDA only).
    #[arg(long, help_heading = "Device")]
    pub(crate) channels_last: bool,

    /// Run directory (default runs/NAME-NNN).
    #[arg(long, value_name = "DIR", help_heading = "Run")]
    pub(crate) out: Option<PathBuf>,
    /// Continue the run in DIR with its own network and options (--epochs/--max-steps may extend it).
    #[arg(long, value_name = "DIR", help_heading = "Run")]
    pub(crate) resume: Option<PathBuf>,
    /// Stop once the run has taken N steps, with a checkpoint (as if interrupted; --resume continues).
    #[arg(long, value_name = "N", help_heading = "Run")]
    pub(crate) stop_after_steps: Option<u64>,
    /// No progress bars, no per-epoch lines.
    #[arg(long, help_heading = "Run")]
    pub(crate) quiet: bool,
    /// Test knob: make the loss of step N NaN.
    #[arg(long, value_name = "N", hide = true)]
    pub(crate) debug_nan_at_step: Option<u64>,
}

/// What the user asked for, before the data are known.
struct Plan {
    cfg: TrainConfig,
    spec: NetSpec,
    out: PathBuf,
    resume: bool,
    device: Device,
}

fn user(e: impl std::fmt::Display) -> UserError {
    UserError(e.to_string())
}

/// Resolves `--device`.
pub(crate) fn resolve_device(s: &str) -> Result<Device, UserError> {
    let no_cuda = || {
        UserError(format!(
            "--device {s}: CUDA is not available (this libtorch has no CUDA support or no GPU is visible); \
             use --device cpu or auto"
        ))
    };
    match s {
        "auto" => Ok(Device::cuda_if_available()),
        "cpu" => Ok(Device::Cpu),
        "cuda" => {
            if tch::Cuda::is_available() {
                Ok(Device::Cuda(0))
            } else {
                Err(no_cuda())
            }
        }
        other => {
            let Some(i) = other.strip_prefix("cuda:").and_then(|i| i.parse::<usize>().ok()) else {
                return Err(UserError(format!(
                    "--device: unknown device '{other}'; use auto, cpu, cuda or cuda:N"
                )));
            };
            if !tch::Cuda::is_available() {
                return Err(no_cuda());
            }
            let n = tch::Cuda::device_count() as usize;
            if i >= n {
                return Err(UserError(format!(
                    "--device {other}: only {n} CUDA device(s) visible (cuda:0..)"
                )));
            }
            Ok(Device::Cuda(i))
        }
    }
}

fn open_data(
    source: &str,
    input: Option<usize>,
    augment: bool,
    workers: Option<usize>,
) -> Result<Data, UserError> {
    let src = DataSource::parse(source).map_err(user)?;
    let mut opts = DataOptions {
        input_size: input,
        augment,
        ..DataOptions::default()
    };
    if let Some(w) = workers {
        opts.workers = w;
    }
    Data::open(&src, &opts).map_err(user)
}

/// A fresh run directory `runs/NAME-NNN`.
fn default_out(name: &str) -> PathBuf {
    // Alphanumerics and '-'; every run of other characters becomes one '_'.
    let mut safe = String::new();
    for c in name.chars() {
        if c.is_ascii_alphanumeric() || c == '-' {
            safe.push(c);
        } else if !safe.is_empty() && !safe.ends_with('_') {
            safe.push('_');
        }
    }
    let safe = safe.trim_end_matches('_').to_string();
    (1..)
        .map(|i| PathBuf::from("runs").join(format!("{safe}-{i:03}")))
        .find(|p| !p.exists())
        .unwrap_or_else(|| PathBuf::from("runs").join(safe))
}

fn check_fresh_out(out: &Path) -> Result<(), UserError> {
    for f in ["config.json", "state.safetensors", "last.safetensors"] {
        if out.join(f).exists() {
            return Err(UserError(format!(
                "{} already holds a run ({f}); continue it with --resume {} or choose another --out",
                out.display(),
                out.display()
            )));
        }
    }
    std::fs::create_dir_all(out).map_err(|e| UserError(format!("cannot create {}: {e}", out.display())))
}

/// The flags that `--resume` does not accept (the run's own values are kept).
fn fixed_on_resume(arch: &EmitArgs, f: &TrainFlags) -> Vec<&'static str> {
    let mut v = arch.gbtd_flags_given();
    let given = [
        ("--preset", arch.preset.is_some()),
        ("--spec", arch.spec.is_some()),
        ("--classes", arch.classes.is_some()),
        ("--input", arch.input.is_some()),
        ("--in-channels", arch.in_channels.is_some()),
        ("--data", f.data.is_some()),
        ("--no-augment", f.no_augment),
        ("--budget", f.budget.is_some()),
        ("--recipe", f.recipe.is_some()),
        ("--batch-size", f.batch_size.is_some()),
        ("--lr", f.lr.is_some()),
        ("--momentum", f.momentum.is_some()),
        ("--nesterov", f.nesterov.is_some()),
        ("--weight-decay", f.weight_decay.is_some()),
        ("--schedule", f.schedule.is_some()),
        ("--warmup-epochs", f.warmup_epochs.is_some()),
        ("--label-smoothing", f.label_smoothing.is_some()),
        ("--clip-grad", f.clip_grad.is_some()),
        ("--seed", f.seed.is_some()),
        ("--eval-samples", f.eval_samples.is_some()),
        ("--amp", f.amp),
        ("--channels-last", f.channels_last),
        ("--out", f.out.is_some()),
    ];
    v.extend(given.iter().filter(|(_, g)| *g).map(|(n, _)| *n));
    v
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, UserError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        UserError(format!(
            "cannot read {}: {e}; is it a netgen run directory?",
            path.display()
        ))
    })?;
    serde_json::from_str(&text).map_err(|e| UserError(format!("{}: {e}", path.display())))
}

/// The stored spec and configuration of a run directory.
pub(crate) fn load_run(dir: &Path) -> Result<(NetSpec, TrainConfig), UserError> {
    let spec =
        NetSpec::load(&dir.join("spec.json")).map_err(|e| UserError(format!("{}: {e}", dir.display())))?;
    let cfg: TrainConfig = read_json(&dir.join("config.json"))?;
    Ok((spec, cfg))
}

fn plan_resume(dir: &Path, arch: &EmitArgs, f: &TrainFlags) -> Result<Plan, UserError> {
    let fixed = fixed_on_resume(arch, f);
    if !fixed.is_empty() {
        return Err(UserError(format!(
            "{} cannot be changed on --resume (the run's config.json fixes it); only --epochs, --max-steps, \
             --stop-after-steps, --device, --threads, --workers, --quiet and --json are accepted",
            fixed.join(", ")
        )));
    }
    let (spec, mut cfg) = load_run(dir)?;
    if let Some(e) = f.epochs {
        if cfg.epochs.is_some_and(|old| e < old) {
            return Err(UserError(format!(
                "--epochs {e} would shorten the run (it has --epochs {}); flags given with --resume may only extend it",
                cfg.epochs.unwrap_or_default()
            )));
        }
        cfg.epochs = Some(e);
    }
    if let Some(m) = f.max_steps {
        if cfg.max_steps.is_some_and(|old| m < old) {
            return Err(UserError(format!(
                "--max-steps {m} would shorten the run (it has --max-steps {}); flags given with --resume may only \
                 extend it",
                cfg.max_steps.unwrap_or_default()
            )));
        }
        cfg.max_steps = Some(m);
    }
    if f.epochs.is_some() && f.max_steps.is_none() {
        cfg.max_steps = None;
    }
    if f.max_steps.is_some() && f.epochs.is_none() {
        cfg.epochs = None;
    }
    if let Some(t) = f.threads {
        cfg.threads = t;
    }
    if let Some(w) = f.workers {
        cfg.workers = w;
    }
    if let Some(d) = &f.device {
        cfg.device = d.clone();
    }
    let device = resolve_device(&cfg.device)?;
    Ok(Plan {
        cfg,
        spec,
        out: dir.to_path_buf(),
        resume: true,
        device,
    })
}

/// Builds the configuration of a fresh run (the data are open, so the network can follow them).
fn plan_fresh(arch: &mut EmitArgs, f: &TrainFlags, data: &Data, data_str: &str) -> Result<Plan, UserError> {
    let info = data.info();
    arch.input.get_or_insert(info.input_size);
    arch.in_channels.get_or_insert(info.channels);
    arch.classes.get_or_insert(info.classes);
    let spec = arch.to_spec()?;
    let device = resolve_device(f.device.as_deref().unwrap_or("auto"))?;
    // A CPU run given no length trains within a budget; with few steps to take, more and smaller
    // updates learn more per second (per-image throughput on a CPU changes little with the batch).
    let default_budget =
        f.epochs.is_none() && f.max_steps.is_none() && f.budget.is_none() && device == Device::Cpu;
    let batch = f.batch_size.unwrap_or(if default_budget {
        DEFAULT_CPU_BUDGET_BATCH
    } else {
        128
    });
    let kind = f.recipe.unwrap_or(RecipeKind::Modern);
    let mut recipe = Recipe::defaults(kind, weighted_depth(&spec), batch);
    if let Some(v) = f.lr {
        recipe.lr = v;
    }
    if let Some(v) = f.momentum {
        recipe.momentum = v;
    }
    if let Some(v) = f.nesterov {
        recipe.nesterov = v;
    }
    if let Some(v) = f.weight_decay {
        recipe.weight_decay = v;
    }
    if let Some(s) = &f.schedule {
        recipe.schedule = Schedule::parse(s).map_err(UserError)?;
    }
    if let Some(v) = f.warmup_epochs {
        recipe.warmup_epochs = Some(v);
    }
    if let Some(v) = f.label_smoothing {
        recipe.label_smoothing = v;
    }
    recipe.clip_grad = f.clip_grad;
    let mut budget_seconds = f
        .budget
        .as_deref()
        .map(parse_duration)
        .transpose()
        .map_err(UserError)?;
    let mut epochs = f.epochs;
    if epochs.is_none() && f.max_steps.is_none() && budget_seconds.is_none() {
        if device == Device::Cpu {
            budget_seconds = Some(parse_duration(DEFAULT_CPU_BUDGET).map_err(UserError)?);
            if !f.quiet {
                eprintln!(
                    "netgen: no --epochs, --max-steps or --budget given: training on the CPU within a \
                     {DEFAULT_CPU_BUDGET} budget at batch size {batch} (pass --epochs N for a full schedule)"
                );
            }
        } else {
            epochs = Some(DEFAULT_EPOCHS);
        }
    }
    if f.amp && !device.is_cuda() && !f.quiet {
        eprintln!(
            "netgen: note: --amp applies to CUDA only; training in float32 on {}",
            device_name(device)
        );
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let cfg = TrainConfig {
        data: data_str.to_string(),
        augment: !f.no_augment,
        workers: data.options().workers,
        batch_size: batch,
        eval_batch_size: f.eval_batch_size.unwrap_or(2 * batch),
        recipe,
        epochs,
        max_steps: f.max_steps,
        budget_seconds,
        seed: f.seed.unwrap_or(0),
        threads: f.threads.unwrap_or(cores),
        device: f.device.clone().unwrap_or_else(|| "auto".into()),
        amp: f.amp,
        channels_last: f.channels_last,
        eval_samples: f.eval_samples,
    };
    cfg.validate().map_err(UserError)?;
    let out = f.out.clone().unwrap_or_else(|| default_out(&spec.name));
    Ok(Plan {
        cfg,
        spec,
        out,
        resume: false,
        device,
    })
}

/// Runs `netgen train` (or `netgen` without a subcommand): prints the architecture table (unless
/// `--json`/`--quiet`), trains, reports.
pub(crate) fn run(arch: &mut EmitArgs, f: &TrainFlags) -> Result<ExitCode, UserError> {
    let started = Instant::now();
    if arch.toml {
        return Err(UserError("--toml only applies to emitting; add --dry-run".into()));
    }
    if arch.dry_run {
        return Ok(ExitCode::SUCCESS);
    }
    let json = arch.json;
    let (plan, data) = if let Some(dir) = &f.resume {
        let plan = plan_resume(dir, arch, f)?;
        let data = open_data(
            &plan.cfg.data,
            Some(plan.spec.input_size),
            plan.cfg.augment,
            Some(plan.cfg.workers),
        )?;
        (plan, data)
    } else {
        let data_str = f.data.clone().unwrap_or_else(|| "fashion-mnist".into());
        let data = open_data(&data_str, arch.input, !f.no_augment, f.workers)?;
        let plan = plan_fresh(arch, f, &data, &data_str)?;
        (plan, data)
    };
    if !plan.resume {
        check_fresh_out(&plan.out)?;
        if !json && !f.quiet {
            let counts = count(&plan.spec).map_err(user)?;
            print!("{}", table::render_with(&plan.spec, &counts));
        }
    }
    if !f.quiet {
        let info = data.info();
        eprintln!(
            "netgen: {} {} on {} ({} train / {} test, {}×{}×{}, {} classes), {} on {} thread(s) → {}",
            if plan.resume { "resuming" } else { "training" },
            plan.spec.name,
            info.name,
            info.train_len,
            info.test_len,
            info.channels,
            info.input_size,
            info.input_size,
            info.classes,
            device_name(plan.device),
            plan.cfg.threads,
            plan.out.display()
        );
    }
    let interrupt = Arc::new(AtomicBool::new(false));
    {
        let flag = interrupt.clone();
        // A second Ctrl-C exits at once.
        let _ = ctrlc::set_handler(move || {
            if flag.swap(true, Ordering::SeqCst) {
                std::process::exit(130);
            }
        });
    }
    let opts = RunOptions {
        out: plan.out.clone(),
        resume: plan.resume,
        device: plan.device,
        quiet: f.quiet,
        lines_to_stderr: json,
        stop_after_steps: f.stop_after_steps,
        interrupt: Some(interrupt),
        started,
        poison_step: f.debug_nan_at_step,
    };
    let summary = match train(&plan.spec, &plan.cfg, &data, &opts) {
        Ok(s) => s,
        Err(e @ TrainError::NonFinite { .. }) => {
            eprintln!("netgen: error: {e}");
            return Ok(ExitCode::from(3));
        }
        Err(e) => return Err(user(e)),
    };
    report(&summary, &plan.out, json, f.quiet);
    Ok(match summary.outcome {
        Outcome::Interrupted => ExitCode::from(130),
        _ => ExitCode::SUCCESS,
    })
}

fn report(s: &RunSummary, out: &Path, json: bool, quiet: bool) {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&s.to_json(out)).unwrap_or_default()
        );
        return;
    }
    match s.outcome {
        Outcome::Finished => {
            if let Some(e) = s.last_eval {
                println!(
                    "test accuracy {:.2}% (top-5 {:.2}%, best {:.2}% at step {}), {:.2} epochs, {} steps, {:.0} s on {}",
                    e.top1, e.top5, s.best_acc, s.best_step, s.epochs, s.steps, s.seconds, s.device
                );
            }
            println!(
                "run directory {}: curves.png, metrics.csv, best.safetensors, last.safetensors",
                out.display()
            );
        }
        Outcome::Stopped | Outcome::Interrupted => {
            let why = if s.outcome == Outcome::Stopped {
                "stopped (--stop-after-steps)"
            } else {
                "interrupted"
            };
            if !quiet || s.outcome == Outcome::Interrupted {
                eprintln!(
                    "netgen: {why} at step {} of {}; checkpoint saved: continue with netgen train --resume {}",
                    s.steps,
                    s.total_steps,
                    out.display()
                );
            }
        }
    }
}

//! `netgen eval`: test accuracy of saved weights — a run directory's best (or last) checkpoint, or
//! any `.safetensors` with a spec file.
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use netgen::arch::spec::NetSpec;
use netgen::data::{Data, DataOptions, DataSource};
use netgen::nn::{Network, load_safetensors};
use netgen::train::checkpoint::read_metadata;
use netgen::train::evaluate;
use netgen::train::trainer::device_name;
use tch::nn::VarStore;

use super::train::{load_run, resolve_device};
use crate::UserError;

/// Options of `netgen eval`.
#[derive(Args, Debug)]
pub(crate) struct EvalArgs {
    /// A run directory: its spec.json, config.json (data) and best.safetensors.
    #[arg(long, value_name = "DIR", conflicts_with = "spec")]
    pub(crate) run: Option<PathBuf>,
    /// Weights to evaluate (default with --run: DIR/best.safetensors).
    #[arg(long, value_name = "FILE")]
    pub(crate) weights: Option<PathBuf>,
    /// With --run: evaluate DIR/last.safetensors instead of best.
    #[arg(long, conflicts_with = "weights")]
    pub(crate) last: bool,
    /// The network's spec (JSON or TOML), with --weights.
    #[arg(long, value_name = "FILE", requires = "weights")]
    pub(crate) spec: Option<PathBuf>,
    /// Data source (default: the run's, or fashion-mnist).
    #[arg(long, value_name = "SOURCE")]
    pub(crate) data: Option<String>,
    /// Evaluation batch size (default: the run's, or 256).
    #[arg(long, value_name = "N")]
    pub(crate) batch_size: Option<usize>,
    /// Evaluate on the first N test images (default: the run's own setting, else all).
    #[arg(long, value_name = "N")]
    pub(crate) samples: Option<usize>,
    /// auto, cpu, cuda, cuda:N.
    #[arg(long, value_name = "DEVICE", default_value = "auto")]
    pub(crate) device: String,
    /// libtorch intra-op threads (default: all cores).
    #[arg(long, value_name = "N")]
    pub(crate) threads: Option<usize>,
    /// Data-loader worker threads.
    #[arg(long, value_name = "N")]
    pub(crate) workers: Option<usize>,
    /// Print JSON: {"top1", "top5", "loss", "samples", "weights", "data", "device"}.
    #[arg(long)]
    pub(crate) json: bool,
    /// No progress output.
    #[arg(long)]
    pub(crate) quiet: bool,
}

/// Runs `netgen eval`.
pub(crate) fn run(a: &EvalArgs) -> Result<ExitCode, UserError> {
    let mut samples = a.samples;
    let (spec, weights, data_str, batch) = match (&a.run, &a.spec) {
        (Some(dir), _) => {
            let (spec, cfg) = load_run(dir)?;
            let file = if a.last {
                "last.safetensors"
            } else {
                "best.safetensors"
            };
            let w = a.weights.clone().unwrap_or_else(|| dir.join(file));
            samples = samples.or(cfg.eval_samples);
            (
                spec,
                w,
                a.data.clone().unwrap_or(cfg.data),
                a.batch_size.unwrap_or(cfg.eval_batch_size),
            )
        }
        (None, Some(spec_path)) => {
            let spec =
                NetSpec::load(spec_path).map_err(|e| UserError(format!("{}: {e}", spec_path.display())))?;
            let w = a
                .weights
                .clone()
                .ok_or_else(|| UserError("--spec needs --weights FILE".into()))?;
            (
                spec,
                w,
                a.data.clone().unwrap_or_else(|| "fashion-mnist".into()),
                a.batch_size.unwrap_or(256),
            )
        }
        (None, None) => {
            return Err(UserError(
                "nothing to evaluate: give --run DIR, or --weights FILE --spec FILE".into(),
            ));
        }
    };
    if samples == Some(0) {
        return Err(UserError("--samples must be at least 1".into()));
    }
    if batch == 0 {
        return Err(UserError("--batch-size must be at least 1".into()));
    }
    let threads = a
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    tch::set_num_threads(threads as i32);
    let device = resolve_device(&a.device)?;
    let src = DataSource::parse(&data_str).map_err(|e| UserError(e.to_string()))?;
    let mut opts = DataOptions {
        input_size: Some(spec.input_size),
        augment: false,
        ..DataOptions::default()
    };
    if let Some(w) = a.workers {
        opts.workers = w;
    }
    let data = Data::open(&src, &opts).map_err(|e| UserError(e.to_string()))?;
    let info = data.info();
    if (info.channels, info.classes) != (spec.in_channels, spec.classes) {
        return Err(UserError(format!(
            "the network takes {} channel(s) and {} classes, but {} has {} and {}; pass the --data the network \
             was trained on",
            spec.in_channels, spec.classes, info.name, info.channels, info.classes
        )));
    }
    let vs = VarStore::new(device);
    let net = Network::new(&vs.root(), &spec).map_err(|e| UserError(e.to_string()))?;
    load_safetensors(&vs, &weights).map_err(|e| UserError(e.to_string()))?;
    let step = read_metadata(&weights).ok().and_then(|m| m.get("step").cloned());
    if !a.quiet && !a.json {
        eprintln!(
            "netgen: evaluating {} on {} test images of {} ({})",
            weights.display(),
            samples.map_or(info.test_len, |n| n.min(info.test_len)),
            info.name,
            device_name(device)
        );
    }
    let r =
        evaluate(&net, &data, batch, samples, device, false, false).map_err(|e| UserError(e.to_string()))?;
    if a.json {
        let v = serde_json::json!({
            "top1": r.top1,
            "top5": r.top5,
            "loss": r.loss,
            "samples": r.samples,
            "weights": weights.display().to_string(),
            "step": step.and_then(|s| s.parse::<u64>().ok()),
            "data": info.name,
            "device": device_name(device),
        });
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    } else {
        println!(
            "top-1 {:.2}%  top-5 {:.2}%  loss {:.4}  on {} test images of {}{}",
            r.top1,
            r.top5,
            r.loss,
            r.samples,
            info.name,
            step.map(|s| format!(" (weights of step {s})"))
                .unwrap_or_default()
        );
    }
    Ok(ExitCode::SUCCESS)
}

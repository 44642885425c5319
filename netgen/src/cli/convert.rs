//! `netgen convert`: a CRU-Net initialised from a trained pre-activation ResNeXt run (collective
//! factorization of each share group's grouped kernels), written as a run directory to fine-tune
//! with `netgen train --resume` or evaluate with `netgen eval --run`.
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use netgen::convert::bn::reestimate;
use netgen::convert::run_dir::{check_out, write_run};
use netgen::convert::{BnMode, ConvertOptions, SHIFT_SIGMAS, check_source, convert_weights};
use netgen::count::count;
use netgen::data::{Data, DataOptions, DataSource};
use netgen::train::checkpoint::load_tensors;

use super::train::load_run;
use crate::UserError;

/// Examples of `netgen convert`.
pub(crate) const CONVERT_EXAMPLES: &str = "\
Examples:
  netgen train --R 4 --rank 4 --depth 2,2,2 --preact --first-stride 2 --epochs 3 --out runs/rx
                                                    a small pre-activation ResNeXt to convert
  netgen convert --run runs/rx --share 2 --out runs/cru
                                                    CRU with share groups of 2 units, BN re-estimated
  netgen eval --run runs/cru                        accuracy before fine-tuning
  netgen train --resume runs/cru --epochs 1         fine-tune for one epoch
  netgen convert --run runs/rx --share 2 --bn carry --json --out runs/cru2
                                                    no data read; JSON report with the per-unit errors

The source must be a pre-activation ResNeXt (netgen train ... --preact, R ≥ 2). Each share group's
kernels conv2·diag(bn2 scale)·conv1 are factorized jointly (gbtd's collective factorization); the
factors become the shared conv_reduce / conv_grouped and each unit's conv_extra. BN shifts and the
ReLU between conv1 and conv2 are not linear and are dropped (an approximation: fine-tune after).
The output's config.json is the source run's, without a length: give --epochs or --max-steps to
--resume.";

/// Options of `netgen convert`.
#[derive(Args, Debug)]
pub(crate) struct ConvertArgs {
    /// The trained ResNeXt run directory (spec.json, config.json, best.safetensors or last.safetensors).
    #[arg(long, value_name = "DIR")]
    pub(crate) run: PathBuf,
    /// L: share groups of L consecutive units in every stage with depth ≥ L.
    #[arg(long, value_name = "L")]
    pub(crate) share: usize,
    /// The new run directory (must not exist, or be empty).
    #[arg(long, value_name = "DIR")]
    pub(crate) out: PathBuf,
    /// Block terms R of the CRU stages (default: the source's groups); d* = mid / R.
    #[arg(long, value_name = "R")]
    pub(crate) terms: Option<usize>,
    /// Rank d* = D·2^s of each term in stage s, as for netgen emit (R = mid / d*); instead of --terms.
    #[arg(long, value_name = "D", conflicts_with = "terms")]
    pub(crate) rank: Option<usize>,
    /// BN statistics: reestimate (default; on training batches) or carry (the source's, no data read).
    #[arg(long, value_name = "MODE", default_value = "reestimate")]
    pub(crate) bn: BnMode,
    /// Training batches per re-estimation pass (three passes).
    #[arg(long, value_name = "N", default_value_t = 20)]
    pub(crate) calib_batches: usize,
    /// Sweeps of each collective factorization.
    #[arg(long, value_name = "N", default_value_t = 500)]
    pub(crate) iters: usize,
    /// Learning rate stored for the fine-tuning (default: the source run's).
    #[arg(long, value_name = "LR")]
    pub(crate) lr: Option<f64>,
    /// Use the source's last.safetensors instead of best.safetensors.
    #[arg(long)]
    pub(crate) last: bool,
    /// libtorch intra-op threads (default: all cores).
    #[arg(long, value_name = "N")]
    pub(crate) threads: Option<usize>,
    /// Print a JSON report (also written to DIR/conversion.json).
    #[arg(long)]
    pub(crate) json: bool,
    /// No progress output.
    #[arg(long)]
    pub(crate) quiet: bool,
}

fn user(e: impl std::fmt::Display) -> UserError {
    UserError(e.to_string())
}

fn bar(len: usize, prefix: &str, hidden: bool) -> ProgressBar {
    if hidden {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(len as u64), ProgressDrawTarget::stderr());
    let style = ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} ({elapsed})")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
    bar.set_style(style);
    bar.set_prefix(prefix.to_string());
    bar
}

fn weights_file(dir: &Path, last: bool) -> Result<PathBuf, UserError> {
    let order: &[&str] = if last {
        &["last.safetensors"]
    } else {
        &["best.safetensors", "last.safetensors"]
    };
    order
        .iter()
        .map(|f| dir.join(f))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            UserError(format!(
                "{} has no {}; train the ResNeXt first (netgen train ... --out {})",
                dir.display(),
                order.join(" or "),
                dir.display()
            ))
        })
}

/// Runs `netgen convert`.
pub(crate) fn run(a: &ConvertArgs) -> Result<ExitCode, UserError> {
    if !a.run.is_dir() {
        return Err(UserError(format!(
            "--run {}: no such run directory; give the directory netgen train wrote (spec.json, config.json, \
             best.safetensors)",
            a.run.display()
        )));
    }
    let (src, src_cfg) = load_run(&a.run)?;
    check_source(&src).map_err(user)?;
    check_out(&a.out).map_err(user)?;
    let weights = weights_file(&a.run, a.last)?;
    if a.bn == BnMode::Reestimate && a.calib_batches == 0 {
        return Err(UserError(
            "--calib-batches 0 with --bn reestimate; give N ≥ 1 or use --bn carry".into(),
        ));
    }
    if let Some(t) = a.threads {
        tch::set_num_threads(t as i32);
    }
    let terms = match a.rank {
        None => a.terms,
        Some(0) => return Err(UserError("--rank 0: the rank d* must be ≥ 1".into())),
        Some(d) => {
            // As netgen emit's --rank: d* = D·2^s in stage s, one R = mid / d* for all CRU stages.
            let cru: Vec<(usize, usize)> = src
                .stages
                .iter()
                .enumerate()
                .filter(|(_, s)| s.depth >= a.share)
                .map(|(i, s)| (s.unit.mid(), d << i))
                .collect();
            let r: Vec<usize> = cru.iter().map(|(m, ds)| m / ds).collect();
            if cru.iter().any(|(m, ds)| !m.is_multiple_of(*ds))
                || r.contains(&0)
                || r.windows(2).any(|w| w[0] != w[1])
            {
                let mids: Vec<usize> = cru.iter().map(|c| c.0).collect();
                return Err(UserError(format!(
                    "--rank {d} (d* = {d}·2^s in stage s) does not give one R = mid / d* for the CRU stages' widths \
                     {mids:?}; use --terms R"
                )));
            }
            r.first().copied()
        }
    };
    let mut opts = ConvertOptions::new(a.share);
    opts.terms = terms;
    opts.n_iter_max = a.iters;
    let named = load_tensors(&weights).map_err(user)?;
    let hidden = a.quiet || a.json;
    let fbar = bar(0, "factorizing share groups", hidden);
    let conv = convert_weights(
        &src,
        named,
        &weights.display().to_string(),
        &opts,
        &|done, total| {
            fbar.set_length(total as u64);
            fbar.set_position(done as u64);
        },
    )
    .map_err(user)?;
    fbar.finish_and_clear();
    let (vs, mut net) = conv.network().map_err(user)?;
    if a.bn == BnMode::Reestimate {
        let src_data = DataSource::parse(&src_cfg.data).map_err(user)?;
        let dopts = DataOptions {
            input_size: Some(src.input_size),
            augment: false,
            workers: src_cfg.workers,
            ..DataOptions::default()
        };
        let data = Data::open(&src_data, &dopts).map_err(user)?;
        let bbar = bar(3 * a.calib_batches, "re-estimating BN statistics", hidden);
        reestimate(
            &mut net,
            &conv.new_bns,
            &data,
            src_cfg.batch_size,
            a.calib_batches,
            src_cfg.seed,
            &|| bbar.inc(1),
        )
        .map_err(user)?;
        bbar.finish_and_clear();
    }
    let mut cfg = src_cfg.clone();
    cfg.epochs = None;
    cfg.max_steps = None;
    cfg.budget_seconds = None;
    if let Some(lr) = a.lr {
        if !(lr.is_finite() && lr > 0.0) {
            return Err(UserError(format!("--lr must be a positive number, got {lr}")));
        }
        cfg.recipe.lr = lr;
    }
    let src_params = count(&src).map_err(user)?.params;
    let tgt_params = count(&conv.spec).map_err(user)?.params;
    let worst = conv
        .groups
        .iter()
        .flat_map(|g| g.rel_errors.iter().copied())
        .fold(0.0, f64::max);
    let report = serde_json::json!({
        "source_run": a.run.display().to_string(),
        "source_weights": weights.display().to_string(),
        "source_params": src_params,
        "params": tgt_params,
        "share": a.share,
        "bn": a.bn,
        "calib_batches": if a.bn == BnMode::Reestimate { a.calib_batches } else { 0 },
        "shift_sigmas": SHIFT_SIGMAS,
        "iters": a.iters,
        "max_rel_error": worst,
        "groups": conv.groups,
        "new_bns": conv.new_bns,
        "run_dir": a.out.display().to_string(),
    });
    write_run(&a.out, &conv.spec, &cfg, &vs, &report).map_err(user)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report).map_err(user)?);
    } else if !a.quiet {
        println!(
            "converted {} ({} parameters) → {} ({} parameters)",
            src.name, src_params, conv.spec.name, tgt_params
        );
        for g in &conv.groups {
            let errs: Vec<String> = g.rel_errors.iter().map(|e| format!("{e:.4}")).collect();
            println!(
                "  conv{} units {:?}: R = {}, d* = {}, relative errors [{}] ({} sweeps)",
                g.stage + 2,
                g.units,
                g.terms,
                g.rank,
                errs.join(", "),
                g.sweeps
            );
        }
        println!(
            "run directory {}: evaluate with netgen eval --run {0}, fine-tune with netgen train --resume {0} --epochs E",
            a.out.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

//! Writing the converted network as a run directory that `netgen eval --run DIR` and
//! `netgen train --resume DIR --epochs E` accept: `spec.json`, `config.json` (the source run's
//! options with no length, so a resume must give `--epochs`/`--max-steps`), `best.safetensors` and
//! `last.safetensors` (the converted weights, step 0), `state.safetensors` (zero momentum buffers,
//! loop position 0) and `conversion.json` (what was done, the per-group errors).
//!
//! The directory is assembled as a hidden sibling `.DIR.convert-tmp` and renamed onto `DIR` (which
//! must not exist or be empty) at the end, so a failed conversion leaves no partial run.
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use tch::Tensor;
use tch::nn::VarStore;

use super::{ConvertError, Result};
use crate::arch::spec::NetSpec;
use crate::train::TrainConfig;
use crate::train::checkpoint::{LoopState, save_tensors, write_text};

fn io(path: &Path, e: impl std::fmt::Display) -> ConvertError {
    ConvertError::Source(format!("{}: {e}", path.display()))
}

/// Refuses an output directory that exists and is not empty.
pub fn check_out(out: &Path) -> Result<()> {
    if let Ok(mut entries) = std::fs::read_dir(out)
        && entries.next().is_some()
    {
        return Err(ConvertError::Source(format!(
            "{} exists and is not empty; choose a new --out directory",
            out.display()
        )));
    }
    if out.exists() && !out.is_dir() {
        return Err(ConvertError::Source(format!(
            "{} exists and is not a directory",
            out.display()
        )));
    }
    Ok(())
}

fn tmp_dir(out: &Path) -> PathBuf {
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "run".into());
    out.with_file_name(format!(".{name}.convert-tmp"))
}

/// Writes the run directory `out` for the network in `vs` (built from `spec`). `cfg` is the run
/// configuration to store (lengths cleared by the caller), `report` the JSON of `conversion.json`.
pub fn write_run(
    out: &Path,
    spec: &NetSpec,
    cfg: &TrainConfig,
    vs: &VarStore,
    report: &serde_json::Value,
) -> Result<()> {
    check_out(out)?;
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty())
        && !parent.is_dir()
    {
        return Err(ConvertError::Source(format!(
            "the parent directory {} of --out does not exist; create it first",
            parent.display()
        )));
    }
    let tmp = tmp_dir(out);
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| io(&tmp, e))?;
    }
    std::fs::create_dir(&tmp).map_err(|e| io(&tmp, e))?;
    let r = fill(&tmp, spec, cfg, vs, report).and_then(|_| {
        if out.is_dir() {
            std::fs::remove_dir(out).map_err(|e| io(out, e))?;
        }
        std::fs::rename(&tmp, out).map_err(|e| io(out, e))
    });
    if r.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    r
}

fn fill(
    dir: &Path,
    spec: &NetSpec,
    cfg: &TrainConfig,
    vs: &VarStore,
    report: &serde_json::Value,
) -> Result<()> {
    let mut weights: Vec<(String, Tensor)> = vs
        .variables()
        .into_iter()
        .map(|(n, t)| (n, t.detach().contiguous()))
        .collect();
    weights.sort_by(|a, b| a.0.cmp(&b.0));
    let mut meta = HashMap::new();
    meta.insert("step".to_string(), "0".to_string());
    meta.insert("format".to_string(), "netgen".to_string());
    save_tensors(&dir.join("last.safetensors"), &weights, meta.clone())?;
    save_tensors(&dir.join("best.safetensors"), &weights, meta.clone())?;
    // The optimiser's state at step 0: zero momentum for every trainable tensor.
    let mut state: Vec<(String, Tensor)> = vs
        .variables()
        .into_iter()
        .filter(|(_, t)| t.requires_grad())
        .map(|(n, t)| (format!("momentum.{n}"), t.detach().zeros_like()))
        .collect();
    state.sort_by(|a, b| a.0.cmp(&b.0));
    state.extend(
        LoopState {
            step: 0,
            total_steps: 0,
            best_acc: f64::NEG_INFINITY,
            best_step: 0,
            plateau_factor: 1.0,
            plateau_best: f64::NEG_INFINITY,
            plateau_bad: 0,
            seconds: 0.0,
            seed: cfg.seed,
        }
        .to_tensors(),
    );
    save_tensors(&dir.join("state.safetensors"), &state, meta)?;
    let spec_json = spec.to_json_pretty()?;
    write_text(&dir.join("spec.json"), &spec_json)?;
    let cfg_json = serde_json::to_string_pretty(cfg).map_err(|e| ConvertError::Source(e.to_string()))?;
    write_text(&dir.join("config.json"), &(cfg_json + "\n"))?;
    let rep = serde_json::to_string_pretty(report).map_err(|e| ConvertError::Source(e.to_string()))?;
    write_text(&dir.join("conversion.json"), &(rep + "\n"))?;
    Ok(())
}

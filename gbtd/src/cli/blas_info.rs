//! `gbtd blas-info` (hidden): the OpenBLAS kernels and threads this process runs with, and why.
//! Runs after the start-up kernel choice and inside the CLI's thread policy, so it reports what a
//! `decompose` with the same environment and `--threads` gets.
use std::io::Write;

use anyhow::Result;
use gbtd::openblas::coretype::{self, CpuFeatures, Decision, Keep};
use gbtd::openblas::{ThreadPolicy, ffi};

use super::args::BlasInfoArgs;

/// Prints the report.
pub fn run(a: &BlasInfoArgs) -> Result<()> {
    let mut out = std::io::stdout().lock();
    let decision = coretype::detect();
    let chosen = match &decision {
        Decision::Keep(Keep::SetByGbtd(v)) => Some(v.clone()),
        _ => None,
    };
    if a.coretype {
        if let Some(c) = &chosen {
            writeln!(out, "{c}")?;
        }
        return Ok(());
    }
    let core = ffi::core_name();
    let features = CpuFeatures::detect();
    let best = features.as_ref().map(|f| f.best_level().coretype());
    let feature_names = features.as_ref().map(|f| f.names()).unwrap_or_default();
    let env = std::env::var("OPENBLAS_CORETYPE").ok();
    let policy = ThreadPolicy::current();
    let threads = policy.map_or(1, |p| p.threads());
    let openblas_threads = ffi::num_threads();
    let parking = policy.is_some_and(|p| p.parks()) && ffi::can_join_idle_workers();
    if a.json {
        let v = serde_json::json!({
            "openblas_core": core,
            "openblas_coretype_env": env,
            "chosen_by_gbtd": chosen.is_some(),
            "decision": decision.describe(),
            "cpu_features": feature_names,
            "cpu_best_coretype": best,
            "threads": threads,
            "openblas_threads": openblas_threads,
            "parks_idle_workers": parking,
        });
        writeln!(out, "{v}")?;
    } else {
        writeln!(out, "OpenBLAS kernels:   {core} ({})", decision.describe())?;
        writeln!(
            out,
            "CPU features:       {} (best OpenBLAS family: {})",
            if feature_names.is_empty() {
                "-".to_string()
            } else {
                feature_names.join(" ")
            },
            best.unwrap_or("not x86-64")
        )?;
        writeln!(
            out,
            "threads:            {threads} (OpenBLAS: {openblas_threads}; idle workers parked: {})",
            if parking { "yes" } else { "no" }
        )?;
    }
    Ok(())
}

//! `gbtd reconstruct`: rebuild the tensor a factors file describes and write it as `.npy`.
use std::io::Write;

use anyhow::{Context, Result, bail};

use gbtd::Real;
use gbtd::formats::{self, AnyFactors, DType, FactorsFile};

use super::args::ReconstructArgs;
use super::report;

/// Runs `gbtd reconstruct`.
pub fn run(args: &ReconstructArgs) -> Result<()> {
    let ext = args
        .out
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    if ext.as_deref() != Some("npy") {
        bail!(
            "--out {}: the tensor is written as .npy; use a name ending in .npy",
            args.out.display()
        );
    }
    if formats::Format::from_path(&args.factors).ok() != Some(formats::Format::Safetensors) {
        bail!(
            "{}: expected a .safetensors factors file written by `gbtd decompose --out`",
            args.factors.display()
        );
    }
    let (method, shape, dtype) = match formats::read_factors_any(&args.factors)? {
        AnyFactors::F32(f) => rebuild(&f, args)?,
        AnyFactors::F64(f) => rebuild(&f, args)?,
    };
    if !args.quiet {
        let mut out = std::io::stdout().lock();
        writeln!(
            out,
            "wrote {}: {method} reconstruction, shape {}, {dtype}",
            args.out.display(),
            report::shape(&shape)
        )
        .context("cannot write to standard output")?;
    }
    Ok(())
}

fn rebuild<T: Real>(f: &FactorsFile<T>, args: &ReconstructArgs) -> Result<(String, Vec<usize>, DType)> {
    let x = f
        .decomposition
        .reconstruct()
        .with_context(|| format!("{}: cannot rebuild the tensor", args.factors.display()))?;
    let shape = f.decomposition.shape();
    if x.shape() != shape.as_slice() {
        bail!(
            "{}: the factors rebuild a tensor of shape {:?}, the metadata says {:?}",
            args.factors.display(),
            x.shape(),
            shape
        );
    }
    formats::write_npy(&args.out, &x)?;
    Ok((f.method.to_string(), shape, DType::of::<T>()))
}

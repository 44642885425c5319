//! `gbtd info`: the tensors of a file (name, dtype, shape, elements) and its metadata.
use std::io::Write;

use anyhow::{Context, Result};

use gbtd::formats::{self, Format};

use super::args::InfoArgs;
use super::report;

/// Runs `gbtd info`.
pub fn run(args: &InfoArgs) -> Result<()> {
    let format = Format::from_path(&args.file)?;
    let tensors = formats::list_tensors(&args.file)?;
    let meta = match format {
        Format::Safetensors => formats::read_safetensors_metadata(&args.file)?,
        _ => Default::default(),
    };
    let mut out = std::io::stdout().lock();
    print(&mut out, args, format, &tensors, &meta).context("cannot write to standard output")
}

fn print(
    out: &mut impl Write,
    args: &InfoArgs,
    format: Format,
    tensors: &[formats::TensorInfo],
    meta: &std::collections::BTreeMap<String, String>,
) -> std::io::Result<()> {
    let kind = match format {
        Format::Npy => "npy",
        Format::Npz => "npz",
        Format::Safetensors => "safetensors",
        Format::Pth => "PyTorch checkpoint",
    };
    let n = tensors.len();
    writeln!(
        out,
        "{} ({kind}, {n} tensor{})",
        args.file.display(),
        if n == 1 { "" } else { "s" }
    )?;
    let names: Vec<String> = tensors
        .iter()
        .map(|t| {
            if t.name.is_empty() {
                "(array)".to_string()
            } else {
                t.name.clone()
            }
        })
        .collect();
    let dtypes: Vec<String> = tensors
        .iter()
        .map(|t| {
            if t.readable {
                t.dtype.clone()
            } else {
                format!("{} (unsupported)", t.dtype)
            }
        })
        .collect();
    let shapes: Vec<String> = tensors.iter().map(|t| format!("{:?}", t.shape)).collect();
    let wn = names.iter().map(|s| s.chars().count()).max().unwrap_or(0).max(4);
    let wd = dtypes.iter().map(|s| s.len()).max().unwrap_or(0).max(5);
    let ws = shapes.iter().map(|s| s.len()).max().unwrap_or(0).max(5);
    writeln!(
        out,
        "  {:<wn$}  {:<wd$}  {:<ws$}  elements",
        "name", "dtype", "shape"
    )?;
    for (i, t) in tensors.iter().enumerate() {
        let elements = t.shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        let elements = elements.map(report::count).unwrap_or_else(|| "overflow".into());
        writeln!(
            out,
            "  {:<wn$}  {:<wd$}  {:<ws$}  {elements}",
            names[i], dtypes[i], shapes[i]
        )?;
    }
    if !meta.is_empty() {
        writeln!(out, "metadata:")?;
        let rows: Vec<(&str, String)> = meta.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
        report::table(out, &rows)?;
    }
    Ok(())
}

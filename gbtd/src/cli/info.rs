//! `gbtd info`: the tensors of a file (name, dtype, shape, elements, whether it is a conv kernel)
//! and its metadata, as a table or one JSON object.
use std::collections::BTreeMap;
use std::io::Write;

use anyhow::{Context, Result};
use serde::Serialize;

use gbtd::formats::{self, Format, TensorInfo};

use super::args::InfoArgs;
use super::report;

/// What a tensor is as a convolution weight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConvKind {
    /// Not a conv kernel: not 4-D, or not a floating-point dtype gbtd reads.
    No,
    /// A 4-D floating-point tensor, read as PyTorch's `(out, in, kh, kw)`.
    Conv,
    /// A conv kernel with `in = 1` (and `out > 1`): a depthwise kernel (`groups = out`) or a layer
    /// with a single input channel. Its input mode has nothing to factorize; it is a
    /// `out × (kh·kw)` matrix.
    Depthwise,
}

impl ConvKind {
    /// The kind of a listed tensor (see the variants).
    pub fn of(t: &TensorInfo) -> ConvKind {
        match t.shape.as_slice() {
            [out, input, kh, kw] if t.readable && [*out, *input, *kh, *kw].iter().all(|&d| d >= 1) => {
                if *input == 1 && *out > 1 {
                    ConvKind::Depthwise
                } else {
                    ConvKind::Conv
                }
            }
            _ => ConvKind::No,
        }
    }

    fn label(self) -> &'static str {
        match self {
            ConvKind::No => "no",
            ConvKind::Conv => "yes",
            ConvKind::Depthwise => "depthwise",
        }
    }
}

/// The JSON output (`--json`).
#[derive(Debug, Serialize)]
struct InfoJson<'a> {
    file: String,
    format: &'static str,
    tensors: Vec<TensorJson<'a>>,
    metadata: &'a BTreeMap<String, String>,
}

/// One tensor of the JSON output; `elements` is `null` when the shape's product overflows.
#[derive(Debug, Serialize)]
struct TensorJson<'a> {
    name: &'a str,
    dtype: &'a str,
    shape: &'a [usize],
    elements: Option<usize>,
    readable: bool,
    conv_kernel: bool,
    depthwise: bool,
}

/// Runs `gbtd info`.
pub fn run(args: &InfoArgs) -> Result<()> {
    let format = Format::from_path(&args.file)?;
    let tensors = formats::list_tensors(&args.file)?;
    let meta = match format {
        Format::Safetensors => formats::read_safetensors_metadata(&args.file)?,
        _ => Default::default(),
    };
    let mut out = std::io::stdout().lock();
    let written = if args.json {
        print_json(&mut out, args, format, &tensors, &meta)
    } else {
        print(&mut out, args, format, &tensors, &meta)
    };
    written.context("cannot write to standard output")
}

fn format_name(format: Format) -> &'static str {
    match format {
        Format::Npy => "npy",
        Format::Npz => "npz",
        Format::Safetensors => "safetensors",
        Format::Pth => "PyTorch checkpoint",
    }
}

fn elements(t: &TensorInfo) -> Option<usize> {
    t.shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d))
}

fn print_json(
    out: &mut impl Write,
    args: &InfoArgs,
    format: Format,
    tensors: &[TensorInfo],
    meta: &BTreeMap<String, String>,
) -> std::io::Result<()> {
    let json = InfoJson {
        file: args.file.display().to_string(),
        format: format_name(format),
        tensors: tensors
            .iter()
            .map(|t| {
                let kind = ConvKind::of(t);
                TensorJson {
                    name: &t.name,
                    dtype: &t.dtype,
                    shape: &t.shape,
                    elements: elements(t),
                    readable: t.readable,
                    conv_kernel: kind != ConvKind::No,
                    depthwise: kind == ConvKind::Depthwise,
                }
            })
            .collect(),
        metadata: meta,
    };
    let text = serde_json::to_string(&json).map_err(std::io::Error::other)?;
    writeln!(out, "{text}")
}

fn print(
    out: &mut impl Write,
    args: &InfoArgs,
    format: Format,
    tensors: &[TensorInfo],
    meta: &BTreeMap<String, String>,
) -> std::io::Result<()> {
    let n = tensors.len();
    writeln!(
        out,
        "{} ({}, {n} tensor{})",
        args.file.display(),
        format_name(format),
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
    let counts: Vec<String> = tensors
        .iter()
        .map(|t| {
            elements(t)
                .map(report::count)
                .unwrap_or_else(|| "overflow".into())
        })
        .collect();
    let wn = names.iter().map(|s| s.chars().count()).max().unwrap_or(0).max(4);
    let wd = dtypes.iter().map(|s| s.len()).max().unwrap_or(0).max(5);
    let ws = shapes.iter().map(|s| s.len()).max().unwrap_or(0).max(5);
    let we = counts.iter().map(|s| s.len()).max().unwrap_or(0).max(8);
    writeln!(
        out,
        "  {:<wn$}  {:<wd$}  {:<ws$}  {:<we$}  conv kernel",
        "name", "dtype", "shape", "elements"
    )?;
    for (i, t) in tensors.iter().enumerate() {
        writeln!(
            out,
            "  {:<wn$}  {:<wd$}  {:<ws$}  {:<we$}  {}",
            names[i],
            dtypes[i],
            shapes[i],
            counts[i],
            ConvKind::of(t).label()
        )?;
    }
    if !meta.is_empty() {
        writeln!(out, "metadata:")?;
        let rows: Vec<(&str, String)> = meta.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
        report::table(out, &rows)?;
    }
    Ok(())
}

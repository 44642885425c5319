//! Output formatting: aligned tables, number formats, and one-line error messages with a hint on
//! what to do next.
use std::io::Write;

use gbtd::GbtdError;
use gbtd::formats::IoError;

/// The error and its causes on one line, followed by a hint when one is known.
pub fn one_line(e: &anyhow::Error) -> String {
    // Causes whose text the message already shows (errors that print their source) are skipped.
    let mut msg = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !msg.contains(&text) {
            if !msg.is_empty() {
                msg.push_str(": ");
            }
            msg.push_str(&text);
        }
    }
    let msg = msg.replace(['\n', '\r'], " ");
    match hint(e) {
        Some(h) => format!("{msg} ({h})"),
        None => msg,
    }
}

fn hint(e: &anyhow::Error) -> Option<&'static str> {
    if let Some(io) = e.chain().find_map(|c| c.downcast_ref::<IoError>()) {
        return match io {
            IoError::Read { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                Some("check the path")
            }
            IoError::TensorNotFound { .. } => Some("pass one of these names with --tensor NAME"),
            IoError::NameRequired { .. } => Some("choose one with --tensor NAME"),
            IoError::NameNotApplicable { .. } => Some("drop --tensor"),
            IoError::Tensor {
                source: GbtdError::NonFinite(_),
                ..
            } => Some("replace NaN/infinite values before decomposing"),
            IoError::Factors { .. } => Some("give a file written by `gbtd decompose --out`"),
            _ => None,
        };
    }
    match e.chain().find_map(|c| c.downcast_ref::<GbtdError>()) {
        Some(GbtdError::Rank(_)) => Some("choose ranks between 1 and the mode's dimension"),
        Some(GbtdError::NonFinite(_)) => Some("replace NaN/infinite values before decomposing"),
        _ => None,
    }
}

/// `1234567` → `1,234,567`.
pub fn count(n: usize) -> String {
    gbtd::display::thousands(n as u64)
}

/// `[512, 512, 3, 3]` → `512×512×3×3`.
pub fn shape(s: &[usize]) -> String {
    s.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("×")
}

/// `[64, 64]` → `64,64`.
pub fn list(s: &[usize]) -> String {
    s.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(",")
}

/// A relative error: fixed-point above 1e-4, scientific below.
pub fn error(e: f64) -> String {
    if e == 0.0 || e.abs() >= 1e-4 {
        format!("{e:.6}")
    } else {
        format!("{e:.4e}")
    }
}

/// Writes `rows` as `  label  value` lines with the values aligned.
pub fn table(out: &mut impl Write, rows: &[(&str, String)]) -> std::io::Result<()> {
    let width = rows.iter().map(|(l, _)| l.chars().count()).max().unwrap_or(0);
    for (label, value) in rows {
        writeln!(out, "  {label:<width$}  {value}")?;
    }
    Ok(())
}

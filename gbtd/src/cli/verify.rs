//! `gbtd verify ORIGINAL FACTORIZED`: for every conv that FACTORIZED's `gbtd.compress` metadata
//! lists, runs the original kernel and its three-conv chain on the same seeded Gaussian input and
//! compares the outputs with the kernels ([`gbtd::compress::verify`], where "agree" is defined);
//! prints the table or the JSON report and fails (status 1) when a layer does not agree or
//! exceeds `--max-error`.
use std::cell::OnceCell;
use std::io::Write;
use std::ops::ControlFlow;

use anyhow::{Context, Result, anyhow, bail};
use indicatif::{ProgressBar, ProgressStyle};

use gbtd::compress::verify::{Verdict, VerifyError, VerifyOptions, VerifyReport, verify_checkpoint};
use gbtd::options::{Event, Progress};

use super::args::VerifyArgs;
use super::report;

/// Runs `gbtd verify`.
pub fn run(args: &VerifyArgs) -> Result<()> {
    let opts = VerifyOptions {
        input_size: args.input_size,
        batch: args.batch,
        seed: args.seed,
        max_error: args.max_error,
    };
    // Drawn from the first layer on, after the files' checks.
    let bar = OnceCell::new();
    let progress = |e: Event<'_>| {
        if let Event::Layer {
            index, count, name, ..
        } = e
        {
            let bar = bar.get_or_init(|| progress_bar(args.quiet, count));
            bar.set_position(index as u64);
            bar.set_message(name.to_string());
        }
        ControlFlow::Continue(())
    };
    let result = verify_checkpoint(
        &args.original,
        &args.factorized,
        &opts,
        Progress::interruptible(&progress),
    );
    if let Some(bar) = bar.get() {
        bar.finish_and_clear();
    }
    let report = result.map_err(|e| match e {
        VerifyError::MaxError(m) => {
            anyhow!("--max-error {m}: give a finite number >= 0, e.g. --max-error 0.1")
        }
        e => e.into(),
    })?;
    print_report(&report, args.json).context("cannot write to standard output")?;
    match report.verdict() {
        Verdict::Pass => Ok(()),
        Verdict::Disagree(bad) => bail!(
            "layer '{}': output error {} does not agree with its kernel error {} (expected {} ± {}); the chain's tensors in {} do not compute the kernel they stand for",
            bad.name,
            report::error(bad.output_error),
            report::error(bad.kernel_error),
            report::error(bad.expected_output_error),
            report::error(bad.tolerance),
            report.factorized
        ),
        Verdict::AboveMaxError {
            worst,
            max_error,
            exceeding,
        } => bail!(
            "layer '{}' has output error {} > --max-error {max_error} ({exceeding} of {} layers exceed it); compress it with larger ranks or skip it",
            worst.name,
            report::error(worst.output_error),
            report.layers.len()
        ),
    }
}

fn progress_bar(quiet: bool, n: usize) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(n as u64);
    let style = ProgressStyle::with_template("verify [{bar:30}] {pos}/{len} layers, {msg} ({elapsed})")
        .map(|s| s.progress_chars("=> "))
        .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar
}

fn print_report(r: &VerifyReport, json: bool) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    if json {
        let text = serde_json::to_string(r).map_err(std::io::Error::other)?;
        return writeln!(out, "{text}");
    }
    writeln!(
        out,
        "verify {} against {} ({} layer{}; Gaussian input {}×C×{}×{}, seed {}, computed in {})",
        r.factorized,
        r.original,
        r.layers.len(),
        if r.layers.len() == 1 { "" } else { "s" },
        r.batch,
        r.input_size,
        r.input_size,
        r.seed,
        r.dtype
    )?;
    let head = [
        "layer",
        "shape",
        "chain",
        "kernel err",
        "output err",
        "expected ± tol",
        "agree",
    ];
    let rows: Vec<[String; 7]> = r
        .layers
        .iter()
        .map(|l| {
            [
                l.name.clone(),
                report::shape(&l.shape),
                format!(
                    "{} R={} ranks {}",
                    if l.method.is_empty() { "chain" } else { &l.method },
                    l.terms,
                    report::list(&l.ranks)
                ),
                report::error(l.kernel_error),
                report::error(l.output_error),
                format!(
                    "{} ± {}",
                    report::error(l.expected_output_error),
                    report::error(l.tolerance)
                ),
                if l.agree { "yes" } else { "NO" }.to_string(),
            ]
        })
        .collect();
    let widths: Vec<usize> = (0..7)
        .map(|c| {
            rows.iter()
                .map(|row| row[c].chars().count())
                .chain([head[c].chars().count()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: &[&str]| {
        let mut s = String::from(" ");
        for (c, cell) in cells.iter().enumerate() {
            s.push_str(&format!(" {cell:<w$}", w = widths[c]));
        }
        s.trim_end().to_string()
    };
    writeln!(out, "{}", line(&head))?;
    for row in &rows {
        let cells: Vec<&str> = row.iter().map(String::as_str).collect();
        writeln!(out, "{}", line(&cells))?;
    }
    let verdict = match (r.all_agree, r.max_error) {
        (false, _) => "output and kernel errors DISAGREE".to_string(),
        (true, Some(m)) if r.worst_output_error > m => format!("all agree; above --max-error {m}"),
        (true, Some(m)) => format!("all agree; within --max-error {m}"),
        (true, None) => "all agree".to_string(),
    };
    match &r.worst_layer {
        Some(w) => writeln!(
            out,
            "totals: {} layers, worst output error {} ({w}), {verdict}, {:.2} s",
            r.layers.len(),
            report::error(r.worst_output_error),
            r.seconds
        ),
        None => writeln!(out, "totals: no compressed layers listed, nothing to verify"),
    }
}

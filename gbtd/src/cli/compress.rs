//! `gbtd compress`: decompose every selected conv kernel of a model ([`gbtd::compress`]), write
//! the checkpoint with the layer chains, and report per layer and in total.
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};

use std::ops::ControlFlow;

use gbtd::Method;
use gbtd::compress::{self, CompressOptions, Compressed, Event, LayerKind, Overrides, Stage};
use gbtd::formats::write_atomic;
use gbtd::options::{IterOptions, Progress};

use super::args::{CompressArgs, CompressMethodArg};
use super::report;

/// The report file's format, from its extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReportFormat {
    Json,
    Csv,
}

fn ext(p: &Path) -> Option<String> {
    p.extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
}

/// Every check on the arguments that can be made before reading the model.
fn check_args(args: &CompressArgs) -> Result<(Method, Option<ReportFormat>)> {
    if !(args.tol.is_finite() && args.tol >= 0.0) {
        bail!(
            "--tol {}: the tolerance must be a finite number >= 0 (0 runs all --max-iter sweeps)",
            args.tol
        );
    }
    let method = match (args.method, args.terms) {
        (CompressMethodArg::Btd, Some(0)) => bail!("--terms must be at least 1"),
        (CompressMethodArg::Btd, Some(terms)) => Method::Btd { terms },
        (CompressMethodArg::Btd, None) => {
            bail!("--method btd needs --terms R, the number of block terms (for example --terms 4)")
        }
        (m, Some(_)) => bail!(
            "--terms applies to --method btd only; for {} drop it",
            if m == CompressMethodArg::Cp {
                "cp"
            } else {
                "tucker2"
            }
        ),
        (CompressMethodArg::Tucker2, None) => Method::Tucker2,
        (CompressMethodArg::Cp, None) => Method::Cp,
    };
    gbtd::formats::check_output_path(
        &args.out,
        &["safetensors"],
        "the compressed model",
        &args.model,
        "input",
    )
    .context("--out")?;
    let report = match &args.report {
        None => None,
        Some(r) => {
            gbtd::formats::check_output_path(r, &["json", "csv"], "the report", &args.model, "input")
                .context("--report")?;
            let f = match ext(r).as_deref() {
                Some("json") => ReportFormat::Json,
                _ => ReportFormat::Csv,
            };
            if r == &args.out {
                bail!("--report and --out name the same file");
            }
            Some(f)
        }
    };
    Ok((method, report))
}

fn progress_bar(hidden: bool) -> ProgressBar {
    if hidden {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(0);
    let style = ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} layers, {msg} ({elapsed})")
        .map(|s| s.progress_chars("=> "))
        .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar.enable_steady_tick(Duration::from_millis(250));
    bar
}

/// Runs `gbtd compress`.
pub fn run(args: &CompressArgs) -> Result<()> {
    let (method, report_format) = check_args(args)?;
    let overrides = match &args.overrides {
        Some(p) => Overrides::from_file(p)?,
        None => Overrides::empty(),
    };
    let geometry = match &args.layer_info {
        Some(p) => compress::read_layer_info(p)?,
        None => Default::default(),
    };
    let bar = progress_bar(args.quiet || args.json);
    let progress = |e: Event<'_>| {
        if let Event::Layer {
            stage,
            index,
            count,
            name,
        } = e
        {
            bar.set_prefix(match stage {
                Stage::Spectra => "spectra",
                Stage::Decompose | Stage::Verify => "decompose",
            });
            bar.set_length(count as u64);
            bar.set_position(index as u64);
            bar.set_message(name.to_string());
        }
        ControlFlow::Continue(())
    };
    let opts = CompressOptions {
        method,
        rule: args.rank_rule.clone(),
        overrides,
        layers: args.layers.clone(),
        skip: args.skip.clone(),
        iter: IterOptions {
            n_iter_max: args.max_iter,
            tol: args.tol,
            seed: args.seed,
        },
        linear: args.linear,
        geometry,
        progress: Progress::interruptible(&progress),
    };
    let result = compress::compress(&args.model, &opts);
    bar.finish_and_clear();
    let compressed = result?;
    if !args.json && !args.quiet {
        for name in &compressed.unmatched_overrides {
            eprintln!(
                "warning: the overrides file names '{name}', which is not a selected conv layer (names are module names such as layer1.0.conv2)"
            );
        }
        if !compressed.inferred.is_empty() {
            let list: Vec<String> = compressed
                .inferred
                .iter()
                .map(|(n, g)| format!("{n} ({g})"))
                .collect();
            eprintln!(
                "note: groups read off the preceding normalization layer for {}; give --layer-info to state them",
                list.join(", ")
            );
        }
        for l in compressed.layers.iter().filter(|l| l.grows()) {
            eprintln!(
                "warning: {}: ranks {} make the layer larger than the original ({} weights instead of {}, compression {:.2}×); choose smaller ranks to compress it",
                l.name,
                report::list(&l.ranks),
                report::count(l.params_after as usize),
                report::count(l.params_before as usize),
                l.params_before as f64 / l.params_after.max(1) as f64
            );
        }
    }
    compressed.write(&args.out)?;
    if let (Some(path), Some(format)) = (&args.report, report_format) {
        let text = match format {
            ReportFormat::Json => format!("{:#}\n", compressed.report_json()),
            ReportFormat::Csv => compressed.report_csv(),
        };
        write_atomic(path, |w| w.write_all(text.as_bytes()))?;
    }
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if args.json {
        writeln!(out, "{}", compressed.report_json())
    } else {
        print_table(&mut out, &compressed, args)
    }
    .context("cannot write to standard output")
}

fn ratio(before: u64, after: u64) -> String {
    format!("{:.2}×", before as f64 / after.max(1) as f64)
}

fn big(n: u64) -> String {
    match n {
        n if n >= 1_000_000_000 => format!("{:.2}G", n as f64 / 1e9),
        n if n >= 1_000_000 => format!("{:.1}M", n as f64 / 1e6),
        n => report::count(n as usize),
    }
}

/// Writes rows of cells with each column padded to its widest cell (the columns listed in
/// `left` left aligned, the others right aligned).
fn columns(out: &mut impl Write, rows: &[Vec<String>], left: &[usize]) -> std::io::Result<()> {
    let ncol = rows.iter().map(Vec::len).max().unwrap_or(0);
    let width: Vec<usize> = (0..ncol)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for r in rows {
        let mut line = String::from(" ");
        for (c, cell) in r.iter().enumerate() {
            let w = width[c];
            if c == 0 {
                line.push_str(&format!(" {cell:<w$}"));
            } else if left.contains(&c) {
                line.push_str(&format!("  {cell:<w$}"));
            } else {
                line.push_str(&format!("  {cell:>w$}"));
            }
        }
        writeln!(out, "{}", line.trim_end())?;
    }
    Ok(())
}

fn print_table(out: &mut impl Write, c: &Compressed, args: &CompressArgs) -> std::io::Result<()> {
    let t = c.totals();
    let macs = c.macs_known();
    writeln!(
        out,
        "{} of {}: {} layers compressed, rank rule {} ({})",
        c.method.as_str(),
        c.source,
        t.layers,
        c.rank_rule,
        if macs {
            "multiply-adds per sample, from --layer-info"
        } else {
            "no multiply-adds: sizes unknown without --layer-info; weights are the multiply-adds per output position at stride 1"
        }
    )?;
    let mut head = vec!["layer", "shape", "ranks", "rel. error", "params before", "after"];
    if macs {
        head.extend(["MACs before", "after"]);
    }
    head.push("seconds");
    let mut rows = vec![head.into_iter().map(String::from).collect::<Vec<_>>()];
    for l in &c.layers {
        let mut ranks = match (l.kind, l.method) {
            (LayerKind::Linear, _) => format!("svd {}", report::list(&l.ranks)),
            (_, Method::Btd { terms }) => format!("{terms}×({})", report::list(&l.ranks)),
            _ => report::list(&l.ranks),
        };
        if l.conv_groups() > 1 {
            ranks = format!("{ranks} ×{}g", l.conv_groups());
        }
        let mut row = vec![
            l.name.clone(),
            report::shape(&l.shape),
            ranks,
            report::error(l.relative_error),
            report::count(l.params_before as usize),
            format!(
                "{} ({})",
                report::count(l.params_after as usize),
                ratio(l.params_before, l.params_after)
            ),
        ];
        if let (true, Some(b), Some(a)) = (macs, l.macs_before, l.macs_after) {
            row.extend([big(b), big(a)]);
        }
        row.push(format!("{:.2}", l.seconds));
        rows.push(row);
    }
    columns(out, &rows, &[])?;
    let kernels: Vec<_> = c.skipped.iter().filter(|k| k.kernel).collect();
    if !kernels.is_empty() {
        writeln!(out, "skipped layers:")?;
        let rows: Vec<Vec<String>> = kernels
            .iter()
            .map(|k| vec![k.name().to_string(), report::shape(&k.shape), k.reason.clone()])
            .collect();
        columns(out, &rows, &[2])?;
    }
    let others = c.skipped.len() - kernels.len();
    if others > 0 {
        let not_float = c
            .skipped
            .iter()
            .filter(|k| k.reason.starts_with("not floating point"))
            .count();
        writeln!(
            out,
            "{others} other selected tensors copied unchanged ({not_float} not floating point, {} not layer weights)",
            others - not_float
        )?;
    }
    writeln!(out, "totals:")?;
    let mut rows = vec![
        (
            "weights",
            format!(
                "{} → {} ({}) in the compressed layers",
                report::count(t.params_before as usize),
                report::count(t.params_after as usize),
                ratio(t.params_before, t.params_after)
            ),
        ),
        (
            "model parameters",
            format!(
                "{} → {} ({})",
                report::count(t.model_params_before as usize),
                report::count(t.model_params_after as usize),
                ratio(t.model_params_before, t.model_params_after)
            ),
        ),
    ];
    if let (Some(b), Some(a)) = (t.macs_before, t.macs_after) {
        rows.push((
            "multiply-adds",
            format!(
                "{} → {} ({}) per sample in the compressed layers",
                big(b),
                big(a),
                ratio(b, a)
            ),
        ));
    }
    rows.push(("seconds", format!("{:.2} decomposing", t.seconds)));
    rows.push(("written", args.out.display().to_string()));
    if let Some(r) = &args.report {
        rows.push(("report", r.display().to_string()));
    }
    report::table(out, &rows)
}

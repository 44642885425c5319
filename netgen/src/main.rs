//! `netgen` command-line interface: from a GBTD configuration (or a preset, or a spec file) to a
//! ResNet / ResNeXt / CRU-Net architecture with its Table-1-style description, parameter count and
//! FLOPs (multiply-adds).
mod cli;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use netgen::arch::config::{Depth, GbtdConfig};
use netgen::arch::presets::{self, PRESETS, PresetOptions};
use netgen::arch::spec::NetSpec;
use netgen::count::{Counts, count};
use netgen::table;

const EXAMPLES: &str = "\
Examples:
  netgen --R 32 --rank 4 --share 6                 ResNeXt-50 32×4d with CRU (shared factors) at conv4
  netgen --R 32 --rank 4 --share 6 --depth 56 --cru-width 640 --groups-eq-channels
                                                   the released CRU-Net-56
  netgen --R 1 --rank 64 --dry-run                 ResNet-50 (R = 1: Tucker-2 bottlenecks)
  netgen --R 8 --rank 4 --input 28 --classes 10    3-stage small-image net for Fashion-MNIST
  netgen --R 32 --rank 4 --share 6 --input 28      CRU on 28×28 (depth 56 = [6,6,6] from the share)
  netgen emit --preset crunet_small --input 28 --in-channels 1 --first-stride 2
                                                   a small CRU-Net at a quarter of the multiply-adds
  netgen emit --preset crunet116 --json            spec + params + flops (multiply-adds) as JSON
  netgen emit --preset resnet_small --input 28 --in-channels 1
  netgen emit --spec my_net.toml                   a hand-written spec (TOML or JSON)
  netgen presets                                   list the presets

GBTD mapping: R = groups of every 3×3, bottleneck width of stage s = R·rank·2^s (32×4d: 128, 256,
512, 1024), stage output widths 256·2^s. --share L makes every stage with depth ≥ L a CRU stage
whose units share the first 1×1 and the grouped 3×3 within groups of L consecutive units
(--share 1 = no sharing, the plain ResNeXt / ResNet). Lists are comma-separated: 3,4,6,3.
FLOPs are multiply-adds (convs + fc), as in torchvision's GFLOPS and the paper's Table 1.";

/// Maps a GBTD configuration (R Tuckers of rank d* per residual function, factors shared across L
/// units) to a ResNet / ResNeXt / CRU-Net architecture, with parameter and FLOP counts.
///
/// Without a subcommand, netgen prints the architecture given by the flags and then trains it on
/// Fashion-MNIST (see `netgen train --help`); --dry-run always means emit only.
#[derive(Parser, Debug)]
#[command(name = "netgen", version, after_help = EXAMPLES,
    args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    #[command(flatten)]
    emit: EmitArgs,
    #[command(flatten)]
    run: cli::train::TrainFlags,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Print the architecture table, parameter count and FLOPs (or JSON with --json).
    #[command(after_help = EXAMPLES)]
    Emit(Box<EmitArgs>),
    /// List the presets.
    Presets,
    /// Train a network (architecture flags as for emit, or --preset/--spec) into a run directory.
    #[command(after_help = cli::TRAIN_EXAMPLES)]
    Train(Box<cli::TrainCmd>),
    /// Test accuracy of a run's checkpoint or of any weights with their spec.
    #[command(after_help = cli::TRAIN_EXAMPLES)]
    Eval(Box<cli::eval::EvalArgs>),
    /// A CRU-Net initialised from a trained pre-activation ResNeXt run (collective factorization).
    #[command(after_help = cli::convert::CONVERT_EXAMPLES)]
    Convert(Box<cli::convert::ConvertArgs>),
}

#[derive(Args, Debug, Default)]
struct EmitArgs {
    /// A named architecture (see `netgen presets`).
    #[arg(long, value_name = "NAME", help_heading = "Source")]
    preset: Option<String>,
    /// A spec file: .toml, or JSON (also accepts the output of --json).
    #[arg(long, value_name = "FILE", help_heading = "Source")]
    spec: Option<PathBuf>,

    /// R: number of block terms = groups of each 3×3 conv (1 = ResNet).
    #[arg(long = "R", value_name = "R", help_heading = "GBTD configuration")]
    r: Option<usize>,
    /// d3* = d4*: rank of each Tucker term in conv2 (bottleneck width of stage s = R·rank·2^s).
    #[arg(long, value_name = "D", help_heading = "GBTD configuration")]
    rank: Option<usize>,
    /// L: share factors within groups of L consecutive units (CRU); stages with depth ≥ L use CRU.
    #[arg(long, value_name = "L", help_heading = "GBTD configuration")]
    share: Option<usize>,
    /// 50, 56, 101, 116, 152 (ImageNet), 9k+2 (small images), or stage depths like 3,4,6,3
    /// (default: 50; small images 29, or 9L+2 = [L,L,L] with --share L).
    #[arg(
        long,
        value_name = "DEPTH",
        value_delimiter = ',',
        help_heading = "GBTD configuration"
    )]
    depth: Vec<usize>,
    /// Which stages use CRU: conv3,conv4 or 0-based indices 1,2 (default: stages with depth ≥ L).
    #[arg(long, value_name = "LIST", value_delimiter = ',', value_parser = parse_stage,
        help_heading = "GBTD configuration")]
    cru_stages: Option<Vec<usize>>,
    /// Accept share groups of unequal size (share 7 in a stage of 18 units: 7+7+4); refused otherwise.
    #[arg(long, help_heading = "GBTD configuration")]
    allow_uneven_share: bool,
    /// CRU width D: one value, or one per CRU stage (default R·rank·2^s).
    #[arg(
        long,
        value_name = "D[,D..]",
        value_delimiter = ',',
        help_heading = "GBTD configuration"
    )]
    cru_width: Option<Vec<usize>>,
    /// CRU groups = CRU width (depthwise 3×3), as in the paper §4.2.2 (default: groups = R).
    #[arg(long, help_heading = "GBTD configuration")]
    groups_eq_channels: bool,
    /// Omit the CRU's extra 1×1 conv (Fig. 3 left instead of right).
    #[arg(long, help_heading = "GBTD configuration")]
    no_extra_conv: bool,
    /// Stage output widths, e.g. 256,512,1024,2048 (default 256·2^s).
    #[arg(
        long,
        value_name = "LIST",
        value_delimiter = ',',
        help_heading = "GBTD configuration"
    )]
    widths: Option<Vec<usize>>,
    /// Bottleneck widths of the non-CRU stages (default R·rank·2^s).
    #[arg(
        long,
        value_name = "LIST",
        value_delimiter = ',',
        help_heading = "GBTD configuration"
    )]
    mids: Option<Vec<usize>>,
    /// Stem width (default 64).
    #[arg(long, value_name = "W", help_heading = "GBTD configuration")]
    stem_width: Option<usize>,
    /// Pre-activation units also without CRU stages (CRU nets are always pre-activation).
    #[arg(long, help_heading = "GBTD configuration")]
    preact: bool,

    /// Number of classes (default 1000 for ImageNet, 10 for small images).
    #[arg(
        long,
        value_name = "N",
        help_heading = "Input and head (also for --preset/--spec)"
    )]
    classes: Option<usize>,
    /// Input size: 224 (ImageNet layout) or < 64, e.g. 28 / 32 (3-stage small-image layout).
    #[arg(
        long,
        value_name = "PX",
        help_heading = "Input and head (also for --preset/--spec)"
    )]
    input: Option<usize>,
    /// Input channels (default 1 for 28×28, else 3).
    #[arg(
        long,
        value_name = "C",
        help_heading = "Input and head (also for --preset/--spec)"
    )]
    in_channels: Option<usize>,
    /// Stride of the first stage (default 1; small-image layouts: 1,2,2). 2 quarters the
    /// multiply-adds at the same parameters, e.g. for training on a CPU.
    #[arg(
        long,
        value_name = "S",
        help_heading = "Input and head (also for --preset/--spec)"
    )]
    first_stride: Option<usize>,

    /// Print JSON: {"spec": …, "params": …, "flops": … (multiply-adds), "stages": […]}.
    #[arg(long, help_heading = "Output")]
    json: bool,
    /// Print the spec as TOML (a starting point for --spec files).
    #[arg(long, conflicts_with = "json", help_heading = "Output")]
    toml: bool,
    /// Only emit the architecture (never train).
    #[arg(long, help_heading = "Output")]
    dry_run: bool,
}

/// A user-facing error: one line on stderr, exit code 2.
struct UserError(String);

impl<E: std::fmt::Display> From<E> for UserError {
    fn from(e: E) -> Self {
        UserError(e.to_string())
    }
}

impl EmitArgs {
    fn gbtd_flags_given(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        let opts = [
            ("--R", self.r.is_some()),
            ("--rank", self.rank.is_some()),
            ("--share", self.share.is_some()),
            ("--depth", !self.depth.is_empty()),
            ("--cru-stages", self.cru_stages.is_some()),
            ("--allow-uneven-share", self.allow_uneven_share),
            ("--cru-width", self.cru_width.is_some()),
            ("--groups-eq-channels", self.groups_eq_channels),
            ("--no-extra-conv", self.no_extra_conv),
            ("--widths", self.widths.is_some()),
            ("--mids", self.mids.is_some()),
            ("--stem-width", self.stem_width.is_some()),
            ("--preact", self.preact),
        ];
        for (name, given) in opts {
            if given {
                v.push(name);
            }
        }
        v
    }

    /// The spec selected by the arguments (validated).
    fn to_spec(&self) -> Result<NetSpec, UserError> {
        let overrides = PresetOptions {
            classes: self.classes,
            input_size: self.input,
            in_channels: self.in_channels,
        };
        let gbtd = self.gbtd_flags_given();
        let source = match (&self.preset, &self.spec) {
            (Some(_), Some(_)) => return Err(UserError("give either --preset or --spec, not both".into())),
            (Some(_), None) => Some("--preset"),
            (None, Some(_)) => Some("--spec"),
            (None, None) => None,
        };
        if let (Some(src), Some(first)) = (source, gbtd.first()) {
            return Err(UserError(format!(
                "{first} cannot be combined with {src}; use the GBTD flags alone, or adapt the {} with --classes, \
                 --input, --in-channels",
                &src[2..]
            )));
        }
        if let Some(name) = &self.preset {
            let mut spec = presets::preset(name, overrides)?;
            if let Some(st) = self.first_stride {
                spec.stages[0].stride = st;
                spec.validate()?;
            }
            return Ok(spec);
        }
        if let Some(path) = &self.spec {
            let mut spec = NetSpec::load(path)?;
            if let Some(c) = overrides.classes {
                spec.classes = c;
            }
            if let Some(n) = overrides.input_size {
                spec.input_size = n;
            }
            if let Some(c) = overrides.in_channels {
                spec.in_channels = c;
            }
            if let (Some(st), Some(first)) = (self.first_stride, spec.stages.first_mut()) {
                first.stride = st;
            }
            spec.validate()?;
            return Ok(spec);
        }
        let (Some(r), Some(rank)) = (self.r, self.rank) else {
            return Err(UserError(
                if gbtd.is_empty() && self.classes.is_none() && self.input.is_none() {
                    "nothing to emit: give --R and --rank (e.g. --R 32 --rank 4 --share 6), --preset NAME or \
                     --spec FILE; see netgen --help"
                } else if self.r.is_none() {
                    "--R is missing: give the number of block terms R (groups), e.g. --R 32 (or --R 1 for ResNet)"
                } else {
                    "--rank is missing: give the Tucker rank d* = d3* = d4*, e.g. --rank 4 (32×4d) or 64 (R = 1)"
                }
                .into(),
            ));
        };
        let cfg = GbtdConfig {
            r,
            rank,
            share: self.share,
            depth: Depth::from_values(&self.depth),
            cru_stages: self.cru_stages.clone(),
            widths: self.widths.clone(),
            mids: self.mids.clone(),
            cru_width: self.cru_width.clone(),
            groups_eq_channels: self.groups_eq_channels,
            no_extra_conv: self.no_extra_conv,
            preact: self.preact,
            stem_width: self.stem_width,
            classes: self.classes,
            input: self.input,
            in_channels: self.in_channels,
            first_stride: self.first_stride,
            allow_uneven_share: self.allow_uneven_share,
        };
        Ok(cfg.to_spec()?)
    }
}

/// One `--cru-stages` entry: "conv3" → 1 (the paper's stage names), or a 0-based index "1".
fn parse_stage(t: &str) -> Result<usize, String> {
    let t = t.trim();
    let lower = t.to_ascii_lowercase();
    match lower.strip_prefix("conv") {
        Some(k) => match k.parse::<usize>() {
            Ok(k) if k >= 2 => Ok(k - 2),
            _ => Err(format!(
                "'{t}' is not a stage; use conv2, conv3, … or 0-based 0, 1, …"
            )),
        },
        None => t
            .parse::<usize>()
            .map_err(|_| format!("'{t}' is not a stage; use conv2, conv3, … or 0-based 0, 1, …")),
    }
}

fn json_doc(spec: &NetSpec, c: &Counts) -> serde_json::Value {
    let stages: Vec<serde_json::Value> = c
        .stages
        .iter()
        .map(|s| {
            serde_json::json!({
                "stage": format!("conv{}", s.index + 2),
                "out_size": s.out_size,
                "width": s.width,
                "params": s.tally.params,
                "flops": s.tally.flops,
            })
        })
        .collect();
    serde_json::json!({
        "spec": spec,
        "params": c.params,
        "flops": c.flops,
        "flops_unit": "multiply-adds",
        "bn_params": c.bn_params,
        "stem": { "params": c.stem.params, "flops": c.stem.flops },
        "stages": stages,
        "head": { "params": c.head.params, "flops": c.head.flops },
    })
}

fn emit(args: &EmitArgs) -> Result<String, UserError> {
    let spec = args.to_spec()?;
    let counts = count(&spec)?;
    if args.json {
        let mut s = serde_json::to_string_pretty(&json_doc(&spec, &counts))?;
        s.push('\n');
        Ok(s)
    } else if args.toml {
        Ok(spec.to_toml()?)
    } else {
        Ok(table::render_with(&spec, &counts))
    }
}

fn list_presets() -> String {
    let w = PRESETS.iter().map(|p| p.name.len()).max().unwrap_or(0);
    let mut s = String::new();
    for p in PRESETS {
        s.push_str(&format!("{:w$}  {}\n", p.name, p.about));
    }
    s
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
                let _ = e.print();
                return ExitCode::SUCCESS;
            }
            // One line: clap's first line without its "error: " prefix.
            let text = e.to_string();
            let first = text.lines().next().unwrap_or("invalid arguments");
            let first = first.strip_prefix("error: ").unwrap_or(first);
            eprintln!("netgen: error: {first} (see netgen --help)");
            return ExitCode::from(2);
        }
    };
    let mut cli = cli;
    let result = match cli.cmd.take() {
        Some(Cmd::Presets) => Ok(list_presets()),
        Some(Cmd::Emit(args)) => emit(&args),
        Some(Cmd::Train(mut t)) => return finish(cli::train::run(&mut t.arch, &t.flags)),
        Some(Cmd::Eval(e)) => return finish(cli::eval::run(&e)),
        Some(Cmd::Convert(c)) => return finish(cli::convert::run(&c)),
        None if cli.emit.dry_run || cli.emit.toml => emit(&cli.emit),
        None => return finish(cli::train::run(&mut cli.emit, &cli.run)),
    };
    match result {
        Ok(text) => {
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            // A closed pipe (e.g. `| head`) is not an error worth a panic.
            let _ = out.write_all(text.as_bytes());
            ExitCode::SUCCESS
        }
        Err(UserError(m)) => {
            eprintln!("netgen: error: {}", m.replace('\n', " "));
            ExitCode::from(2)
        }
    }
}

/// Exit code of a train/eval command; a user error is one line on stderr and exit code 2.
fn finish(r: Result<ExitCode, UserError>) -> ExitCode {
    r.unwrap_or_else(|UserError(m)| {
        eprintln!("netgen: error: {}", m.replace('\n', " "));
        ExitCode::from(2)
    })
}

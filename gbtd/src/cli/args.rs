//! Command-line arguments (clap derive) and the one-line rendering of usage errors.
use std::path::PathBuf;
use std::process::ExitCode;

use clap::builder::TypedValueParser;
use clap::error::ErrorKind;
use clap::{Args, Parser, Subcommand, ValueEnum};

const EXAMPLES: &str = "\
Examples:
  gbtd info resnet50.safetensors
  gbtd decompose kernel.npy --method tucker2 --rank 64,64 --out k.safetensors
  gbtd decompose model.safetensors --tensor layer1.0.conv2.weight --method btd --terms 8 --rank 8,8
  gbtd decompose x.npz --tensor x --method cp --rank 32 --max-iter 200 --tol 1e-10 --json
  gbtd reconstruct k.safetensors --out k_hat.npy
  gbtd verify model.pth model_tucker2.safetensors --max-error 0.3
  gbtd collective model.safetensors --tensors 'layer3\\..*conv2\\.weight' --terms 4 --rank 16,16

Files: .npy (one array), .npz (--tensor NAME unless it holds one array), .safetensors (--tensor NAME
unless it holds one tensor). Conv kernels use the PyTorch layout (out, in, kh, kw).

Environment: OPENBLAS_NUM_THREADS is the default of --threads (capped by the CPUs). When OpenBLAS's
own detection falls back to kernels older than the CPU's instruction set (AVX2, AVX-512), gbtd runs
itself again with OPENBLAS_CORETYPE set to matching ones and says so; set OPENBLAS_CORETYPE to choose.";

const DECOMPOSE_HELP: &str = "\
Methods and ranks (ranks are listed in the order of the factorized modes):
  tucker   HOOI on every mode:               --rank r0,r1,...,r(N-1)
  tucker2  partial Tucker on modes 0,1:       --rank out,in   (a conv kernel's channel modes, paper Eq. 6)
  cp       CP-ALS on every mode:              --rank R
  btd      R block terms; on a 4-D kernel the channel modes 0,1 (spatial modes kept whole, paper
           Eq. 5/6), otherwise every mode:    --terms R --rank out*,in*
  --modes m0,m1,... overrides the factorized modes of tucker, tucker2 and btd.

Reported: relative error ||X - X_hat|| / ||X|| (for tucker/tucker2 from ||X||^2 - ||core||^2, for cp from
the fit's own sums, when the error is large enough for them to resolve it: >= 1.5e-4 in f64; otherwise
and for btd from the reconstruction), parameters before
(elements of X) and after (cores + factors + weights), compression = before / after, sweeps run and
the seconds spent in the decomposition itself (file I/O excluded). A warning on stderr (not with
--json/--quiet) says when the ranks make the layer larger than the original (compression < 1).

Limits: a run whose estimated factor and workspace memory exceeds the larger of 2 GiB and 64 x the
input's size is refused before it starts, with the bytes it would need. Tensors with entries beyond
2^30 or below 2^-30 in magnitude are scaled by a power of two (exactly) while decomposing; f32 data
beyond 2^60 or below 2^-60 is computed in f64 with --dtype auto.

Examples:
  gbtd decompose kernel.npy --method tucker2 --rank 64,64 --out k.safetensors
  gbtd decompose w.safetensors --tensor conv.weight --method btd --terms 8 --rank 8,8 --json
  gbtd decompose x.npy --method tucker --rank 10,10,10 --max-iter 20 --tol 0 --quiet";

const COMPRESS_HELP: &str = "\
Each selected conv kernel NAME.weight, PyTorch layout (out, in/G, kh, kw) for a conv with G groups,
becomes NAME.0.weight (1x1, in -> G*R*r_in, groups G), NAME.1.weight (kh x kw, groups G*R, the
original stride/padding) and NAME.2.weight (1x1, G*R*r_out -> out, groups G; NAME.bias moves to
NAME.2.bias); with --linear, each 2-D weight (out, in) becomes NAME.0.weight (r, in) and
NAME.1.weight (out, r) by a truncated SVD (NAME.bias moves to NAME.1.bias). Every other tensor is
copied unchanged. The file's metadata key gbtd.compress describes each chain (JSON), so PyTorch can
rebuild the modules (gbtd.torch.load_compressed). tucker2: R = 1; btd: R = --terms; cp: R = K,
r_in = r_out = 1. A grouped conv is compressed group by group with the same ranks.

Rank rules (ranks are r_out,r_in; one rank K for cp; r for a linear layer):
  fixed:a,b      the same ranks for every layer (lowered to what a layer can hold)
  energy:0.9     the smallest ranks keeping that fraction of each mode unfolding's energy
  ratio:4        per layer, the largest ranks with at most 1/4 of the kernel's weights
  budget:0.25    at most 0.25 x the selected kernels' weights in total, allocated across layers
  vbmf           analytic empirical variational Bayes matrix factorization per mode unfolding

Groups and sizes: a state dict records neither a conv's groups nor its output size. --layer-info
FILE.json (written by gbtd.torch.layer_info(model, example_input, path)) gives both: grouped convs
are then compressed group by group and the report shows real multiply-adds per sample. Without it,
in a PyTorch checkpoint a spatial kernel whose input channels differ from the preceding
normalization layer's channel count is taken as grouped (the report names those layers), and no
multiply-adds are reported (a layer's weights are its multiply-adds per output position at stride 1).

Skipped (with the reason in the report): tensors that are not floating point or not 4-D (2-D
without --linear), depthwise kernels, layers the rule skips, and chains with no fewer weights than
the layer (a warning names any layer that still grows).

Examples:
  gbtd compress resnet50.pth --method tucker2 --rank-rule energy:0.9 --out resnet50_t2.safetensors
  gbtd compress model.safetensors --method btd --terms 4 --rank-rule fixed:16,16 --layers 'layer[34]' \\
      --skip downsample --out small.safetensors --report report.csv
  gbtd compress model.pth --method cp --rank-rule ratio:4 --layer-info info.json --linear \\
      --out cp.safetensors --json --quiet";
const VERIFY_HELP: &str = "\
For every layer listed in FACTORIZED's `gbtd.compress` metadata (written by `gbtd compress --out`
or `gbtd collective --out`), the original kernel NAME.weight of ORIGINAL and the chain NAME.0/1/2
of FACTORIZED run on the same seeded Gaussian input (BATCH x in x SIZE x SIZE, stride 1, padding
(k-1)/2; biases are checked equal, not added). Reported per layer: the relative kernel error
||W - W'||/||W|| (W' the chain's kernel), the relative output error ||y - y'||/||y||, and whether
they agree. The chain is linear, so for Gaussian input the output error estimates the kernel error
weighted by how often each tap falls inside the input (\"expected\"); they agree when they differ by
less than six upper-bound standard deviations of that estimate (\"tol\", smaller for larger
--input-size and --batch) plus rounding.

Exit status 1 (one line naming the layer) when a layer's output error exceeds --max-error, or when
a layer's output and kernel errors do not agree (the chain does not compute its kernel). Layers are
computed in f64 when the original kernel is f64, otherwise in f32.

Examples:
  gbtd verify resnet50.pth resnet50_tucker2.safetensors
  gbtd verify model.safetensors model_btd.safetensors --input-size 32 --batch 2 --max-error 0.2
  gbtd verify model.pth compressed.safetensors --json --quiet";

const COLLECTIVE_HELP: &str = "\
Every 4-D tensor whose name matches --tensors (a regular expression searched anywhere in the
name) is a kernel X_l (out_l, in, kh, kw); (in, kh, kw) must agree. Their concatenation along the
output channels gets one block term decomposition with R terms of rank (d4*, d3*) (out, in): the
kernels share each term's core G_r (d4* x d3* x kh x kw) and input factor A3_r (in x d3*), and
kernel l has its own output-factor block A4_r^l (out_l x d4*) (the paper's collective
factorization, Eq. 12).

--rank D3,D4 lists the input rank d3* first and the output rank d4* second (the paper's order;
note that `gbtd decompose --method btd --rank` lists out,in).

Reported: each kernel's relative error, and the parameters of the collective factorization
(sum over terms of core + shared A3 + every kernel's A4 block), of L independent BTDs with the same
R and ranks, and of the original kernels. --out writes a checkpoint in the format of
`gbtd compress --out`: MODEL's tensors with each kernel NAME.weight (and NAME.bias) replaced by
NAME.0/1/2 (the shared tensors are stored once per kernel; the metadata's
\"collective\": {\"shared\": [...]} lists which tensors are equal), so `gbtd verify` and the
PyTorch loader of the README read it unchanged.

Examples:
  gbtd collective resnext50.safetensors --tensors 'layer3\\.[0-9]+\\.conv2\\.weight' --terms 8 --rank 16,16
  gbtd collective model.pth --tensors 'conv2\\.weight$' --terms 4 --rank 8,8 --out shared.safetensors
  gbtd collective model.safetensors --tensors '^layer1\\..*conv2\\.weight$' --terms 2 --rank 4,4 --max-iter 50 --json";

const BLAS_INFO_EXAMPLES: &str = "\
Examples:
  gbtd blas-info
  gbtd blas-info --json --threads 2
  gbtd blas-info --coretype      the OPENBLAS_CORETYPE gbtd chose for this CPU (empty if none)";

/// Tensor decompositions (Tucker, Tucker-2, CP, block terms) of tensors in .npy, .npz,
/// .safetensors files and PyTorch checkpoints.
#[derive(Debug, Parser)]
#[command(name = "gbtd", version, after_help = EXAMPLES)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
    /// Threads for OpenBLAS and gbtd's own workers, even above the number of CPUs [default:
    /// OPENBLAS_NUM_THREADS capped by the CPUs, else the CPUs]. Factors do not depend on it.
    #[arg(long, global = true, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub threads: Option<u16>,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Decompose a tensor and report its relative error and compression; optionally save the factors.
    #[command(after_help = DECOMPOSE_HELP)]
    Decompose(DecomposeArgs),
    /// Compress every conv kernel of a model: decompose each into a chain of three convs and
    /// write a new .safetensors checkpoint with the chains, plus a per-layer report.
    #[command(after_help = COMPRESS_HELP)]
    Compress(CompressArgs),
    /// Rebuild the tensor from a factors file written by `decompose --out`.
    #[command(after_help = "Example:\n  gbtd reconstruct k.safetensors --out k_hat.npy")]
    Reconstruct(ReconstructArgs),
    /// List the tensors of a .npy, .npz, .safetensors file or PyTorch checkpoint (name, dtype,
    /// shape, whether it is a conv kernel) and its metadata.
    #[command(
        after_help = "Conv kernel: a 4-D floating-point tensor, read in PyTorch's layout (out, in, kh, kw);\n\"depthwise\" when in = 1 (a depthwise kernel, groups = out, or a layer with one input channel).\n\nExamples:\n  gbtd info resnet50.safetensors\n  gbtd info resnet50.pth --json"
    )]
    Info(InfoArgs),
    /// Check a compressed checkpoint: run each original conv and its factorized chain on the same
    /// random input and compare output errors with kernel errors.
    #[command(after_help = VERIFY_HELP)]
    Verify(VerifyArgs),
    /// Collective factorization of several conv kernels (shared cores and input factors, one
    /// output-factor block per kernel); optionally write a compressed checkpoint.
    #[command(after_help = COLLECTIVE_HELP)]
    Collective(CollectiveArgs),
    /// Which OpenBLAS kernels and how many threads gbtd runs with, and why.
    #[command(hide = true, after_help = BLAS_INFO_EXAMPLES)]
    BlasInfo(BlasInfoArgs),
}

/// `--method`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum MethodArg {
    /// HOOI Tucker on every mode (or --modes).
    Tucker,
    /// Partial Tucker on modes 0,1 (a conv kernel's output and input channels).
    Tucker2,
    /// CP (PARAFAC) by ALS.
    Cp,
    /// Block term decomposition (partial on the channel modes of a 4-D kernel).
    Btd,
}

/// `--init`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum InitArg {
    /// Leading singular vectors of the unfoldings.
    Svd,
    /// Seeded Gaussian factors (see --seed).
    Random,
}

/// `--dtype`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DtypeArg {
    /// f64 for float64 input, f32 for float32/float16/bfloat16 input.
    Auto,
    /// Single precision.
    F32,
    /// Double precision.
    F64,
}

/// Arguments of `gbtd decompose`.
#[derive(Debug, Args)]
pub struct DecomposeArgs {
    /// Input tensor file (.npy, .npz, .safetensors, or a PyTorch checkpoint .pth/.pt/.bin/.ckpt).
    pub input: PathBuf,
    /// Name of the tensor in a .npz or .safetensors file holding several.
    #[arg(long, value_name = "NAME")]
    pub tensor: Option<String>,
    /// Decomposition method.
    #[arg(long, value_enum)]
    pub method: MethodArg,
    /// Ranks, comma-separated, one per factorized mode in mode order (one number R for cp).
    #[arg(long, value_name = "a,b,..", value_delimiter = ',')]
    pub rank: Option<Vec<usize>>,
    /// Number of block terms R (btd only).
    #[arg(long, value_name = "R")]
    pub terms: Option<usize>,
    /// Factorized modes, comma-separated (tucker, tucker2, btd); default depends on the method.
    #[arg(long, value_name = "m,n,..", value_delimiter = ',')]
    pub modes: Option<Vec<usize>>,
    /// Maximum number of ALS / HOOI sweeps.
    #[arg(long, value_name = "N", default_value_t = 100)]
    pub max_iter: usize,
    /// Stop when the relative error changes by less than T between sweeps (0: run all sweeps).
    #[arg(long, value_name = "T", default_value_t = 1e-8, allow_negative_numbers = true)]
    pub tol: f64,
    /// Initialisation.
    #[arg(long, value_enum, default_value_t = InitArg::Svd)]
    pub init: InitArg,
    /// Seed of the random initialisation (and of CP's random columns beyond a dimension).
    #[arg(long, value_name = "S", default_value_t = 0)]
    pub seed: u64,
    /// Precision of the computation.
    #[arg(long, value_enum, default_value_t = DtypeArg::Auto)]
    pub dtype: DtypeArg,
    /// Write the factors to this .safetensors file (atomically).
    #[arg(long, value_name = "FACTORS.safetensors")]
    pub out: Option<PathBuf>,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
    /// No progress bar (the result is still printed).
    #[arg(long, short)]
    pub quiet: bool,
}

/// `gbtd compress --method`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CompressMethodArg {
    /// Partial Tucker on the channel modes (out, in): 1x1, kh x kw, 1x1.
    Tucker2,
    /// CP of rank K: 1x1, depthwise kh x kw, 1x1.
    Cp,
    /// --terms R block terms: 1x1, grouped kh x kw (groups R), 1x1.
    Btd,
}

fn parse_regex(s: &str) -> Result<regex::Regex, String> {
    regex::Regex::new(s).map_err(|e| e.to_string().replace('\n', " "))
}

fn parse_rule(s: &str) -> Result<gbtd::compress::RankRule, String> {
    s.parse().map_err(|e: gbtd::GbtdError| e.to_string())
}

/// Arguments of `gbtd compress`.
#[derive(Debug, Args)]
pub struct CompressArgs {
    /// The model: a PyTorch checkpoint (.pth, .pt, .bin, .ckpt), .safetensors or .npz file.
    pub model: PathBuf,
    /// Decomposition of each conv kernel.
    #[arg(long, value_enum)]
    pub method: CompressMethodArg,
    /// Number of block terms R (btd only).
    #[arg(long, value_name = "R")]
    pub terms: Option<usize>,
    /// How ranks are chosen: fixed:a,b | energy:F | ratio:X | budget:F | vbmf (see below).
    #[arg(long, value_name = "RULE", value_parser = parse_rule)]
    pub rank_rule: gbtd::compress::RankRule,
    /// Per-layer rules (TOML or JSON file: module name such as layer1.0.conv2 -> rule or "skip").
    #[arg(long, value_name = "FILE")]
    pub overrides: Option<PathBuf>,
    /// Only tensors whose name matches this regex (searched anywhere in the name).
    #[arg(long, value_name = "REGEX", value_parser = parse_regex)]
    pub layers: Option<regex::Regex>,
    /// Leave tensors whose name matches this regex unchanged.
    #[arg(long, value_name = "REGEX", value_parser = parse_regex)]
    pub skip: Option<regex::Regex>,
    /// The compressed checkpoint (.safetensors, written atomically).
    #[arg(long, value_name = "OUT.safetensors")]
    pub out: PathBuf,
    /// Also write the report, as JSON or CSV by the extension (atomically).
    #[arg(long, value_name = "report.json|report.csv")]
    pub report: Option<PathBuf>,
    /// Each layer's groups and input/output sizes (JSON written by gbtd.torch.layer_info): grouped
    /// convs are compressed group by group and real multiply-adds are reported.
    #[arg(long, value_name = "FILE.json")]
    pub layer_info: Option<PathBuf>,
    /// Also compress 2-D weights (linear layers), by a truncated SVD into two linear layers.
    #[arg(long)]
    pub linear: bool,
    /// Maximum number of ALS / HOOI sweeps per layer.
    #[arg(long, value_name = "N", default_value_t = 100)]
    pub max_iter: usize,
    /// Stop a layer when its relative error changes by less than T between sweeps (0: all sweeps).
    #[arg(long, value_name = "T", default_value_t = 1e-8, allow_negative_numbers = true)]
    pub tol: f64,
    /// Seed (CP's random columns beyond a dimension).
    #[arg(long, value_name = "S", default_value_t = 0)]
    pub seed: u64,
    /// Print the report as one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
    /// No progress bar and no warnings (the report is still printed).
    #[arg(long, short)]
    pub quiet: bool,
}

/// Arguments of `gbtd reconstruct`.
#[derive(Debug, Args)]
pub struct ReconstructArgs {
    /// Factors file written by `gbtd decompose --out`.
    pub factors: PathBuf,
    /// Output .npy file (written atomically).
    #[arg(long, value_name = "X.npy")]
    pub out: PathBuf,
    /// Print nothing on success.
    #[arg(long, short)]
    pub quiet: bool,
}

/// Arguments of `gbtd info`.
#[derive(Debug, Args)]
pub struct InfoArgs {
    /// A .npy, .npz, .safetensors file or a PyTorch checkpoint (.pth, .pt, .bin, .ckpt).
    pub file: PathBuf,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `gbtd verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The original model (.safetensors, .npz or a PyTorch checkpoint).
    pub original: PathBuf,
    /// The compressed checkpoint (.safetensors written by `gbtd compress --out` or `gbtd collective --out`).
    pub factorized: PathBuf,
    /// Height and width of the random input.
    #[arg(long, value_name = "SIZE", default_value_t = 56, value_parser = clap::value_parser!(u32).range(1..=4096).map(|v| v as usize))]
    pub input_size: usize,
    /// Images in the random input.
    #[arg(long, value_name = "N", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=1024).map(|v| v as usize))]
    pub batch: usize,
    /// Seed of the random input.
    #[arg(long, value_name = "S", default_value_t = 0)]
    pub seed: u64,
    /// Fail (exit status 1) when a layer's relative output error exceeds E.
    #[arg(long, value_name = "E", allow_negative_numbers = true)]
    pub max_error: Option<f64>,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
    /// No progress bar (the result is still printed).
    #[arg(long, short)]
    pub quiet: bool,
}

/// Arguments of `gbtd collective`.
#[derive(Debug, Args)]
pub struct CollectiveArgs {
    /// The model (.safetensors, .npz or a PyTorch checkpoint).
    pub model: PathBuf,
    /// Regular expression selecting the kernels by tensor name (searched, not anchored).
    #[arg(long, value_name = "REGEX")]
    pub tensors: String,
    /// Number of block terms R (the groups of the shared k×k conv).
    #[arg(long, value_name = "R")]
    pub terms: usize,
    /// Ranks d3*,d4*: input rank first, then output rank (the paper's order).
    #[arg(long, value_name = "D3,D4", value_delimiter = ',')]
    pub rank: Vec<usize>,
    /// Write a compressed checkpoint (.safetensors, atomically).
    #[arg(long, value_name = "OUT.safetensors")]
    pub out: Option<PathBuf>,
    /// Maximum number of ALS sweeps.
    #[arg(long, value_name = "N", default_value_t = 100)]
    pub max_iter: usize,
    /// Stop when the relative error changes by less than T between sweeps (0: run all sweeps).
    #[arg(long, value_name = "T", default_value_t = 1e-8, allow_negative_numbers = true)]
    pub tol: f64,
    /// Initialisation.
    #[arg(long, value_enum, default_value_t = InitArg::Svd)]
    pub init: InitArg,
    /// Seed of the random initialisation.
    #[arg(long, value_name = "S", default_value_t = 0)]
    pub seed: u64,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
    /// No progress bar (the result is still printed).
    #[arg(long, short)]
    pub quiet: bool,
}

/// Arguments of `gbtd blas-info`.
#[derive(Debug, Args)]
pub struct BlasInfoArgs {
    /// Print one JSON object.
    #[arg(long, conflicts_with = "coretype")]
    pub json: bool,
    /// Print only the OPENBLAS_CORETYPE that gbtd chose for this CPU (nothing if it chose none).
    #[arg(long)]
    pub coretype: bool,
}

/// Reports a command-line parsing error on one line (`error: ...`) and returns exit status 2;
/// `--help` and `--version` print as usual and succeed.
pub fn usage_error(e: clap::Error) -> ExitCode {
    match e.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            let _ = e.print();
            ExitCode::SUCCESS
        }
        ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = e.print();
            ExitCode::from(2)
        }
        _ => {
            let text = e.render().to_string();
            let parts: Vec<&str> = text
                .lines()
                .map(str::trim)
                .filter(|l| {
                    !l.is_empty() && !l.starts_with("Usage:") && !l.starts_with("For more information")
                })
                .collect();
            let mut line = parts.join(" ");
            if !line.starts_with("error:") {
                line = format!("error: {line}");
            }
            let is_sub = |s: &str| std::env::args().nth(1).as_deref() == Some(s);
            let help = match () {
                _ if is_sub("decompose") => "gbtd decompose --help",
                _ if is_sub("compress") => "gbtd compress --help",
                _ if is_sub("reconstruct") => "gbtd reconstruct --help",
                _ if is_sub("info") => "gbtd info --help",
                _ if is_sub("verify") => "gbtd verify --help",
                _ if is_sub("collective") => "gbtd collective --help",
                _ => "gbtd --help",
            };
            eprintln!("{line} (see `{help}`)");
            ExitCode::from(2)
        }
    }
}

//! `gbtd` command-line interface.
use clap::Parser;

/// Tensor decompositions (Tucker, CP, BTD, generalized BTD, collective) of conv kernels and
/// plain tensors.
#[derive(Parser)]
#[command(name = "gbtd", version, about)]
struct Cli {}

fn main() {
    let _ = Cli::parse();
}

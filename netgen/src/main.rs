//! `netgen` command-line interface.
use clap::Parser;

/// Maps a GBTD configuration to a ResNet / ResNeXt / CRU-Net architecture.
#[derive(Parser)]
#[command(name = "netgen", version, about)]
struct Cli {}

fn main() {
    let _ = Cli::parse();
}

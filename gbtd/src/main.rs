//! `gbtd`: tensor decompositions (Tucker, Tucker-2, CP, BTD) of tensors stored in `.npy`, `.npz`
//! and `.safetensors` files, from the command line.
//!
//! Subcommands: `decompose` (factorize, report error and compression, optionally save the
//! factors), `reconstruct` (rebuild the tensor from saved factors) and `info` (list a file's
//! tensors). Errors print one line, `error: ...`, on standard error and exit with status 1 (2 for
//! command-line usage errors); nothing is written on failure.
use std::process::ExitCode;

use clap::Parser;

mod cli {
    pub mod args;
    pub mod decompose;
    pub mod info;
    pub mod reconstruct;
    pub mod report;
}

use cli::args::{Cli, Command};

fn main() -> ExitCode {
    // SAFETY: every BLAS call of this process is made by the decomposition it runs (see
    // `allow_blas_parking`).
    unsafe { gbtd::linalg::allow_blas_parking() };
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return cli::args::usage_error(e),
    };
    let result = match &cli.command {
        Command::Decompose(a) => cli::decompose::run(a),
        Command::Reconstruct(a) => cli::reconstruct::run(a),
        Command::Info(a) => cli::info::run(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", cli::report::one_line(&e));
            ExitCode::from(1)
        }
    }
}

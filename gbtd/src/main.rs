//! `gbtd`: tensor decompositions (Tucker, Tucker-2, CP, BTD) of tensors stored in `.npy`, `.npz`
//! and `.safetensors` files, from the command line.
//!
//! Subcommands: `decompose` (factorize, report error and compression, optionally save the
//! factors), `compress` (replace every conv kernel of a model by a factorized chain),
//! `verify` (run original convs and their factorized chains side by side), `collective` (shared
//! factorization of several kernels), `reconstruct` (rebuild the tensor from saved factors) and
//! `info` (list a file's tensors). Errors print one line, `error: ...`, on standard error and exit
//! with status 1 (2 for
//! command-line usage errors); nothing is written on failure.
use std::process::ExitCode;

use clap::Parser;
use gbtd::openblas::{ThreadPolicy, default_threads, ensure_kernels_match_cpu};

mod cli {
    pub mod args;
    pub mod blas_info;
    pub mod collective;
    pub mod compress;
    pub mod decompose;
    pub mod info;
    pub mod reconstruct;
    pub mod report;
    pub mod verify;
}

use cli::args::{Cli, Command};

/// Whether a command does BLAS work (`Some`), and then whether it may say on standard error that
/// it switched OpenBLAS's kernels (not with `--quiet` or `--json`).
fn blas_work(command: &Command) -> Option<bool> {
    match command {
        Command::Decompose(a) => Some(!a.quiet && !a.json),
        Command::Compress(a) => Some(!a.quiet && !a.json),
        Command::Reconstruct(a) => Some(!a.quiet),
        Command::BlasInfo(_) => Some(false),
        Command::Verify(a) => Some(!a.quiet && !a.json),
        Command::Collective(a) => Some(!a.quiet && !a.json),
        Command::Info(_) => None,
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return cli::args::usage_error(e),
    };
    // OpenBLAS kernels that match the CPU's instruction set: may run this program again with
    // OPENBLAS_CORETYPE set (see `gbtd::openblas::coretype`), before anything else happens.
    if let Some(announce) = blas_work(&cli.command) {
        ensure_kernels_match_cpu("gbtd", announce);
    }
    let threads = cli.threads.map_or_else(default_threads, usize::from);
    // SAFETY: every BLAS call of this process is made by the command below, on this thread or on
    // gbtd's own workers.
    let policy = unsafe { ThreadPolicy::new(threads).parking() };
    let _scope = policy.enter();
    let result = match &cli.command {
        Command::Decompose(a) => cli::decompose::run(a),
        Command::Compress(a) => cli::compress::run(a),
        Command::Reconstruct(a) => cli::reconstruct::run(a),
        Command::Info(a) => cli::info::run(a),
        Command::BlasInfo(a) => cli::blas_info::run(a),
        Command::Verify(a) => cli::verify::run(a),
        Command::Collective(a) => cli::collective::run(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", cli::report::one_line(&e));
            ExitCode::from(1)
        }
    }
}

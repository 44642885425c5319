//! Prints the wall time of each HOOI or CP-ALS sweep on a tensor from a `.npy` file (float64),
//! in one process and several repetitions, so that initialisation, per-sweep cost and warm-up
//! effects can be told apart; the first interval also holds the initialisation.
//!
//! `cargo run --release -p gbtd --example sweep_times -- X.npy tucker|tucker2|cp RANK SWEEPS [REPS]`
//! (`tucker` uses rank `RANK` on every mode, `tucker2` on modes 0 and 1.)
use std::cell::{Cell, RefCell};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use gbtd::cp::{CpOptions, parafac};
use gbtd::tucker::{TuckerOptions, tucker};

fn main() -> Result<()> {
    // As the `gbtd` CLI does. SAFETY: all BLAS calls come from the decompositions below.
    let _scope = unsafe { gbtd::openblas::ThreadPolicy::from_env().parking() }.enter();
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 5 {
        bail!("usage: sweep_times X.npy tucker|tucker2|cp RANK SWEEPS [REPS]");
    }
    let x: ndarray::ArrayD<f64> =
        ndarray_npy::read_npy(&args[1]).with_context(|| format!("reading {}", args[1]))?;
    let rank: usize = args[3].parse().context("RANK")?;
    let sweeps: usize = args[4].parse().context("SWEEPS")?;
    let reps: usize = args.get(5).map_or(Ok(3), |r| r.parse()).context("REPS")?;
    for _ in 0..reps {
        let start = Instant::now();
        let last = Cell::new(start);
        let times = RefCell::new(Vec::new());
        let tick = |_: usize, _: f64| {
            let now = Instant::now();
            times.borrow_mut().push((now - last.get()).as_secs_f64() * 1e3);
            last.set(now);
        };
        match args[2].as_str() {
            "tucker" => {
                let o = TuckerOptions::new(vec![rank; x.ndim()])
                    .with_n_iter_max(sweeps)
                    .with_tol(0.0)
                    .with_progress(&tick);
                tucker(&x.view(), &o)?;
            }
            "tucker2" => {
                let o = TuckerOptions::new(vec![rank; 2])
                    .with_modes(vec![0, 1])
                    .with_n_iter_max(sweeps)
                    .with_tol(0.0)
                    .with_progress(&tick);
                tucker(&x.view(), &o)?;
            }
            "cp" => {
                let o = CpOptions::new(rank)
                    .with_n_iter_max(sweeps)
                    .with_tol(0.0)
                    .with_progress(&tick);
                parafac(&x.view(), &o)?;
            }
            m => bail!("unknown method {m}; use tucker, tucker2 or cp"),
        }
        let times = times.into_inner();
        let total = start.elapsed().as_secs_f64() * 1e3;
        let each: Vec<String> = times.iter().map(|t| format!("{t:.2}")).collect();
        println!(
            "total {total:.1} ms; init + sweep 1, then each sweep (ms): {}",
            each.join(" ")
        );
    }
    Ok(())
}

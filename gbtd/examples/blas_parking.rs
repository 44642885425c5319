//! Shows what `gbtd::openblas::ThreadPolicy::parking` does: the number of threads of this process
//! and the CPU time they burn while the main thread sleeps, inside and after a
//! `SingleThreadedBlas` scope (under a policy of `OPENBLAS_NUM_THREADS` threads). Without parking,
//! OpenBLAS's idle worker keeps spinning inside the scope for a while.
//!
//! `OPENBLAS_NUM_THREADS=2 cargo run --release -p gbtd --example blas_parking [-- park]`
use std::time::Duration;

/// User + system CPU seconds of this process, from `/proc/self/stat`.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").map_or(0, |d| d.count())
}

fn idle_cpu(label: &str) {
    let before = cpu_seconds();
    std::thread::sleep(Duration::from_millis(300));
    println!(
        "{label}: {} threads, {:.2} s of CPU while sleeping 0.3 s",
        threads(),
        cpu_seconds() - before
    );
}

fn main() {
    let mut policy = gbtd::openblas::ThreadPolicy::from_env();
    if std::env::args().nth(1).as_deref() == Some("park") {
        // SAFETY: this process makes no BLAS call from another thread.
        policy = unsafe { policy.parking() };
    }
    let _scope = policy.enter();
    {
        let _single = gbtd::openblas::SingleThreadedBlas::new();
        idle_cpu("inside a SingleThreadedBlas scope");
    }
    idle_cpu("after it");
}

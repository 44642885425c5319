//! The `gbtd` CLI runs OpenBLAS kernels that match the CPU's instruction set
//! (`gbtd::openblas::coretype`), whatever OpenBLAS's detection by model number says.
//!
//! The expected kernel family comes from the CPU flags in `/proc/cpuinfo`, read here (not from
//! the code under test), and what OpenBLAS runs from its own `OPENBLAS_VERBOSE=2` report
//! (`Core: NAME`, printed each time the library is loaded). The fallback path (OpenBLAS chose an
//! older family) is exercised on any CPU with `GBTD_PRETEND_OPENBLAS_CORE`, which makes gbtd
//! believe OpenBLAS reported that name.
#![cfg(all(target_os = "linux", target_arch = "x86_64"))]

use std::path::Path;
use std::process::{Command, Output};

use ndarray_npy::write_npy;

/// The OpenBLAS families acceptable on this CPU (the generic one of its best instruction set
/// first, then OpenBLAS's tuned families of the same set), from `/proc/cpuinfo`'s flags.
fn expected_families() -> Vec<&'static str> {
    let info = std::fs::read_to_string("/proc/cpuinfo").expect("read /proc/cpuinfo");
    let flags: Vec<&str> = info
        .lines()
        .find(|l| l.starts_with("flags"))
        .and_then(|l| l.split(':').nth(1))
        .expect("a flags line")
        .split_whitespace()
        .collect();
    let has = |f: &str| flags.contains(&f);
    let avx2 = has("avx") && has("avx2") && has("fma");
    if avx2
        && ["avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl"]
            .iter()
            .all(|f| has(f))
    {
        vec!["SkylakeX", "Cooperlake", "SapphireRapids"]
    } else if avx2 {
        vec!["Haswell", "Zen", "Excavator"]
    } else if has("avx") {
        vec!["Sandybridge", "Bulldozer", "Piledriver", "Steamroller"]
    } else {
        vec![]
    }
}

/// Runs gbtd with a clean OpenBLAS environment plus `env`, and OpenBLAS's verbose report on.
fn gbtd(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gbtd"));
    cmd.args(args)
        .env_remove("LD_LIBRARY_PATH")
        .env_remove("OPENBLAS_CORETYPE")
        .env_remove("GBTD_OPENBLAS_CORETYPE")
        .env_remove("GBTD_PRETEND_OPENBLAS_CORE")
        .env("OPENBLAS_VERBOSE", "2");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let o = cmd.output().expect("run gbtd");
    assert!(
        o.status.success(),
        "gbtd {args:?} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

/// The families OpenBLAS reported, one per time it was loaded, in order.
fn loads(o: &Output) -> Vec<String> {
    String::from_utf8_lossy(&o.stderr)
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Core: "))
        .map(|c| c.trim().to_string())
        .collect()
}

/// gbtd's own lines on standard error.
fn notes(o: &Output) -> Vec<String> {
    String::from_utf8_lossy(&o.stderr)
        .lines()
        .filter(|l| l.starts_with("gbtd: "))
        .map(str::to_string)
        .collect()
}

fn small_input(dir: &Path) -> String {
    let x = gbtd::random::randn::<f64>(&[12, 10, 8], &mut gbtd::random::rng(3));
    let p = dir.join("x.npy");
    write_npy(&p, &x).unwrap();
    p.to_str().unwrap().to_string()
}

#[test]
fn the_kernels_gbtd_runs_match_the_cpu() {
    let expected = expected_families();
    let dir = tempfile::tempdir().unwrap();
    let x = small_input(dir.path());
    let o = gbtd(
        &[
            "decompose",
            &x,
            "--method",
            "tucker",
            "--rank",
            "3,3,3",
            "--quiet",
        ],
        &[],
    );
    let loads = loads(&o);
    // Either OpenBLAS knew this CPU (one load), or gbtd ran itself again once with a better
    // family (two loads); either way the last one is a family of the CPU's best instruction set.
    assert!(matches!(loads.len(), 1 | 2), "{loads:?}");
    if let Some(first) = expected.first() {
        assert!(
            expected.contains(&loads.last().unwrap().as_str()),
            "{loads:?}, expected one of {expected:?}"
        );
        if loads.len() == 2 {
            assert_eq!(loads[1], *first);
        }
    }
    eprintln!("OpenBLAS loads: {loads:?} (expected one of {expected:?})");
}

#[test]
fn a_fallback_family_is_replaced_once_and_said_once() {
    let expected = expected_families();
    let Some(&best) = expected.first() else {
        eprintln!("skipped: this CPU has no AVX, so OpenBLAS's SSE kernels are already its best");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let x = small_input(dir.path());
    let pretend = [("GBTD_PRETEND_OPENBLAS_CORE", "Prescott")];
    let args = ["decompose", &x, "--method", "tucker", "--rank", "3,3,3"];

    let o = gbtd(&args, &pretend);
    let l = loads(&o);
    assert_eq!(l.len(), 2, "gbtd should run itself again once: {l:?}");
    assert_eq!(l[1], best, "{l:?}");
    let n = notes(&o);
    assert_eq!(n.len(), 1, "{n:?}");
    assert!(
        n[0].contains("Prescott") && n[0].contains(&format!("OPENBLAS_CORETYPE={best}")),
        "{n:?}"
    );

    // --quiet and --json: the same switch, said nowhere; --json output stays one JSON object.
    let quiet = gbtd(&[&args[..], &["--quiet"]].concat(), &pretend);
    assert_eq!(loads(&quiet).len(), 2);
    assert!(notes(&quiet).is_empty(), "{:?}", notes(&quiet));
    let json = gbtd(&[&args[..], &["--json"]].concat(), &pretend);
    assert!(notes(&json).is_empty(), "{:?}", notes(&json));
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).expect("one JSON object");
    assert!(v["rel_error"].is_number(), "{v}");

    // The process that does the work knows that gbtd chose its kernels.
    let info = gbtd(&["blas-info", "--json"], &pretend);
    let v: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(v["openblas_core"], best, "{v}");
    assert_eq!(v["openblas_coretype_env"], best, "{v}");
    assert_eq!(v["chosen_by_gbtd"], true, "{v}");
    let coretype = gbtd(&["blas-info", "--coretype"], &pretend);
    assert_eq!(String::from_utf8_lossy(&coretype.stdout).trim(), best);
}

#[test]
fn a_users_coretype_is_never_overridden() {
    if expected_families().is_empty() {
        eprintln!("skipped: this CPU has no AVX");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let x = small_input(dir.path());
    let args = ["decompose", &x, "--method", "tucker", "--rank", "3,3,3"];
    for user in ["Prescott", "Nehalem"] {
        let env = [
            ("OPENBLAS_CORETYPE", user),
            ("GBTD_PRETEND_OPENBLAS_CORE", "Prescott"),
        ];
        let o = gbtd(&args, &env);
        assert_eq!(loads(&o), vec![user.to_string()]);
        assert!(notes(&o).is_empty(), "{:?}", notes(&o));
        let info = gbtd(&["blas-info", "--coretype"], &env);
        assert_eq!(String::from_utf8_lossy(&info.stdout).trim(), "");
    }
}

#[test]
fn commands_without_blas_work_do_not_run_again() {
    let dir = tempfile::tempdir().unwrap();
    let x = small_input(dir.path());
    let o = gbtd(&["info", &x], &[("GBTD_PRETEND_OPENBLAS_CORE", "Prescott")]);
    assert_eq!(loads(&o).len(), 1, "{:?}", loads(&o));
    assert!(notes(&o).is_empty());
}

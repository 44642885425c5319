//! Choosing OpenBLAS kernels that match the CPU's instruction set.
//!
//! OpenBLAS built with `DYNAMIC_ARCH` (Debian's is) picks a kernel family when it is loaded, from
//! the CPU's vendor, family and model number; `OPENBLAS_CORETYPE` overrides the choice. Release
//! 0.3.21 (Debian 12) falls through to its SSE3 `Prescott` kernels on Intel family-6 CPUs whose
//! model number it does not list (for example model 207, an AVX-512 Xeon), which made gbtd's
//! Tucker-2 of a 512×512×3×3 kernel 2.2 times slower there than with `SkylakeX`.
//!
//! [`decide`] compares the family OpenBLAS reports with the best one the CPU's features allow
//! ([`CpuFeatures::best_level`]) and asks for a switch only when OpenBLAS's is of a lower
//! instruction-set level and the user did not set `OPENBLAS_CORETYPE`. As the variable is read
//! only when OpenBLAS is loaded, a program applies a switch by running itself again with it set
//! ([`ensure_kernels_match_cpu`]); it also sets [`GBTD_MARKER`] so that the new process (and the
//! tests) can tell gbtd's choice from the user's.
use std::ffi::OsString;

/// Set (to the same value) alongside `OPENBLAS_CORETYPE` when gbtd chose it, so that a process
/// can tell its own choice from the user's (e.g. to keep it away from Python's numpy).
pub const GBTD_MARKER: &str = "GBTD_OPENBLAS_CORETYPE";

/// For tests only: a core name to use instead of the one OpenBLAS reports, to exercise the
/// fallback path on a CPU that OpenBLAS recognises.
pub const PRETEND_VAR: &str = "GBTD_PRETEND_OPENBLAS_CORE";

/// OpenBLAS's x86-64 kernel families by the instruction set they need, lowest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum KernelLevel {
    /// SSE2/SSE3 kernels (`Prescott`, `Core2`, `Nehalem`, …): what OpenBLAS falls back to.
    Sse,
    /// AVX without AVX2 (`Sandybridge`, AMD `Bulldozer` to `Steamroller`).
    Avx,
    /// AVX2 with FMA3 (`Haswell`, `Zen`, `Excavator`).
    Avx2,
    /// AVX-512 F/CD/BW/DQ/VL (`SkylakeX`, `Cooperlake`, `SapphireRapids`).
    Avx512,
}

impl KernelLevel {
    /// The `OPENBLAS_CORETYPE` value gbtd asks for at this level: OpenBLAS's generic Intel kernel
    /// family for the instruction set.
    pub fn coretype(self) -> &'static str {
        match self {
            KernelLevel::Sse => "Prescott",
            KernelLevel::Avx => "Sandybridge",
            KernelLevel::Avx2 => "Haswell",
            KernelLevel::Avx512 => "SkylakeX",
        }
    }

    /// The level of an x86-64 kernel family as OpenBLAS names it (`openblas_get_corename`, any
    /// case); `None` for names it does not cover (other architectures, `"Unknown"`).
    pub fn of_core(name: &str) -> Option<Self> {
        let level = match name.trim().to_ascii_lowercase().as_str() {
            "katmai" | "coppermine" | "northwood" | "prescott" | "banias" | "atom" | "core2" | "penryn"
            | "dunnington" | "nehalem" | "athlon" | "opteron" | "opteron_sse3" | "barcelona" | "nano"
            | "bobcat" => KernelLevel::Sse,
            "sandybridge" | "bulldozer" | "piledriver" | "steamroller" => KernelLevel::Avx,
            "haswell" | "zen" | "excavator" => KernelLevel::Avx2,
            "skylakex" | "cooperlake" | "sapphirerapids" => KernelLevel::Avx512,
            _ => return None,
        };
        Some(level)
    }
}

/// The x86-64 features that decide which OpenBLAS kernel family a CPU can run (each one usable:
/// supported by the CPU and enabled by the operating system).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuFeatures {
    /// AVX.
    pub avx: bool,
    /// AVX2.
    pub avx2: bool,
    /// FMA3.
    pub fma: bool,
    /// AVX-512 Foundation.
    pub avx512f: bool,
    /// AVX-512 Conflict Detection.
    pub avx512cd: bool,
    /// AVX-512 Byte and Word.
    pub avx512bw: bool,
    /// AVX-512 Doubleword and Quadword.
    pub avx512dq: bool,
    /// AVX-512 Vector Length extensions.
    pub avx512vl: bool,
}

impl CpuFeatures {
    /// The features of the CPU this process runs on; `None` off x86-64.
    pub fn detect() -> Option<Self> {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            Some(CpuFeatures {
                avx: has!("avx"),
                avx2: has!("avx2"),
                fma: has!("fma"),
                avx512f: has!("avx512f"),
                avx512cd: has!("avx512cd"),
                avx512bw: has!("avx512bw"),
                avx512dq: has!("avx512dq"),
                avx512vl: has!("avx512vl"),
            })
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            None
        }
    }

    /// The highest kernel level these features run. OpenBLAS's `SkylakeX` kernels are compiled
    /// for Skylake-SP (`-march=skylake-avx512`: AVX-512 F, CD, BW, DQ and VL, with AVX2 and FMA),
    /// `Haswell` for AVX2 with FMA3, `Sandybridge` for AVX.
    pub fn best_level(&self) -> KernelLevel {
        let avx2 = self.avx && self.avx2 && self.fma;
        if avx2 && self.avx512f && self.avx512cd && self.avx512bw && self.avx512dq && self.avx512vl {
            KernelLevel::Avx512
        } else if avx2 {
            KernelLevel::Avx2
        } else if self.avx {
            KernelLevel::Avx
        } else {
            KernelLevel::Sse
        }
    }

    /// The names of the features present, for reports.
    pub fn names(&self) -> Vec<&'static str> {
        [
            (self.avx, "avx"),
            (self.avx2, "avx2"),
            (self.fma, "fma"),
            (self.avx512f, "avx512f"),
            (self.avx512cd, "avx512cd"),
            (self.avx512bw, "avx512bw"),
            (self.avx512dq, "avx512dq"),
            (self.avx512vl, "avx512vl"),
        ]
        .into_iter()
        .filter_map(|(on, name)| on.then_some(name))
        .collect()
    }
}

/// The state of `OPENBLAS_CORETYPE` when the process started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CoretypeVar<'a> {
    /// Not set: OpenBLAS chose by itself.
    Unset,
    /// Set by the user (any value, even one OpenBLAS does not know): never overridden.
    User(&'a str),
    /// Set by gbtd when it ran itself again ([`GBTD_MARKER`] holds the same value).
    Gbtd(&'a str),
}

impl<'a> CoretypeVar<'a> {
    /// Classifies the values of `OPENBLAS_CORETYPE` and of [`GBTD_MARKER`].
    pub fn classify(coretype: Option<&'a str>, marker: Option<&str>) -> Self {
        match coretype {
            None => CoretypeVar::Unset,
            Some(v) if marker == Some(v) => CoretypeVar::Gbtd(v),
            Some(v) => CoretypeVar::User(v),
        }
    }
}

/// What to do about OpenBLAS's kernel family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Run OpenBLAS again with `OPENBLAS_CORETYPE = to.coretype()`: the family it chose
    /// (`reported`) is of a lower level than the CPU runs.
    Switch {
        /// The family OpenBLAS chose.
        reported: String,
        /// The level the CPU's features allow.
        to: KernelLevel,
    },
    /// Keep OpenBLAS's choice.
    Keep(Keep),
}

/// Why OpenBLAS's choice is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Keep {
    /// The user set `OPENBLAS_CORETYPE`.
    UserSet(String),
    /// gbtd already set `OPENBLAS_CORETYPE` (this process is the re-run).
    SetByGbtd(String),
    /// Not an x86-64 CPU: OpenBLAS's detection is left alone.
    NotX86,
    /// The reported family already uses the CPU's best instruction set (or a better-tuned one).
    Matches(String),
    /// A family name this logic does not know: better left alone.
    UnknownCore(String),
}

impl Decision {
    /// The `OPENBLAS_CORETYPE` value to run with, if it must change.
    pub fn switch_to(&self) -> Option<&'static str> {
        match self {
            Decision::Switch { to, .. } => Some(to.coretype()),
            Decision::Keep(_) => None,
        }
    }

    /// One line for people.
    pub fn describe(&self) -> String {
        match self {
            Decision::Switch { reported, to } => format!(
                "OpenBLAS chose its {reported} kernels, which do not use this CPU's {}; using \
                 OPENBLAS_CORETYPE={} (set OPENBLAS_CORETYPE to choose yourself)",
                level_name(*to),
                to.coretype()
            ),
            Decision::Keep(Keep::UserSet(v)) => format!("OPENBLAS_CORETYPE={v} set by the user: kept"),
            Decision::Keep(Keep::SetByGbtd(v)) => {
                format!("OPENBLAS_CORETYPE={v} chosen by gbtd from the CPU's features")
            }
            Decision::Keep(Keep::NotX86) => "not an x86-64 CPU: OpenBLAS's own choice kept".into(),
            Decision::Keep(Keep::Matches(c)) => format!("OpenBLAS's {c} kernels match the CPU"),
            Decision::Keep(Keep::UnknownCore(c)) => {
                format!("OpenBLAS kernel family {c:?} not classified: kept")
            }
        }
    }
}

fn level_name(level: KernelLevel) -> &'static str {
    match level {
        KernelLevel::Sse => "SSE3",
        KernelLevel::Avx => "AVX",
        KernelLevel::Avx2 => "AVX2",
        KernelLevel::Avx512 => "AVX-512",
    }
}

/// Decides whether to override OpenBLAS's kernel family.
///
/// `reported` is the family OpenBLAS runs (`openblas_get_corename`), `features` the CPU's
/// (`None` off x86-64), `var` the state of `OPENBLAS_CORETYPE`. A switch happens only when the
/// variable is unset, the reported family is a known x86-64 one, and its level is below
/// [`CpuFeatures::best_level`]; the switch goes to OpenBLAS's generic Intel family of that level.
/// A family of the same level (e.g. `Zen` on an AVX2 CPU, `Cooperlake` on an AVX-512 one) is
/// kept, as OpenBLAS tunes it for that CPU. An AVX-512 AMD CPU reported as `Zen` gets `SkylakeX`,
/// as later OpenBLAS releases choose for Zen 4.
pub fn decide(reported: &str, features: Option<&CpuFeatures>, var: CoretypeVar<'_>) -> Decision {
    match var {
        CoretypeVar::User(v) => return Decision::Keep(Keep::UserSet(v.to_string())),
        CoretypeVar::Gbtd(v) => return Decision::Keep(Keep::SetByGbtd(v.to_string())),
        CoretypeVar::Unset => {}
    }
    let Some(features) = features else {
        return Decision::Keep(Keep::NotX86);
    };
    let Some(level) = KernelLevel::of_core(reported) else {
        return Decision::Keep(Keep::UnknownCore(reported.to_string()));
    };
    let best = features.best_level();
    if level < best {
        Decision::Switch {
            reported: reported.to_string(),
            to: best,
        }
    } else {
        Decision::Keep(Keep::Matches(reported.to_string()))
    }
}

/// The decision for this process: OpenBLAS's reported family (or [`PRETEND_VAR`]'s value, for
/// tests), the CPU's features and the environment.
pub fn detect() -> Decision {
    let pretend = std::env::var(PRETEND_VAR).ok().filter(|v| !v.is_empty());
    let reported = pretend.unwrap_or_else(super::ffi::core_name);
    let coretype = std::env::var("OPENBLAS_CORETYPE").ok();
    let marker = std::env::var(GBTD_MARKER).ok();
    let var = CoretypeVar::classify(coretype.as_deref(), marker.as_deref());
    decide(&reported, CpuFeatures::detect().as_ref(), var)
}

/// Makes this process run OpenBLAS kernels that match the CPU: when [`detect`] asks for a switch,
/// runs the current executable again with the same arguments and `OPENBLAS_CORETYPE` (and
/// [`GBTD_MARKER`]) set, and does not return. With `announce`, says so first in one line on
/// standard error (prefixed `program: `). Returns the decision when no switch is needed, or when
/// running again failed (then with a note on standard error if `announce`, and the process goes on
/// with OpenBLAS's own choice).
///
/// Call it first thing in `main`, before any output and before starting threads.
pub fn ensure_kernels_match_cpu(program: &str, announce: bool) -> Decision {
    let decision = detect();
    let Some(coretype) = decision.switch_to() else {
        return decision;
    };
    if announce {
        eprintln!("{program}: {}", decision.describe());
    }
    let err = rerun_with(coretype);
    if announce {
        eprintln!("{program}: could not run again with OPENBLAS_CORETYPE={coretype} ({err}); going on as is");
    }
    decision
}

/// Makes this process run OpenBLAS kernels that match the CPU without running itself again:
/// when [`detect`] asks for a switch, OpenBLAS's kernel family is chosen again in place
/// ([`super::ffi::reselect_core`]). Returns the decision and whether the switch took effect
/// (false when none was needed or the linked OpenBLAS cannot switch in place).
///
/// # Safety
/// As for [`super::ffi::reselect_core`]: call it before any BLAS work, while no other thread
/// uses this OpenBLAS or the environment (a Python extension module's initialisation).
pub unsafe fn match_kernels_in_place() -> (Decision, bool) {
    let decision = detect();
    let switched = match decision.switch_to() {
        // SAFETY: forwarded to the caller.
        Some(coretype) => unsafe { super::ffi::reselect_core(coretype) },
        None => false,
    };
    (decision, switched)
}

/// Replaces this process by the same executable with the same arguments and `OPENBLAS_CORETYPE`
/// set; returns only on failure.
#[cfg(unix)]
fn rerun_with(coretype: &str) -> std::io::Error {
    use std::os::unix::process::CommandExt;
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => return e,
    };
    let mut args = std::env::args_os();
    let arg0: OsString = args.next().unwrap_or_else(|| exe.clone().into_os_string());
    std::process::Command::new(&exe)
        .arg0(arg0)
        .args(args)
        .env("OPENBLAS_CORETYPE", coretype)
        .env(GBTD_MARKER, coretype)
        .exec()
}

#[cfg(not(unix))]
fn rerun_with(_coretype: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::Unsupported, "not supported on this platform")
}

/// Removes `OPENBLAS_CORETYPE` (and [`GBTD_MARKER`]) from a child's environment when gbtd, not
/// the user, set it, so that other programs (numpy's own OpenBLAS in the Python cross-checks) make
/// their own choice.
pub fn remove_own_coretype(cmd: &mut std::process::Command) {
    let coretype = std::env::var("OPENBLAS_CORETYPE").ok();
    let marker = std::env::var(GBTD_MARKER).ok();
    if let CoretypeVar::Gbtd(_) = CoretypeVar::classify(coretype.as_deref(), marker.as_deref()) {
        cmd.env_remove("OPENBLAS_CORETYPE");
    }
    cmd.env_remove(GBTD_MARKER);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feats(list: &[&str]) -> CpuFeatures {
        let on = |n: &str| list.contains(&n);
        CpuFeatures {
            avx: on("avx"),
            avx2: on("avx2"),
            fma: on("fma"),
            avx512f: on("avx512f"),
            avx512cd: on("avx512cd"),
            avx512bw: on("avx512bw"),
            avx512dq: on("avx512dq"),
            avx512vl: on("avx512vl"),
        }
    }

    const AVX2: &[&str] = &["avx", "avx2", "fma"];
    const AVX512: &[&str] = &[
        "avx", "avx2", "fma", "avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl",
    ];

    fn switch(reported: &str, to: KernelLevel) -> Decision {
        Decision::Switch {
            reported: reported.into(),
            to,
        }
    }

    #[test]
    fn prescott_on_an_avx512_cpu_switches_to_skylakex() {
        let d = decide("Prescott", Some(&feats(AVX512)), CoretypeVar::Unset);
        assert_eq!(d, switch("Prescott", KernelLevel::Avx512));
        assert_eq!(d.switch_to(), Some("SkylakeX"));
    }

    #[test]
    fn older_families_on_an_avx2_cpu_switch_to_haswell() {
        for core in ["Prescott", "Nehalem", "Core2", "Sandybridge", "prescott"] {
            let d = decide(core, Some(&feats(AVX2)), CoretypeVar::Unset);
            assert_eq!(d.switch_to(), Some("Haswell"), "{core}");
        }
    }

    #[test]
    fn avx_only_cpu_gets_sandybridge_and_sse_only_keeps() {
        let d = decide("Prescott", Some(&feats(&["avx"])), CoretypeVar::Unset);
        assert_eq!(d.switch_to(), Some("Sandybridge"));
        let d = decide("Prescott", Some(&feats(&[])), CoretypeVar::Unset);
        assert_eq!(d, Decision::Keep(Keep::Matches("Prescott".into())));
    }

    #[test]
    fn a_matching_report_is_kept() {
        assert_eq!(
            decide("Haswell", Some(&feats(AVX2)), CoretypeVar::Unset),
            Decision::Keep(Keep::Matches("Haswell".into()))
        );
        assert_eq!(
            decide("SkylakeX", Some(&feats(AVX512)), CoretypeVar::Unset),
            Decision::Keep(Keep::Matches("SkylakeX".into()))
        );
        // Tuned families of the same level stay.
        assert!(matches!(
            decide("Cooperlake", Some(&feats(AVX512)), CoretypeVar::Unset),
            Decision::Keep(Keep::Matches(_))
        ));
        assert!(matches!(
            decide("Zen", Some(&feats(AVX2)), CoretypeVar::Unset),
            Decision::Keep(Keep::Matches(_))
        ));
        // Never a downgrade, even if the features look poorer than the report.
        assert!(matches!(
            decide("SkylakeX", Some(&feats(AVX2)), CoretypeVar::Unset),
            Decision::Keep(Keep::Matches(_))
        ));
    }

    #[test]
    fn haswell_reported_on_an_avx512_cpu_is_upgraded() {
        // Detection by model number that stopped at AVX2 on an AVX-512 CPU (as for Zen 4 in
        // OpenBLAS 0.3.21, reported as Zen).
        assert_eq!(
            decide("Zen", Some(&feats(AVX512)), CoretypeVar::Unset).switch_to(),
            Some("SkylakeX")
        );
        assert_eq!(
            decide("Haswell", Some(&feats(AVX512)), CoretypeVar::Unset).switch_to(),
            Some("SkylakeX")
        );
    }

    #[test]
    fn avx512_needs_all_of_skylakexs_extensions() {
        for missing in ["avx512cd", "avx512bw", "avx512dq", "avx512vl", "fma", "avx2"] {
            let list: Vec<&str> = AVX512.iter().copied().filter(|f| *f != missing).collect();
            let best = feats(&list).best_level();
            assert!(best < KernelLevel::Avx512, "without {missing}: {best:?}");
        }
    }

    #[test]
    fn a_user_setting_is_never_overridden() {
        for v in ["Prescott", "", "nonsense", "Haswell"] {
            assert_eq!(
                decide("Prescott", Some(&feats(AVX512)), CoretypeVar::User(v)),
                Decision::Keep(Keep::UserSet(v.into()))
            );
        }
    }

    #[test]
    fn gbtds_own_setting_is_kept_without_a_loop() {
        let var = CoretypeVar::classify(Some("SkylakeX"), Some("SkylakeX"));
        assert_eq!(var, CoretypeVar::Gbtd("SkylakeX"));
        assert_eq!(
            decide("Prescott", Some(&feats(AVX512)), var),
            Decision::Keep(Keep::SetByGbtd("SkylakeX".into()))
        );
        // A marker that does not match means the user changed the variable.
        assert_eq!(
            CoretypeVar::classify(Some("Haswell"), Some("SkylakeX")),
            CoretypeVar::User("Haswell")
        );
        assert_eq!(CoretypeVar::classify(None, Some("SkylakeX")), CoretypeVar::Unset);
    }

    #[test]
    fn non_x86_and_unknown_names_are_kept() {
        assert_eq!(
            decide("NEOVERSEN1", None, CoretypeVar::Unset),
            Decision::Keep(Keep::NotX86)
        );
        assert_eq!(
            decide("Unknown", Some(&feats(AVX512)), CoretypeVar::Unset),
            Decision::Keep(Keep::UnknownCore("Unknown".into()))
        );
    }

    #[test]
    fn every_generic_choice_is_a_family_of_its_own_level() {
        for level in [
            KernelLevel::Sse,
            KernelLevel::Avx,
            KernelLevel::Avx2,
            KernelLevel::Avx512,
        ] {
            assert_eq!(KernelLevel::of_core(level.coretype()), Some(level));
        }
    }
}

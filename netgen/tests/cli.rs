//! End-to-end tests of the `netgen` binary: JSON output, the top-level GBTD form, `--dry-run`,
//! spec files, presets, help without `LD_LIBRARY_PATH`, and one-line errors for invalid input.
use std::process::{Command, Output};

use netgen::arch::presets::{self, PresetOptions};
use netgen::arch::spec::NetSpec;
use netgen::count::count;

fn netgen(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_netgen"))
        .args(args)
        .output()
        .expect("run netgen")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn json(args: &[&str]) -> serde_json::Value {
    let o = netgen(args);
    assert!(o.status.success(), "netgen {args:?} failed: {}", stderr(&o));
    serde_json::from_str(&stdout(&o)).expect("valid JSON")
}

/// Runs an invalid command: non-zero exit, a single "netgen: error: …" line on stderr, no panic,
/// nothing on stdout. Returns the message.
fn rejected(args: &[&str]) -> String {
    let o = netgen(args);
    let err = stderr(&o);
    assert!(!o.status.success(), "netgen {args:?} should fail");
    assert!(stdout(&o).is_empty(), "netgen {args:?} printed to stdout");
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "netgen {args:?}: not one line: {err}"
    );
    assert!(err.starts_with("netgen: error: "), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    err
}

#[test]
fn emit_json_spec_and_integer_counts_agree_with_count_rs() {
    for name in ["resnet50", "crunet56", "crunet_small"] {
        let v = json(&["emit", "--preset", name, "--json"]);
        let params = v["params"].as_u64().expect("params is an integer");
        let flops = v["flops"].as_u64().expect("flops is an integer");
        assert_eq!(v["flops_unit"], "multiply-adds");
        let spec: NetSpec = serde_json::from_value(v["spec"].clone()).expect("spec deserializes");
        let expected = presets::preset(name, PresetOptions::default()).unwrap();
        assert_eq!(spec, expected);
        let c = count(&expected).unwrap();
        assert_eq!((params, flops), (c.params, c.flops));
        // Per-stage numbers add up to the totals with the stem and head.
        let stages = v["stages"].as_array().unwrap();
        let sp: u64 = stages.iter().map(|s| s["params"].as_u64().unwrap()).sum();
        let sf: u64 = stages.iter().map(|s| s["flops"].as_u64().unwrap()).sum();
        assert_eq!(
            sp + v["stem"]["params"].as_u64().unwrap() + v["head"]["params"].as_u64().unwrap(),
            params
        );
        assert_eq!(
            sf + v["stem"]["flops"].as_u64().unwrap() + v["head"]["flops"].as_u64().unwrap(),
            flops
        );
    }
}

#[test]
fn top_level_gbtd_flags_emit_and_dry_run_is_emit_only() {
    // Without --dry-run the top-level form would train; `emit` prints the same table.
    let plain = netgen(&["emit", "--R", "32", "--rank", "4", "--share", "6"]);
    assert!(plain.status.success(), "{}", stderr(&plain));
    let text = stdout(&plain);
    assert!(text.contains("multiply-adds"), "{text}");
    assert!(text.contains("3×3, 512, R=32  (shared)"), "{text}");
    assert!(text.contains("×6"), "{text}");
    let dry = netgen(&["--R", "32", "--rank", "4", "--share", "6", "--dry-run"]);
    assert!(dry.status.success());
    assert_eq!(stdout(&dry), text);
    // The subcommand form gives the same architecture.
    let sub = netgen(&["emit", "--R", "32", "--rank", "4", "--share", "6", "--dry-run"]);
    assert_eq!(stdout(&sub), text);
}

#[test]
fn top_level_json_for_resnet50_and_resnext50_has_torchvision_counts() {
    // R = 1, rank 64 is ResNet-50; R = 32, rank 4 is ResNeXt-50 32×4d (torchvision's counts).
    assert_eq!(
        json(&["--R", "1", "--rank", "64", "--json", "--dry-run"])["params"],
        25_557_032
    );
    assert_eq!(
        json(&["--R", "32", "--rank", "4", "--json", "--dry-run"])["params"],
        25_028_904
    );
}

#[test]
fn released_crunet56_from_flags() {
    let v = json(&[
        "--R",
        "32",
        "--rank",
        "4",
        "--share",
        "6",
        "--depth",
        "56",
        "--cru-width",
        "640",
        "--groups-eq-channels",
        "--json",
        "--dry-run",
    ]);
    assert_eq!(
        v["params"], 25_609_384,
        "imgclsmob's count of the released CRU-Net-56"
    );
}

#[test]
fn spec_files_toml_and_json_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    // Hand-written ResNet-50 (torchvision: 25,557,032 parameters).
    let toml_text = r#"
name = "hand-written resnet50"
in_channels = 3
input_size = 224
classes = 1000
preact = false
stem = { kind = "imagenet", width = 64 }

[[stages]]
depth = 3
width = 256
stride = 1
unit = { kind = "aggregated", mid = 64, groups = 1 }

[[stages]]
depth = 4
width = 512
stride = 2
unit = { kind = "aggregated", mid = 128, groups = 1 }

[[stages]]
depth = 6
width = 1024
stride = 2
unit = { kind = "aggregated", mid = 256, groups = 1 }

[[stages]]
depth = 3
width = 2048
stride = 2
[stages.unit]
kind = "aggregated"
mid = 512
groups = 1
"#;
    let path = dir.path().join("r50.toml");
    std::fs::write(&path, toml_text).unwrap();
    let v = json(&["emit", "--spec", path.to_str().unwrap(), "--json"]);
    assert_eq!(v["params"], 25_557_032);

    // The --json document is accepted back as a spec.
    let doc = dir.path().join("crunet116.json");
    let o = netgen(&["emit", "--preset", "crunet116", "--json"]);
    std::fs::write(&doc, &o.stdout).unwrap();
    let back = json(&["emit", "--spec", doc.to_str().unwrap(), "--json"]);
    assert_eq!(back["params"], 43_656_136);

    // --toml output is accepted back too, with the overrides applied on top.
    let o = netgen(&["emit", "--preset", "crunet_small", "--toml"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let t = dir.path().join("small.toml");
    std::fs::write(&t, &o.stdout).unwrap();
    let back = json(&["emit", "--spec", t.to_str().unwrap(), "--classes", "7", "--json"]);
    let mut expected = presets::crunet_small();
    expected.classes = 7;
    let got: NetSpec = serde_json::from_value(back["spec"].clone()).unwrap();
    assert_eq!(got, expected);

    // A typo in a spec file is reported, not ignored.
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, toml_text.replace("groups = 1 }", "grups = 1 }")).unwrap();
    let err = rejected(&["emit", "--spec", bad.to_str().unwrap()]);
    assert!(err.contains("grups"), "{err}");
    rejected(&[
        "emit",
        "--spec",
        dir.path().join("missing.toml").to_str().unwrap(),
    ]);
}

#[test]
fn preset_overrides_for_fashion_mnist() {
    let v = json(&[
        "emit",
        "--preset",
        "resnet_small",
        "--input",
        "28",
        "--in-channels",
        "1",
        "--json",
    ]);
    assert_eq!(v["spec"]["input_size"], 28);
    assert_eq!(v["spec"]["in_channels"], 1);
    let sizes: Vec<u64> = v["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["out_size"].as_u64().unwrap())
        .collect();
    assert_eq!(sizes, [28, 14, 7]);
    // The stem conv is 3×3 (in → 16): 9·16 fewer weights per dropped input channel (3 → 1).
    let rgb = json(&["emit", "--preset", "resnet_small", "--input", "28", "--json"]);
    assert_eq!(
        rgb["params"].as_u64().unwrap() - v["params"].as_u64().unwrap(),
        2 * 9 * 16
    );
    // --input 28 without --in-channels in the GBTD form means grayscale (Fashion-MNIST), 10 classes.
    let g = json(&["--R", "8", "--rank", "4", "--input", "28", "--json", "--dry-run"]);
    assert_eq!(g["spec"]["in_channels"], 1);
    assert_eq!(g["spec"]["classes"], 10);
    assert_eq!(g["spec"]["stages"].as_array().unwrap().len(), 3);
}

#[test]
fn presets_lists_every_preset() {
    let o = netgen(&["presets"]);
    assert!(o.status.success());
    let text = stdout(&o);
    for name in [
        "resnet50",
        "resnext50_32x4d",
        "resnet101",
        "resnext50_nx1d",
        "crunet56",
        "crunet116",
        "resnet_small",
        "resnext29_small",
        "crunet_small",
    ] {
        assert!(
            text.lines().any(|l| l.split_whitespace().next() == Some(name)),
            "{name} missing:\n{text}"
        );
    }
}

#[test]
fn invalid_configurations_say_what_is_wrong_and_what_is_valid() {
    // (The full catalogue of messages is unit-tested in arch::config; here: the binary's contract.)
    // R not dividing the bottleneck width.
    let e = rejected(&[
        "--R",
        "32",
        "--rank",
        "4",
        "--mids",
        "100,256,512,1024",
        "--dry-run",
    ]);
    assert!(
        e.contains("does not divide") && e.contains("valid") && e.contains("128"),
        "{e}"
    );
    // share larger than the depth of the chosen stage.
    let e = rejected(&[
        "--R",
        "32",
        "--rank",
        "4",
        "--share",
        "6",
        "--cru-stages",
        "conv3",
        "--dry-run",
    ]);
    assert!(
        e.contains("share 6 is larger than the depth 4") && e.contains("[conv4 (stage 2)]"),
        "{e}"
    );
    // zero rank.
    let e = rejected(&["--R", "32", "--rank", "0", "--dry-run"]);
    assert!(e.contains("rank = 0") && e.contains("≥ 1"), "{e}");
    // Conflicting sources, unknown preset.
    let e = rejected(&["emit", "--preset", "resnet50", "--R", "4"]);
    assert!(e.contains("cannot be combined"), "{e}");
    let e = rejected(&["emit", "--preset", "resnet51"]);
    assert!(e.contains("resnet50") && e.contains("crunet116"), "{e}");
    // Usage errors (clap) are one line too.
    rejected(&["emit", "--R", "x", "--rank", "4"]);
}

#[test]
fn help_works_without_ld_library_path() {
    for args in [&["--help"][..], &["emit", "--help"]] {
        let o = Command::new(env!("CARGO_BIN_EXE_netgen"))
            .env_remove("LD_LIBRARY_PATH")
            .args(args)
            .output()
            .expect("run netgen");
        assert!(o.status.success(), "netgen {args:?}: {}", stderr(&o));
        let text = stdout(&o);
        assert!(text.contains("netgen"), "{text}");
        assert!(text.contains("Examples:") && text.contains("--share"), "{text}");
    }
    // Emitting also works without LD_LIBRARY_PATH (libtorch found through the rpath).
    let o = Command::new(env!("CARGO_BIN_EXE_netgen"))
        .env_remove("LD_LIBRARY_PATH")
        .args(["emit", "--preset", "crunet56"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("25,609,384"));
}

#[test]
fn cru_stages_are_named_in_both_numberings() {
    let e = rejected(&[
        "emit",
        "--R",
        "32",
        "--rank",
        "4",
        "--share",
        "6",
        "--cru-stages",
        "conv9",
    ]);
    assert!(
        e.contains("CRU stage conv9 (stage 7) does not exist") && e.contains("conv2..conv5 (stages 0..3)"),
        "{e}"
    );
    let e = rejected(&[
        "emit",
        "--R",
        "32",
        "--rank",
        "4",
        "--share",
        "6",
        "--cru-stages",
        "7",
    ]);
    assert!(e.contains("conv9 (stage 7)"), "{e}");
    let e = rejected(&[
        "emit",
        "--R",
        "32",
        "--rank",
        "4",
        "--share",
        "6",
        "--cru-stages",
        "convX",
    ]);
    assert!(e.contains("'convX' is not a stage"), "{e}");
    // Both forms, comma-separated, pick the same stages.
    let a = json(&[
        "emit",
        "--R",
        "32",
        "--rank",
        "4",
        "--share",
        "3",
        "--cru-stages",
        "conv3,conv4",
        "--allow-uneven-share",
        "--json",
    ]);
    let b = json(&[
        "emit",
        "--R",
        "32",
        "--rank",
        "4",
        "--share",
        "3",
        "--cru-stages",
        "1,2",
        "--allow-uneven-share",
        "--json",
    ]);
    assert_eq!(a, b);
    let kinds: Vec<&str> = a["spec"]["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["unit"]["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["aggregated", "cru", "cru", "aggregated"]);
}

#[test]
fn inputs_too_small_for_the_strides_are_refused_with_the_minimum() {
    let e = rejected(&["emit", "--R", "8", "--rank", "4", "--input", "1"]);
    assert!(
        e.contains("input size 1 is too small") && e.contains("smallest input is 4"),
        "{e}"
    );
    let e = rejected(&[
        "emit",
        "--R",
        "8",
        "--rank",
        "4",
        "--input",
        "4",
        "--first-stride",
        "2",
    ]);
    assert!(e.contains("smallest input is 8"), "{e}");
    let e = rejected(&["emit", "--preset", "resnet50", "--input", "16"]);
    assert!(e.contains("smallest input is 32"), "{e}");
    // The minimum itself is accepted: 1×1 after the last stage.
    let v = json(&["emit", "--R", "8", "--rank", "4", "--input", "4", "--json"]);
    assert_eq!(v["stages"][2]["out_size"], 1);
}

#[test]
fn uneven_share_groups_need_to_be_asked_for() {
    let e = rejected(&[
        "emit", "--R", "32", "--rank", "4", "--share", "7", "--depth", "116",
    ]);
    assert!(
        e.contains("uneven share groups 7 + 7 + 4") && e.contains("--allow-uneven-share"),
        "{e}"
    );
    let v = json(&[
        "emit",
        "--R",
        "32",
        "--rank",
        "4",
        "--share",
        "7",
        "--depth",
        "116",
        "--allow-uneven-share",
        "--json",
    ]);
    assert_eq!(v["spec"]["stages"][2]["unit"]["share"], 7);
    assert_eq!(v["spec"]["stages"][2]["depth"], 18);
    // The table shows the uneven grouping.
    let o = netgen(&[
        "emit",
        "--R",
        "32",
        "--rank",
        "4",
        "--share",
        "7",
        "--depth",
        "116",
        "--allow-uneven-share",
    ]);
    assert!(stdout(&o).contains("×18 (share groups 7+7+4)"), "{}", stdout(&o));
}

#[test]
fn the_main_training_configuration_on_28x28_works() {
    // netgen --R 32 --rank 4 --share 6 --input 28: depth 9·6 + 2 = 56 chosen from the share; its
    // counts equal the PyTorch rebuild's (tests/table1.rs): 7,709,130 parameters and
    // 1,658,276,864 multiply-adds per 28×28×1 image.
    let v = json(&[
        "emit", "--R", "32", "--rank", "4", "--share", "6", "--input", "28", "--json",
    ]);
    let depths: Vec<u64> = v["spec"]["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["depth"].as_u64().unwrap())
        .collect();
    assert_eq!(depths, [6, 6, 6]);
    assert_eq!(
        (v["params"].as_u64(), v["flops"].as_u64()),
        (Some(7_709_130), Some(1_658_276_864))
    );
    assert_eq!(v["spec"]["in_channels"], 1);
    // With a depth that cannot hold the share, the error names one that can.
    let e = rejected(&[
        "emit", "--R", "32", "--rank", "4", "--share", "6", "--input", "28", "--depth", "29",
    ]);
    assert!(e.contains("--depth 56 ([6, 6, 6])"), "{e}");
}

#[test]
fn first_stride_cuts_the_cost_not_the_parameters() {
    let base = [
        "emit",
        "--preset",
        "crunet_small",
        "--input",
        "28",
        "--in-channels",
        "1",
        "--json",
    ];
    let s1 = json(&base);
    let s2 = json(&[&base[..], &["--first-stride", "2"]].concat());
    assert_eq!(s1["params"], s2["params"]);
    // 59,207,104 → 16,519,792 multiply-adds (the PyTorch rebuilds in tests/table1.rs).
    assert_eq!(
        (s1["flops"].as_u64(), s2["flops"].as_u64()),
        (Some(59_207_104), Some(16_519_792))
    );
    assert_eq!(s2["spec"]["stages"][0]["stride"], 2);
    // The GBTD form too, and a spec written with it loads back with the stride.
    let g = json(&[
        "emit",
        "--R",
        "8",
        "--rank",
        "4",
        "--input",
        "28",
        "--first-stride",
        "2",
        "--json",
    ]);
    assert_eq!(g["spec"]["stages"][0]["stride"], 2);
    assert_eq!(g["stages"][0]["out_size"], 14);
    rejected(&["emit", "--R", "8", "--rank", "4", "--first-stride", "0"]);
}

#[test]
fn share_1_is_the_network_without_sharing() {
    for (r, rank) in [("32", "4"), ("1", "64")] {
        for input in ["224", "28"] {
            let plain = json(&["emit", "--R", r, "--rank", rank, "--input", input, "--json"]);
            let one = json(&[
                "emit", "--R", r, "--rank", rank, "--input", input, "--share", "1", "--json",
            ]);
            assert_eq!(one["spec"], plain["spec"], "R {r}, input {input}");
            assert_eq!(one["params"], plain["params"], "R {r}, input {input}");
            assert!(
                one["spec"]["stages"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .all(|s| s["unit"]["kind"] == "aggregated")
            );
        }
    }
    // ResNeXt-50 32×4d's torchvision count, not a 31.5M CRU with one-unit groups.
    assert_eq!(
        json(&["emit", "--R", "32", "--rank", "4", "--share", "1", "--json"])["params"],
        25_028_904
    );
    let e = rejected(&[
        "emit",
        "--R",
        "32",
        "--rank",
        "4",
        "--share",
        "1",
        "--cru-stages",
        "conv4",
    ]);
    assert!(e.contains("share 1 means no sharing"), "{e}");
}

#[test]
fn comma_separated_lists() {
    let v = json(&[
        "emit",
        "--R",
        "1",
        "--rank",
        "64",
        "--depth",
        "3,4,6,3",
        "--widths",
        "256,512,1024,2048",
        "--json",
    ]);
    assert_eq!(v["params"], 25_557_032);
    let e = rejected(&["emit", "--R", "1", "--rank", "64", "--widths", "256,x"]);
    assert!(e.contains("'x'") && e.contains("--widths"), "{e}");
}

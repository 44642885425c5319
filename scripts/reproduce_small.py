#!/usr/bin/env python3
"""Aggregates the runs of scripts/reproduce_small.sh into a table and a plot.

Usage: python scripts/reproduce_small.py DIR [--quick]

Reads DIR/runs/NAME-seedS.json (the `netgen train --json` summary of each run: test_acc, params, flops,
seconds, test_samples) and writes
  DIR/runs.csv                 one row per run
  DIR/results.csv              one row per network: runs, mean and sample standard deviation of the test
                               top-1, parameters, multiply-adds, mean training time
  DIR/results.md               the same as a Markdown table, with the ordering the paper claims compared
                               with the measured one
  DIR/accuracy_vs_params.png   test top-1 against parameters (each seed a dot, mean ± std as error bars)
"""
import csv
import json
import re
import statistics
import sys
from pathlib import Path

ORDER = ["resnet", "resnext", "cru"]
LABEL = {"resnet": "ResNet (R = 1)", "resnext": "ResNeXt (8×4d)", "cru": "CRU-Net (8×4d, CRU at conv3, L = 3)"}
RUN = re.compile(r"^(?P<net>[a-z]+)-seed(?P<seed>\d+)\.json$")


def fail(msg):
    print(f"reproduce_small.py: {msg}", file=sys.stderr)
    sys.exit(1)


def load_runs(runs_dir):
    rows = []
    for path in sorted(runs_dir.glob("*.json")):
        m = RUN.match(path.name)
        if not m:
            continue
        try:
            r = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            fail(f"{path} is not valid JSON ({e}); delete it and rerun scripts/reproduce_small.sh")
        missing = [k for k in ("test_acc", "params", "flops", "seconds") if k not in r]
        if missing:
            fail(f"{path} lacks {', '.join(missing)}; delete it and rerun scripts/reproduce_small.sh")
        rows.append({
            "network": m["net"], "seed": int(m["seed"]), "test_top1": float(r["test_acc"]),
            "test_samples": r.get("test_samples"), "params": int(r["params"]), "multiply_adds": int(r["flops"]),
            "train_seconds": float(r["seconds"]), "steps": r.get("steps"), "epochs": r.get("epochs"),
            "outcome": r.get("outcome"),
        })
    return rows


def summarize(rows):
    out = []
    nets = [n for n in ORDER if any(r["network"] == n for r in rows)]
    nets += sorted({r["network"] for r in rows} - set(nets))
    for n in nets:
        rs = [r for r in rows if r["network"] == n]
        accs = [r["test_top1"] for r in rs]
        out.append({
            "network": n, "runs": len(rs), "seeds": " ".join(str(r["seed"]) for r in rs),
            "top1_mean": statistics.fmean(accs), "top1_std": statistics.stdev(accs) if len(accs) > 1 else float("nan"),
            "params": rs[0]["params"], "multiply_adds": rs[0]["multiply_adds"],
            "train_seconds_mean": statistics.fmean(r["train_seconds"] for r in rs),
        })
    return out


def ordering_text(summary):
    """The paper's claim (CRU >= ResNeXt >= ResNet at equal parameters) against the measured means."""
    by = {s["network"]: s for s in summary}
    if not all(n in by for n in ORDER):
        return "Not all three networks have runs yet; no ordering to compare."
    lines = ["The paper claims CRU-Net ≥ ResNeXt ≥ ResNet in accuracy at equal parameters (ImageNet).", ""]
    for a, b in (("cru", "resnext"), ("resnext", "resnet"), ("cru", "resnet")):
        d = by[a]["top1_mean"] - by[b]["top1_mean"]
        spread = max(by[a]["top1_std"], by[b]["top1_std"])
        verdict = "holds" if d >= 0 else "does not hold"
        if spread != spread:  # NaN: a network has one seed, so there is no spread to compare with
            lines.append(f"- {LABEL[a]} − {LABEL[b]}: {d:+.2f} points (one seed: no spread); the claimed order "
                         f"{verdict} in this run.")
            continue
        lines.append(f"- {LABEL[a]} − {LABEL[b]}: {d:+.2f} points (largest seed std of the two: {spread:.2f}); "
                     f"the claimed order {verdict} in the means"
                     + (" but the gap is within one standard deviation" if abs(d) <= spread else "") + ".")
    ranked = sorted(summary, key=lambda s: -s["top1_mean"])
    order = LABEL[ranked[0]["network"]]
    for prev, cur in zip(ranked, ranked[1:]):
        order += (" = " if cur["top1_mean"] == prev["top1_mean"] else " > ") + LABEL[cur["network"]]
    lines += ["", f"Measured order of the means: {order}."]
    return "\n".join(lines)


def write_csv(path, rows):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def main(argv):
    args = [a for a in argv if not a.startswith("--")]
    quick = "--quick" in argv
    unknown = [a for a in argv if a.startswith("--") and a != "--quick"]
    if len(args) != 1 or unknown:
        fail("usage: reproduce_small.py DIR [--quick]")
    out = Path(args[0])
    if not (out / "runs").is_dir():
        fail(f"{out}/runs does not exist; run scripts/reproduce_small.sh --out {out} first")
    rows = load_runs(out / "runs")
    if not rows:
        fail(f"no NAME-seedS.json runs in {out}/runs; run scripts/reproduce_small.sh --out {out} first")
    summary = summarize(rows)
    write_csv(out / "runs.csv", rows)
    write_csv(out / "results.csv", summary)

    recipe = (out / "sweep.txt").read_text().strip() if (out / "sweep.txt").exists() else "(sweep.txt missing)"
    samples = sorted({r["test_samples"] for r in rows if r["test_samples"] is not None})
    md = ["# Small-scale reproduction: ResNet vs ResNeXt vs CRU-Net on Fashion-MNIST", ""]
    if quick:
        md += ["**QUICK RUN: 5 training steps per network, to check the plumbing. These accuracies say nothing "
               "about the networks.**", ""]
    md += ["| network | runs | test top-1 (%) mean ± std | params | multiply-adds | training time (s, mean) |",
           "|---|---|---|---|---|---|"]
    for s in summary:
        spread = f" ± {s['top1_std']:.2f}" if s["runs"] > 1 else " (one seed)"
        md.append(f"| {LABEL.get(s['network'], s['network'])} | {s['runs']} | {s['top1_mean']:.2f}{spread} "
                  f"| {s['params']:,} | {s['multiply_adds']:,} | {s['train_seconds_mean']:.0f} |")
    md += ["", f"Test images per evaluation: {', '.join(str(x) for x in samples)}. Std is the sample standard "
           "deviation over seeds.", "", ordering_text(summary), "", "Sweep settings:", "", "```", recipe, "```", ""]
    (out / "results.md").write_text("\n".join(md))

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, s in enumerate(summary):
        rs = [r for r in rows if r["network"] == s["network"]]
        color = f"C{i}"
        ax.scatter([r["params"] for r in rs], [r["test_top1"] for r in rs], color=color, alpha=0.4, s=15)
        ax.errorbar([s["params"]], [s["top1_mean"]], yerr=[0 if s["runs"] < 2 else s["top1_std"]], fmt="o",
                    color=color, capsize=4, label=LABEL.get(s["network"], s["network"]))
    ax.set_xlabel("parameters")
    ax.set_ylabel("test top-1 (%)")
    ax.set_title("Fashion-MNIST" + (" (QUICK: plumbing only)" if quick else ""))
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "accuracy_vs_params.png", dpi=100)
    print((out / "results.md").read_text())
    print(f"wrote {out}/results.md, results.csv, runs.csv, accuracy_vs_params.png")


if __name__ == "__main__":
    main(sys.argv[1:])

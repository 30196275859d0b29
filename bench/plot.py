#!/usr/bin/env python3
"""Plots false failovers per day against worst-case detection time under
silent bursts, for the silence detector, the round rule, the original loop
and the oracle, from bench/results/false_failover_sweep.csv and
oracle_curve.csv, into bench/results/false_failover.png. The lower row is
each detector's count divided by the oracle's at the same detection time."""

import csv
import os
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "bench/results")
SWEEP = os.path.join(RESULTS, "false_failover_sweep.csv")
CURVE = os.path.join(RESULTS, "oracle_curve.csv")
PNG = os.path.join(RESULTS, "false_failover.png")

FAMILIES = [
    # family, label, style
    ("silence", "silence detector, 3 echoes/s per target (ours)", dict(color="tab:green", marker="o")),
    ("silence-1", "silence detector, 1 echo/s per target", dict(color="tab:olive", marker="s")),
    ("rounds", "round rule, 1 s × 3 echoes, fall 1..6 (before)", dict(color="tab:blue", marker="^")),
    ("rounds-fast", "round rule, 100 ms × 1 echo, fall 3..40", dict(color="tab:purple", marker="v")),
    ("script", "the original loop (script-like)", dict(color="tab:red", marker="X", markersize=9)),
]
FLOOR = 0.05  # zero cannot sit on a log axis

sweep = list(csv.DictReader(open(SWEEP)))
curve = list(csv.DictReader(open(CURVE)))
models = list(dict.fromkeys(r["model"] for r in sweep))

fig, axes = plt.subplots(2, len(models), figsize=(6 * len(models), 9), sharex=True,
                         gridspec_kw=dict(height_ratios=[3, 2]))
for col, model in enumerate(models):
    top, bottom = axes[0][col], axes[1][col]
    pts = [r for r in curve if r["model"] == model]
    xs = [int(r["detection_ms"]) / 1000 for r in pts]
    ys = [max(float(r["oracle_per_day"]), FLOOR) for r in pts]
    top.plot(xs, ys, color="black", linewidth=2, label="oracle (ideal detector)")
    by_family = defaultdict(list)
    for r in sweep:
        if r["model"] == model and r["worst_case_ms"] != "n/a":
            by_family[r["family"]].append(r)
    for family, label, style in FAMILIES:
        rows = sorted(by_family.get(family, []), key=lambda r: float(r["worst_case_ms"]))
        if not rows:
            continue
        x = [float(r["worst_case_ms"]) / 1000 for r in rows]
        y = [max(float(r["per_day"]), FLOOR) for r in rows]
        line = "-" if len(rows) > 1 else "none"
        top.plot(x, y, linestyle=line, alpha=0.85, label=label, **style)
        ratio = [(xi, int(r["false_failovers"]) / int(r["oracle_failovers"]))
                 for xi, r in zip(x, rows) if int(r["oracle_failovers"]) >= 30]
        if ratio:
            bottom.plot([p[0] for p in ratio], [p[1] for p in ratio], linestyle=line, alpha=0.85, **style)
    top.set_yscale("log")
    top.set_ylim(FLOOR * 0.8, 3000)
    top.set_title(f"{model}, about one every 125 s")
    top.grid(True, which="both", alpha=0.3)
    bottom.axhline(1.3, color="gray", linestyle="--", linewidth=1)
    bottom.axhline(1.0, color="black", linewidth=1)
    bottom.set_yscale("log")
    bottom.set_ylim(0.8, 20)
    bottom.set_xlabel("worst-case detection time of a silent cut (s), measured")
    bottom.grid(True, which="both", alpha=0.3)
    if col == 0:
        top.set_ylabel(f"false failovers per day (0 drawn at {FLOOR})")
        bottom.set_ylabel("÷ oracle at the same detection time\n(points with ≥ 30 oracle failovers)")
axes[0][0].legend(fontsize=8, loc="upper right")
fig.suptitle("Detection time vs false failovers under silent bursts: ours, the round rule, the original loop, the oracle (seeded, same traces)")
fig.tight_layout()
fig.savefig(PNG, dpi=100)
print(f"wrote {PNG}")

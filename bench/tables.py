#!/usr/bin/env python3
"""Prints the Markdown tables of BENCHMARKS.md's simulated section from
bench/results/false_failover.csv, false_failover_goals.csv and (when
present) false_failover_bursts05_500d.csv, so that no figure is copied by
hand."""

import csv
import os
from collections import defaultdict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "bench/results")


def num(x, digits=2):
    v = float(x)
    if v == 0:
        return "0"
    if v >= 100:
        return f"{v:.0f}"
    if v >= 10:
        return f"{v:.1f}"
    return f"{v:.{digits}f}"


def table():
    rows = list(csv.DictReader(open(os.path.join(RESULTS, "false_failover.csv"))))
    cells = defaultdict(dict)
    worst = defaultdict(dict)
    for r in rows:
        cells[r["profile"]][r["model"]] = r
        worst[r["profile"]][r["model"]] = r["worst_case_ms"]
    profiles = list(dict.fromkeys(r["profile"] for r in rows))
    models = list(dict.fromkeys(r["model"] for r in rows))
    days = rows[0]["days"]
    loss = [m for m in models if not m.startswith("silent bursts")]
    bursts = [m for m in models if m.startswith("silent bursts")]

    print(f"False failovers per day, noise without outages ({days} seeded days per cell); "
          "worst-case detection measured on a clean path:\n")
    print("| profile | worst case | echoes/s at 5 % loss | " + " | ".join(loss) + " |")
    print("|---|---|---|" + "---|" * len(loss))
    for p in profiles:
        clean = cells[p].get("iid 5%")
        line = [p, f"{float(clean['worst_case_ms']) / 1000:.2f} s", num(clean["echoes_per_s"], 1)]
        line += [num(cells[p][m]["per_day"]) for m in loss]
        print("| " + " | ".join(line) + " |")

    print(f"\nSilent bursts: ours / the oracle's at the same worst-case detection time, "
          f"false failovers per day ({days} seeded days per cell, same traces):\n")
    print("| profile | " + " | ".join(bursts) + " |")
    print("|---|" + "---|" * len(bursts))
    for p in profiles:
        line = [p]
        for m in bursts:
            c = cells[p][m]
            o = int(c["oracle_failovers"])
            ratio = f"{int(c['false_failovers']) / o:.2f}×" if o else "–"
            wc = c["worst_case_ms"]
            wc = f"{float(wc) / 1000:.2f} s" if wc != "n/a" else "n/a"
            line.append(f"{num(c['per_day'])} / {num(c['oracle_per_day'])} ({ratio}) at {wc}")
        print("| " + " | ".join(line) + " |")


def goals(name, title):
    path = os.path.join(RESULTS, name)
    if not os.path.exists(path):
        return
    rows = list(csv.DictReader(open(path)))
    print(f"\n{title}\n")
    print("| profile | path model | days | worst case | ours | oracle | ratio | echoes/s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        ours, oracle = int(r["false_failovers"]), int(r["oracle_failovers"])
        print(f"| {r['profile']} | {r['model']} | {r['days']} | {float(r['worst_case_ms']) / 1000:.2f} s "
              f"| {ours} ({num(r['per_day'], 3)}/day) | {oracle} ({num(r['oracle_per_day'], 3)}/day) "
              f"| {r['ratio']} | {num(r['echoes_per_s'], 1)} |")


if __name__ == "__main__":
    table()
    goals("false_failover_goals.csv", "The goal cells on more seeded days (`FF_ONLY=goals`):")
    goals("false_failover_bursts05_500d.csv",
          "0.5 s bursts on 500 seeded days (`FF_ONLY=goals FF_MODEL=\"silent bursts 0.5\" "
          "FF_PROFILE=silence FF_GOAL_DAYS=500`, then renamed):")

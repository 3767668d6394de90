#!/usr/bin/env python3
"""Plots compare.py results (its --json files) side by side: req/s, and p50
and p99 latency, for the same-token and the distinct-token modes.

usage: benches/plot.py SAME.json DISTINCT.json OUT.png   (needs matplotlib)
"""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ORDER = ["direct", "nginx-proxy", "haproxy-jwt", "jwtgate"]
COLOURS = {"direct": "#9e9e9e", "nginx-proxy": "#4caf50", "haproxy-jwt": "#2196f3", "jwtgate": "#ff9800"}


def main():
    same, distinct, out = sys.argv[1], sys.argv[2], sys.argv[3]
    modes = [("same token (oha)", json.load(open(same))["median"]),
             ("a different token per request (wrk)", json.load(open(distinct))["median"])]
    fig, axes = plt.subplots(2, 2, figsize=(11, 7))
    for col, (title, med) in enumerate(modes):
        names = [n for n in ORDER if n in med]
        ax = axes[0][col]
        bars = ax.bar(names, [med[n]["rps"] / 1000 for n in names], color=[COLOURS[n] for n in names])
        ax.bar_label(bars, fmt="%.1fk")
        ax.set_title(f"{title}: req/s (median)", fontsize=10)
        ax.set_ylabel("thousand requests/s")
        ax = axes[1][col]
        x = range(len(names))
        ax.bar([i - 0.2 for i in x], [med[n]["p50"] for n in names], width=0.4, label="p50",
               color=[COLOURS[n] for n in names], alpha=0.55)
        ax.bar([i + 0.2 for i in x], [med[n]["p99"] for n in names], width=0.4, label="p99",
               color=[COLOURS[n] for n in names])
        ax.set_xticks(list(x), names)
        ax.set_ylabel("latency, ms")
        ax.set_title("p50 (light) and p99 (dark) latency", fontsize=10)
    fig.suptitle("jwtgate vs HAProxy jwt_verify vs a plain NGINX proxy — 64 connections, 2 cores")
    fig.tight_layout()
    fig.savefig(out, dpi=110)


if __name__ == "__main__":
    main()

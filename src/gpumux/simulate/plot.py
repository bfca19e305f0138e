"""The picture of a run: each model's queue waits over time, with switches marked.

Owns: one panel per policy (same axes, so they compare at a glance): a dot per granted
request at its grant time and wait, a tick along the bottom per finished switch (in its
target's colour), and the `max_wait_secs` line. Uses matplotlib's Agg backend (no
display needed), imported only when a plot is asked for.
Does not: run simulations or compute statistics.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from gpumux.simulate.records import RunRecord


def plot(records: Mapping[str, RunRecord], path: Path, *, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = sorted({r.model for rec in records.values() for r in rec.requests.values()})
    colours = {m: plt.get_cmap("tab10")(i % 10) for i, m in enumerate(models)}
    fig, axes = plt.subplots(
        len(records), 1, figsize=(11, 2.8 * len(records)), sharex=True, sharey=True, squeeze=False
    )
    for ax, (policy, record) in zip(axes[:, 0], records.items(), strict=True):
        for model in models:
            granted = [
                (r.decided_at, r.decided_at - r.arrived_at)
                for r in record.requests.values()
                if r.model == model and r.outcome == "granted" and r.decided_at is not None
            ]
            if granted:
                xs, ys = zip(*granted, strict=True)
                ax.scatter(xs, ys, s=3, color=colours[model], label=model)
        for switch in record.switches:
            if switch.outcome in ("ok", "fallback_cold"):
                ax.plot([switch.finished_at], [0], "|", color=colours.get(switch.target), ms=8)
        ax.axhline(record.max_wait_secs, color="red", ls="--", lw=0.8, label="max_wait_secs")
        ax.set_title(policy, loc="left", fontsize=10)
        ax.set_ylabel("queue wait (s)")
    axes[0, 0].legend(loc="upper right", fontsize=7, markerscale=3, ncol=min(5, len(models) + 1))
    axes[-1, 0].set_xlabel("simulated time (s); ticks at 0 = switches")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)

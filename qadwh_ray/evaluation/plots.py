"""Precision–recall and precision@k curves as PNG files (matplotlib, no display)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # files only; CI and servers have no display
import matplotlib.pyplot as plt  # noqa: E402

from qadwh_ray.evaluation.evaluate import RankingMetrics  # noqa: E402


def plot_curves(rows: list[RankingMetrics], out_dir: str, prefix: str = "") -> list[str]:
    """One PR figure and one P@k figure per code length; returns the file paths."""
    import os

    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for nbits in sorted({r.nbits for r in rows}):
        group = [r for r in rows if r.nbits == nbits]
        for kind in ("pr", "pk"):
            fig, ax = plt.subplots(figsize=(5.5, 4.2), dpi=110)
            for r in group:
                if kind == "pr":
                    ax.plot(r.pr_curve["recall"], r.pr_curve["precision"], label=r.method)
                else:
                    ks = sorted(r.pk_curve)
                    ax.plot(ks, [r.pk_curve[k] for k in ks], marker="o", ms=3, label=r.method)
            if kind == "pr":
                ax.set(xlabel="recall", ylabel="precision", title=f"Precision–recall, {nbits} bits")
            else:
                ax.set(xscale="log", xlabel="number of retrieved items k", ylabel="precision@k",
                       title=f"Precision@k, {nbits} bits")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
            fig.tight_layout()
            path = os.path.join(out_dir, f"{prefix}{kind}-{nbits}bits.png")
            fig.savefig(path)
            plt.close(fig)
            paths.append(path)
    return paths

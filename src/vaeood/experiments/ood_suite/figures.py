"""The suite's figures: ROC curves and score histograms per detector."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ...infra.atomic import atomic_write
from .summary import load_scores


def write_figures(out_dir: Path, out: dict) -> dict:
    """Per family: ROC curves of every detector (every seed; seed 0 solid) and
    histograms of its scores (first seed), in ``out_dir/figures``."""
    from matplotlib.figure import Figure  # on use (slow import); not pyplot: no global state
    from sklearn.metrics import roc_curve

    figures = {}
    for fam_name, fam in out["families"].items():
        names = list(fam["summary"])
        seeds = list(fam["seeds"])
        cols = min(4, len(names))
        rows = math.ceil(len(names) / cols)
        roc = Figure(figsize=(3.6 * cols, 3.3 * rows), dpi=100)
        hist = Figure(figsize=(3.6 * cols, 3.0 * rows), dpi=100)
        roc_axes = roc.subplots(rows, cols, squeeze=False).ravel()
        hist_axes = hist.subplots(rows, cols, squeeze=False).ravel()
        colours = {o: f"C{i}" for i, o in enumerate(fam["ood"])}
        # the grid may hold more axes than detectors: the spare ones stay empty
        for ax_r, ax_h, name in zip(roc_axes[:len(names)], hist_axes[:len(names)], names, strict=True):
            for k, seed in enumerate(seeds):
                scores = load_scores(out_dir, fam, name, seed)
                s_in = scores[fam_name]
                for ood in fam["ood"]:
                    s_out = scores[ood]
                    labels = np.r_[np.zeros(len(s_in)), np.ones(len(s_out))]
                    fpr, tpr, _ = roc_curve(labels, np.r_[s_in, s_out])
                    label = f"{ood} ({fam['summary'][name][ood]['auroc']['mean']:.3f})" if k == 0 else None
                    ax_r.plot(fpr, tpr, color=colours[ood], alpha=1.0 if k == 0 else 0.35, lw=1.2 if k == 0 else 0.8,
                              label=label)
                if k == 0:
                    _histogram(ax_h, {fam_name: s_in, **{o: scores[o] for o in fam["ood"]}},
                               {fam_name: "k", **colours})
            ax_r.plot([0, 1], [0, 1], color="grey", lw=0.6, ls=":")
            ax_r.set_title(name, fontsize=9)
            ax_r.set_xlabel("FPR", fontsize=8)
            ax_r.set_ylabel("TPR", fontsize=8)
            ax_r.legend(fontsize=6, loc="lower right", title="OOD (mean AUROC)", title_fontsize=6)
            ax_h.set_title(name, fontsize=9)
            ax_h.set_xlabel("score (higher = more OOD)", fontsize=8)
            ax_h.legend(fontsize=6)
        for ax in [*roc_axes[len(names):], *hist_axes[len(names):]]:
            ax.set_visible(False)
        roc.suptitle(f"ROC curves, VAE trained on {fam['title']} (OOD positive; {len(seeds)} seeds, first solid)")
        hist.suptitle(f"Detector scores, VAE trained on {fam['title']} (seed {seeds[0]}; "
                      "around the in-distribution scores, the rest in the end bins)")
        for fig, kind in ((roc, "roc"), (hist, "hist")):
            fig.tight_layout()
            path = out_dir / "figures" / f"{kind}_{fam_name}.png"
            _save_png(fig, path)
            figures[f"{kind}_{fam_name}"] = f"figures/{path.name}"
    return figures


def _histogram(ax, values: dict[str, np.ndarray], colours: dict[str, str]) -> None:
    """Overlaid density histograms on shared bins around the in-distribution scores (the
    first set): from its 0.5% to its 99.5% quantile, widened by twice that span on each
    side (noise images can score 10⁴× the rest); values outside are clipped into the end bins."""
    finite = {k: v[np.isfinite(v)] for k, v in values.items()}
    ref = next(iter(finite.values()))
    q_lo, q_hi = np.quantile(ref, [0.005, 0.995])
    span = max(q_hi - q_lo, 1e-9)
    pooled = np.concatenate(list(finite.values()))
    lo, hi = max(pooled.min(), q_lo - 2 * span), min(pooled.max(), q_hi + 2 * span)
    if not hi > lo:
        lo, hi = pooled.min(), pooled.max() + 1e-9
    bins = np.linspace(lo, hi, 50)
    for name, v in finite.items():
        ax.hist(np.clip(v, lo, hi), bins=bins, density=True, histtype="stepfilled", alpha=0.45, color=colours[name],
                label=name)


def _save_png(fig, path: Path) -> None:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    atomic_write(path, lambda f: f.write(buf.getvalue()))



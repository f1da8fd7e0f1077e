"""A PNG of the loss curves of every stage (one panel per stage), with the in-training STS-B dev
score on a second axis where the stage was evaluated (`eval_every`)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

logger = logging.getLogger(__name__)


def plot_losses(logs: dict[str, Path], out: Path) -> Path | None:
    """logs: stage name -> its JSONL step log. Returns the PNG path, or None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.warning("matplotlib is not installed (pip install 'l2v-ray[jobs]'): no loss-curve PNG")
        return None
    fig, axes = plt.subplots(1, max(len(logs), 1), figsize=(5 * max(len(logs), 1), 3.5), squeeze=False)
    for ax, (stage, path) in zip(axes[0], logs.items()):
        records = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
        losses = [r for r in records if "loss" in r]
        ax.plot([r["step"] for r in losses], [r["loss"] for r in losses], lw=1.2)
        ax.set_title(f"{stage} loss")
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.grid(alpha=0.3)
        dev = [r for r in records if "stsb_dev" in r]
        if dev:
            ax2 = ax.twinx()
            ax2.plot([r["step"] for r in dev], [r["stsb_dev"] for r in dev], "o-", color="tab:orange", lw=1.2,
                     label="STS-B dev")
            ax2.set_ylabel("STS-B dev (Spearman x100)", color="tab:orange")
            ax.set_title(f"{stage} loss and STS-B dev")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out

"""A PNG of the loss curves of every stage (one panel per stage)."""

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
        ax.plot([r["step"] for r in records], [r["loss"] for r in records], lw=1.2)
        ax.set_title(f"{stage} loss")
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out

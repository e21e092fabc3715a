"""Plots inside self-contained HTML reports: a matplotlib figure becomes an inline base64 PNG,
so a report (the ladder's, a tuning study's) can be mailed or archived as one file."""

from __future__ import annotations

import base64
import io


def png_base64(fig) -> str:
    """The figure as a base64 PNG (for ``<img src="data:image/png;base64,...">``); closes it."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()

"""Pictures as files: matplotlib figures rendered on the Agg canvas and written atomically.

Every picture of this project (case sheets, report plots, ``progress.png``) is a
``matplotlib.figure.Figure`` built with the object API and rendered by the Agg canvas:
no display, no pyplot state shared between threads, no backend switch.
"""

from __future__ import annotations

import io
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from dataset.common.atomic import write_bytes_atomic

# Okabe and Ito's palette: its colours stay distinguishable for colour-blind readers
OKABE_ITO = {
    "blue": "#0072B2",
    "orange": "#E69F00",
    "green": "#009E73",
    "pink": "#CC79A7",
    "sky": "#56B4E9",
    "vermillion": "#D55E00",
    "yellow": "#F0E442",
}


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_END = b"IEND\xaeB`\x82"  # the last chunk of every complete PNG
# zlib level 3: half the encoding time of the default 6 for a case sheet of about the same size
PNG_COMPRESS_LEVEL = 3


# the PNG "Software" text chunk of every picture this project writes: how a command tells its own
# pictures (which it may replace) from anyone else's (which it never does)
SOFTWARE = "pancreas-seg"


def png_bytes(fig: Figure) -> bytes:
    """``fig`` rendered as PNG by matplotlib's Agg canvas, marked as this project's."""
    buffer = io.BytesIO()
    FigureCanvasAgg(fig).print_png(
        buffer, metadata={"Software": SOFTWARE}, pil_kwargs={"compress_level": PNG_COMPRESS_LEVEL}
    )
    return buffer.getvalue()


def is_our_png(path: str | Path) -> bool:
    """Whether ``path`` is a PNG this project wrote (its Software chunk), so it may be replaced."""
    from PIL import Image

    try:
        with Image.open(path) as picture:
            return picture.format == "PNG" and picture.info.get("Software") == SOFTWARE
    except (OSError, ValueError):
        return False


def write_png(path: str | Path, data: bytes, point: str | None = None) -> Path:
    """Write encoded PNG ``data`` atomically; ``OSError`` naming the file if it is not a whole PNG."""
    if not (data.startswith(PNG_SIGNATURE) and data.endswith(PNG_END)):
        raise OSError(f"{path}: refused, the encoded data ({len(data)} bytes) is not a complete PNG")
    write_bytes_atomic(path, data, point=point)
    return Path(path)


def write_figure(fig: Figure, path: str | Path, point: str | None = None) -> Path:
    """Render ``fig`` and write it to ``path`` atomically, every byte checked; return the path."""
    return write_png(path, png_bytes(fig), point=point)


def plain_text(text: str) -> str:
    """``text`` drawn as itself: matplotlib would read ``$...$`` in a case id as mathematics."""
    return text.replace("$", r"\$")

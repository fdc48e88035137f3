"""The PDF reports' building blocks (reportlab): page geometry, paragraph styles and fonts,
number formatting, a wrapping table, figures scaled to the frame, the package versions.

reports/pdf.py (one analysis) and reports/dataset_report.py (a dataset) lay out their sections
with these.
"""

from __future__ import annotations

import importlib.metadata
import logging
import platform
from pathlib import Path
from xml.sax.saxutils import escape

from reportlab.lib import colors
from reportlab.lib.enums import TA_CENTER
from reportlab.lib.pagesizes import A4, landscape
from reportlab.lib.styles import ParagraphStyle, getSampleStyleSheet
from reportlab.lib.units import cm
from reportlab.platypus import Image, Paragraph, Table, TableStyle

log = logging.getLogger(__name__)

PAGE = A4
MARGIN = 1.6 * cm
FRAME_W = PAGE[0] - 2 * MARGIN
FRAME_H = PAGE[1] - 2 * MARGIN
WIDE_PAGE = landscape(A4)  # for figures too wide to read on a portrait page
WIDE_W = WIDE_PAGE[0] - 2 * MARGIN
WIDE_H = WIDE_PAGE[1] - 2 * MARGIN
CAPTION_RESERVE = 4.2 * cm  # height kept free under a figure for its caption
FIGURE_DPI = 110  # PNGs without a dpi tag are taken to be at this resolution

# What `package_versions` reports: import name -> distribution name.
PACKAGES = {"torch": "torch", "transformers": "transformers", "numpy": "numpy",
            "gradio": "gradio", "matplotlib": "matplotlib", "reportlab": "reportlab",
            "seaborn": "seaborn", "scipy": "scipy", "scikit-learn": "scikit-learn",
            "pillow": "pillow"}


def package_versions() -> dict[str, str | None]:
    """Versions of Python and the packages that shape the numbers and the files (None: absent)."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for key, dist in PACKAGES.items():
        try:
            out[key] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[key] = None
    return out


# ---------------------------------------------------------------------------------------------
# styles


def _register_fonts() -> tuple[str, str]:
    """DejaVu Sans (ships with matplotlib; covers most scripts) or Helvetica as a fallback."""
    from reportlab.pdfbase import pdfmetrics
    from reportlab.pdfbase.ttfonts import TTFont

    try:
        import matplotlib

        base = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
        if "DejaVuSans" not in pdfmetrics.getRegisteredFontNames():
            pdfmetrics.registerFont(TTFont("DejaVuSans", str(base / "DejaVuSans.ttf")))
            pdfmetrics.registerFont(TTFont("DejaVuSans-Bold", str(base / "DejaVuSans-Bold.ttf")))
            pdfmetrics.registerFontFamily("DejaVuSans", normal="DejaVuSans",
                                          bold="DejaVuSans-Bold", italic="DejaVuSans",
                                          boldItalic="DejaVuSans-Bold")
        return "DejaVuSans", "DejaVuSans-Bold"
    except Exception as exc:  # a missing font file must not stop the report
        log.info("DejaVu Sans not available (%s); using Helvetica", exc)
        return "Helvetica", "Helvetica-Bold"


def _styles() -> dict[str, ParagraphStyle]:
    font, bold = _register_fonts()
    ss = getSampleStyleSheet()
    st = {
        "title": ParagraphStyle("title", parent=ss["Title"], fontName=bold, fontSize=22,
                                leading=27, spaceAfter=14),
        "h1": ParagraphStyle("h1", parent=ss["Heading1"], fontName=bold, fontSize=15,
                             leading=19, spaceBefore=6, spaceAfter=8),
        "h2": ParagraphStyle("h2", parent=ss["Heading2"], fontName=bold, fontSize=11.5,
                             leading=14, spaceBefore=10, spaceAfter=4),
        "body": ParagraphStyle("body", parent=ss["BodyText"], fontName=font, fontSize=9.5,
                               leading=12.5, spaceAfter=4),
        "small": ParagraphStyle("small", parent=ss["BodyText"], fontName=font, fontSize=8,
                                leading=10),
        "cell": ParagraphStyle("cell", parent=ss["BodyText"], fontName=font, fontSize=7.5,
                               leading=9),
        "head": ParagraphStyle("head", parent=ss["BodyText"], fontName=bold, fontSize=7.5,
                               leading=9),
        "caption": ParagraphStyle("caption", parent=ss["BodyText"], fontName=font, fontSize=8.5,
                                  leading=11, spaceBefore=4, spaceAfter=14,
                                  textColor=colors.HexColor("#333333")),
        "centre": ParagraphStyle("centre", parent=ss["BodyText"], fontName=font, fontSize=10,
                                 leading=13, alignment=TA_CENTER),
    }
    st["font"], st["bold"] = font, bold  # type: ignore[assignment]
    return st


def _fmt(v, digits: int = 4) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int):
        return f"{v:,}" if abs(v) >= 10000 else str(v)
    if isinstance(v, float):
        if v != v:
            return "–"
        return f"{v:.{digits}g}"
    return str(v)


def _params(n) -> str:
    if not isinstance(n, (int, float)):
        return "–"
    if n >= 1e9:
        return f"{n / 1e9:.2f} B"
    if n >= 1e6:
        return f"{n / 1e6:.2f} M"
    return f"{int(n):,}"


def _p(text, style) -> Paragraph:
    return Paragraph(escape(str(text)), style)


def _table(rows: list[list], widths: list[float], st: dict, header: bool = True,
           align_right_from: int | None = None) -> Table:
    """A table of Paragraph cells (they wrap) that repeats its header row across pages."""
    data = []
    for i, row in enumerate(rows):
        style = st["head"] if header and i == 0 else st["cell"]
        data.append([c if isinstance(c, Paragraph) else _p(c, style) for c in row])
    scale = FRAME_W / sum(widths) if sum(widths) > FRAME_W else 1.0
    t = Table(data, colWidths=[w * scale for w in widths], repeatRows=1 if header else 0,
              hAlign="LEFT")
    cmds = [("VALIGN", (0, 0), (-1, -1), "TOP"),
            ("LINEBELOW", (0, 0), (-1, 0), 0.6, colors.HexColor("#444444")),
            ("LEFTPADDING", (0, 0), (-1, -1), 3), ("RIGHTPADDING", (0, 0), (-1, -1), 3),
            ("TOPPADDING", (0, 0), (-1, -1), 1.5), ("BOTTOMPADDING", (0, 0), (-1, -1), 1.5)]
    if header:
        cmds.append(("BACKGROUND", (0, 0), (-1, 0), colors.HexColor("#e8eef5")))
    for i in range(1 if header else 0, len(data)):
        if i % 2 == 0:
            cmds.append(("BACKGROUND", (0, i), (-1, i), colors.HexColor("#f6f6f6")))
    t.setStyle(TableStyle(cmds))
    return t


# ---------------------------------------------------------------------------------------------
# figures


def _natural_size(path: Path) -> tuple[float, float]:
    """(width, height) in points at the image's own dpi."""
    from PIL import Image as PILImage

    with PILImage.open(path) as im:
        w, h = im.size
        dpi = im.info.get("dpi", (FIGURE_DPI, FIGURE_DPI))[0] or FIGURE_DPI
    return w * 72.0 / dpi, h * 72.0 / dpi


def _scaled_image(path: Path, max_w: float, max_h: float) -> Image:
    """The image at its designed size, shrunk (never enlarged) to fit `max_w` x `max_h`."""
    w_pt, h_pt = _natural_size(path)
    scale = min(max_w / w_pt, max_h / h_pt, 1.0)
    return Image(str(path), width=w_pt * scale, height=h_pt * scale)


def _is_wide(path: Path) -> bool:
    """A figure that a portrait page would shrink below 80% and that is clearly landscape."""
    w_pt, h_pt = _natural_size(path)
    portrait = min(FRAME_W / w_pt, (FRAME_H - CAPTION_RESERVE) / h_pt, 1.0)
    wide = min(WIDE_W / w_pt, (WIDE_H - CAPTION_RESERVE) / h_pt, 1.0)
    return portrait < 0.8 and wide > portrait * 1.15 and w_pt > h_pt

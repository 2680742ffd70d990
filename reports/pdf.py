"""The one-page PDF report (``*_report.pdf``).

Stage: PDF rendering. Inputs: the prediction document (``reports.predictions``) and the
two PNG byte strings already written as ``*_source_image.png`` and ``*_heatmap.png``.
Output: the PDF bytes. Each call builds a fresh ``FPDF`` object, so concurrent or
successive reports share no page, font-subset or patient state.

Fonts: DejaVu Sans (shipped in ``reports/fonts``) covers Latin, Greek, Cyrillic and
more. CJK-capable fonts found on the system, or listed in ``CXR_REPORT_FALLBACK_FONTS``
(``os.pathsep``-separated paths), are registered as fallbacks. A character that no
registered font has is drawn as U+FFFD instead of being left to fpdf2, so missing
glyphs never raise and fpdf2 never logs about them. Arabic and other scripts needing
shaping render as unjoined letters in logical order (fpdf2 shapes only with
uharfbuzz, which is not a dependency).
"""

from __future__ import annotations

import copy
import functools
import io
import math
import os
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from fontTools import subset as ftsubset
from fontTools import ttLib
from fpdf import FPDF
from fpdf.enums import XPos, YPos
from fpdf.fonts import SubsetMap, TTFFont
from fpdf.image_datastructures import RasterImageInfo

from reports.images import png_size, png_stream
from reports.predictions import (
    DEFAULT_THRESHOLD,
    RESULT_ABNORMAL,
    RESULT_NORMAL,
    RESULT_TB,
)

FONT_DIR = Path(__file__).resolve().parent / "fonts"
FONT_FAMILY = "DejaVu"
FALLBACK_FAMILY = "DejaVuFallback"  # DejaVu Sans cut to CORE_RANGES, or complete
#: Unicode ranges of the main report faces: ASCII, Latin-1, general punctuation, U+FFFD.
BASIC_RANGES: tuple[tuple[int, int], ...] = ((0x0020, 0x007E), (0x00A0, 0x00FF), (0x2000, 0x206F),
                                             (0xFFFD, 0xFFFD))
#: The first fallback's ranges: Latin (with Vietnamese), Greek, Cyrillic, punctuation,
#: currency, letter-like symbols, arrows, and U+FFFD. Other scripts: the complete faces.
CORE_RANGES: tuple[tuple[int, int], ...] = (
    (0x0020, 0x024F), (0x0370, 0x03FF), (0x0400, 0x052F), (0x1E00, 0x1EFF),
    (0x2000, 0x206F), (0x20A0, 0x20CF), (0x2100, 0x21FF), (0xFFFD, 0xFFFD),
)
FALLBACK_FONTS_ENV = "CXR_REPORT_FALLBACK_FONTS"
SYSTEM_FALLBACK_FONTS: tuple[str, ...] = (
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/truetype/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/noto-cjk/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/google-noto-cjk/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc",
    "/usr/share/fonts/wqy-microhei/wqy-microhei.ttc",
    "/usr/share/fonts/truetype/droid/DroidSansFallbackFull.ttf",
    "/usr/share/fonts/truetype/arphic/uming.ttc",
    "/usr/share/fonts/truetype/unfonts-core/UnDotum.ttf",
)
_FONT_EXTENSIONS = (".ttf", ".otf", ".ttc", ".otc")

TITLE = "CXR Engine — Chest X-ray AI report"
DEMO_DISCLAIMER = "DEMO MODEL — trained on synthetic images — NOT FOR CLINICAL USE"
READER_DISCLAIMER = "Decision support only; a qualified reader must review the image."
PAGE_ALIAS = "{nb}"

Colour = tuple[int, int, int]
RESULT_COLOURS: dict[str, Colour] = {
    RESULT_TB: (176, 28, 28),
    RESULT_ABNORMAL: (204, 102, 0),
    RESULT_NORMAL: (30, 120, 60),
}
RED: Colour = (190, 20, 20)
BAR_PRESENT: Colour = (200, 45, 45)
BAR_ABSENT: Colour = (70, 110, 170)
BAR_TRACK: Colour = (228, 228, 228)
GREY_TEXT: Colour = (90, 90, 90)
REPLACEMENT_CHAR = "\ufffd"


def render_report_pdf(
    doc: Mapping[str, Any],
    source_png: bytes,
    heatmap_png: bytes,
    *,
    generated_at: datetime | None = None,
) -> bytes:
    """Render the report for one image and return the PDF bytes.

    Inputs: ``doc``, the prediction document (``result``, ``findings``, ``metadata``,
    ``model``, ``thresholds``, ``heatmap``, ``source`` are read); the two PNGs, embedded
    as given (fpdf2 reads them from memory; no re-encoding to another format here);
    ``generated_at`` for the footer (default: now, UTC).
    Output: an A4 portrait PDF: header, patient block, overall result, findings table
    with confidence bars and threshold ticks, the two images side by side, model
    identity, disclaimers, and a "Page N/M" footer with the generation time.
    """
    stamp = (
        (generated_at or datetime.now(timezone.utc))
        .strftime("%Y-%m-%d %H:%M:%S %Z")
        .strip()
    )
    pdf = _ReportPDF(stamp)
    _register_fonts(pdf, fallback=fallback_for(doc))
    pdf.add_page()
    _patient_block(pdf, _mapping(doc.get("metadata")), _mapping(doc.get("source")))
    _result_banner(pdf, str(doc.get("result", "")))
    _findings_table(pdf, doc.get("findings") or [], _mapping(doc.get("thresholds")))
    _images(pdf, source_png, heatmap_png, _mapping(doc.get("heatmap")))
    _model_block(pdf, _mapping(doc.get("model")), _mapping(doc.get("heatmap")))
    return bytes(pdf.output())


@functools.cache
def fallback_font_paths() -> tuple[Path, ...]:
    """Existing fallback font files: ``CXR_REPORT_FALLBACK_FONTS`` first, then system ones.

    Looked up once per process (``fallback_font_paths.cache_clear()`` to redo it).
    """
    configured = os.environ.get(FALLBACK_FONTS_ENV, "").split(os.pathsep)
    found: list[Path] = []
    for raw in [*configured, *SYSTEM_FALLBACK_FONTS]:
        path = Path(raw.strip()) if raw.strip() else None
        if (
            path
            and path.suffix.lower() in _FONT_EXTENSIONS
            and path.is_file()
            and path not in found
        ):
            found.append(path)
    return tuple(found)


def is_demo_model(model: Mapping[str, Any]) -> bool:
    """True when the bundle says it is a demo (``demo: true`` or "demo" in intended_use)."""
    return (
        model.get("demo") is True
        or "demo" in str(model.get("intended_use", "")).lower()
    )


def person_name(value: str) -> str:
    """A DICOM PN value for display: ``"Doe^John^^Dr"`` -> ``"Doe, John Dr"``.

    Component groups (alphabetic ``=`` ideographic ``=`` phonetic) are joined with
    ``" = "``; a value without ``^`` is returned as is.
    """
    groups = []
    for group in value.split("="):
        family, _, rest = group.partition("^")
        given = " ".join(part for part in rest.split("^") if part.strip())
        text = f"{family}, {given}" if family and given else family or given
        if text.strip():
            groups.append(text.strip())
    return " = ".join(groups)


class _ReportPDF(FPDF):
    """FPDF with this report's header and footer; one instance per report."""

    def __init__(self, generated_at: str) -> None:
        super().__init__(orientation="P", unit="mm", format="A4")
        self.generated_at = generated_at
        self.fallback_fonts: list[TTFFont] = []
        self.set_margins(15, 14, 15)
        self.set_auto_page_break(auto=True, margin=16)
        self.alias_nb_pages(PAGE_ALIAS)
        self.set_title(TITLE)
        self.set_creator("CXR Engine")

    def header(self) -> None:
        self.set_font(FONT_FAMILY, "B", 15)
        self.cell(0, 8, TITLE, new_x=XPos.LMARGIN, new_y=YPos.NEXT)
        self.set_draw_color(60, 60, 60)
        self.set_line_width(0.4)
        self.line(
            self.l_margin, self.get_y() + 1, self.w - self.r_margin, self.get_y() + 1
        )
        self.ln(4)

    def footer(self) -> None:
        self.set_y(-12)
        self.set_font(FONT_FAMILY, "", 8)
        self.set_text_color(*GREY_TEXT)
        width = (self.w - self.l_margin - self.r_margin) / 2
        self.cell(width, 5, f"Generated {self.generated_at}")
        self.cell(width, 5, f"Page {self.page_no()}/{PAGE_ALIAS}", align="R")
        self.set_text_color(0, 0, 0)


def _register_fonts(pdf: _ReportPDF, *, fallback: Fallback) -> None:
    """Add the report faces and, when the text needs them, fallback faces.

    fpdf2 subsets every registered font again for each PDF, at a cost in proportion
    to the font's size (about 0.1 s a face for the whole of DejaVu Sans), and embeds
    every registered font, used or not. So the main faces are DejaVu Sans cut down
    once per process to :data:`BASIC_RANGES`; a document whose text needs more gets,
    as fallbacks, DejaVu Sans cut to :data:`CORE_RANGES` or complete (whichever has
    its characters), and the CJK fonts only for characters DejaVu Sans lacks.
    """
    _add_font(pdf, FONT_FAMILY, "", FONT_DIR / "DejaVuSans.ttf", tier="basic")
    _add_font(pdf, FONT_FAMILY, "B", FONT_DIR / "DejaVuSans-Bold.ttf", tier="basic")
    families = []
    if fallback.dejavu is not None:
        families.append(FALLBACK_FAMILY)
        for style, face in (("", "DejaVuSans.ttf"), ("B", "DejaVuSans-Bold.ttf")):
            font = _add_font(pdf, FALLBACK_FAMILY, style, FONT_DIR / face, tier=fallback.dejavu)
            if isinstance(font, TTFFont):
                pdf.fallback_fonts.append(font)
    if fallback.other_fonts:
        for index, path in enumerate(fallback_font_paths()):
            family = f"Fallback{index}"
            font = _add_font(pdf, family, "", path)
            if isinstance(font, TTFFont):
                pdf.fallback_fonts.append(font)
                families.append(family)
    if families:
        pdf.set_fallback_fonts(families, exact_match=False)


@dataclass(frozen=True)
class Fallback:
    """The fallback faces a document needs (:func:`fallback_for`)."""

    dejavu: str | None = None  # None, "core" (the cut to CORE_RANGES) or "full"
    other_fonts: bool = False  # CJK and configured fonts, for characters DejaVu Sans lacks


_template_lock = threading.Lock()


@functools.cache
def _font_bytes(path: Path, tier: str) -> bytes:
    """The font file, or its cut to a tier's ranges (outlines, metrics and names kept)."""
    if tier == "full":
        return path.read_bytes()
    font = ttLib.TTFont(path, recalcTimestamp=False, recalcBBoxes=False)  # outlines copied, not recompiled
    options = ftsubset.Options(notdef_outline=True, recommended_glyphs=True, glyph_names=True,
                               name_IDs=["*"], name_languages=["*"], layout_features=[])
    options.drop_tables += ["GDEF", "GPOS", "GSUB", "MATH", "hdmx", "FFTM", "meta"]
    subsetter = ftsubset.Subsetter(options)
    ranges = BASIC_RANGES if tier == "basic" else CORE_RANGES
    subsetter.populate(unicodes=[c for first, last in ranges for c in range(first, last + 1)])
    subsetter.subset(font)
    out = io.BytesIO()
    font.save(out)
    return out.getvalue()


@functools.cache
def _font_template(path: Path, style: str, tier: str) -> tuple[TTFFont, bytes]:
    """A font parsed once per process (cmap, widths, metrics), with its bytes.

    Each document gets a copy of it with its own mutable parts (:func:`_add_font`)
    instead of fpdf2 parsing the file again (about 0.1 s a face).
    """
    data = _font_bytes(path, tier)
    font = TTFFont(FPDF(), io.BytesIO(data), f"template{style}", style)  # type: ignore[arg-type]
    return font, data


def _add_font(pdf: FPDF, family: str, style: str, path: Path, *, tier: str = "full") -> Any:
    """Add ``path`` (cut to ``tier``) as ``family``/``style`` to ``pdf`` from the per-process template.

    The copy shares the read-only tables (cmap, widths, descriptor) and gets fresh
    per-document state: its index, key, glyph subset, and its own fontTools object,
    because fpdf2 subsets that object in place when it writes the PDF. Font
    collections and colour fonts are added the usual way.
    """
    if path.suffix.lower() in (".ttc", ".otc"):  # collections: fpdf2 picks the face itself
        pdf.add_font(family, style, path)
        return pdf.fonts[f"{family.lower()}{style}"]
    template, data = _parsed_font(path, style, tier)
    if template.color_font is not None:
        pdf.add_font(family, style, path)
        return pdf.fonts[f"{family.lower()}{style}"]
    font = copy.copy(template)
    font.i = len(pdf.fonts) + 1
    font.fontkey = f"{family.lower()}{style}"
    # Glyphs are copied as they are: recomputing bounding boxes would decompile and
    # recompile every outline of the subset (most of the cost of writing the font).
    font.ttfont = ttLib.TTFont(io.BytesIO(data), recalcTimestamp=False, recalcBBoxes=False, lazy=True)
    font.missing_glyphs = []
    font.biggest_size_pt = 0
    font._hbfont = None
    font.subset = SubsetMap(font)
    pdf.fonts[font.fontkey] = font
    return font


def prepare_fonts() -> None:
    """Cut and parse the main report faces now (about 0.5 s once per process).

    A worker calls it when its process starts, so that its first file's report does
    not pay it inside the file's time limit.
    """
    _parsed_font(FONT_DIR / "DejaVuSans.ttf", "", "basic")
    _parsed_font(FONT_DIR / "DejaVuSans-Bold.ttf", "B", "basic")


def _parsed_font(path: Path, style: str, tier: str) -> tuple[TTFFont, bytes]:
    with _template_lock:  # one parse per font, even when threads render reports at once
        return _font_template(path, style, tier)


def fallback_for(doc: Mapping[str, Any]) -> Fallback:
    """Which fallback faces ``doc``'s text needs.

    A cut is made and parsed only when the one below it lacks a character; the
    complete faces only for a character the core cut lacks and DejaVu Sans has.
    """
    chars = {ord(c) for text in _strings(doc) for c in text if c.isprintable()}
    missing = chars
    dejavu = None
    for tier in ("basic", "core", "full"):
        regular, _ = _parsed_font(FONT_DIR / "DejaVuSans.ttf", "", tier)
        bold, _ = _parsed_font(FONT_DIR / "DejaVuSans-Bold.ttf", "B", tier)
        lacking = {c for c in missing if c not in regular.cmap or c not in bold.cmap}
        if lacking != missing and tier != "basic":
            dejavu = tier  # this cut has characters the one below lacks
        missing = lacking
        if not missing:
            break
    return Fallback(dejavu=dejavu, other_fonts=bool(missing) and bool(fallback_font_paths()))


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _strings(item)


def _drawable(pdf: _ReportPDF, text: str) -> str:
    """``text`` drawable by the current font or a fallback; other characters -> U+FFFD.

    Non-printable characters (controls, zero-width and bidi format characters) are
    dropped, and the page-count alias is broken up so a patient name cannot print it.
    """
    fonts = [pdf.current_font, *pdf.fallback_fonts]
    cmaps = [font.cmap for font in fonts if isinstance(font, TTFFont)]
    chars = [
        char if any(ord(char) in cmap for cmap in cmaps) else REPLACEMENT_CHAR
        for char in text
        if char.isprintable()
    ]
    return "".join(chars).replace(PAGE_ALIAS, "{ nb}")


def _fit(pdf: _ReportPDF, text: str, width: float) -> str:
    """``text`` cut with an ellipsis so it fits ``width`` mm in the current font."""
    text = _drawable(pdf, text)
    if pdf.get_string_width(text) <= width:
        return text
    while text and pdf.get_string_width(text + "…") > width:
        text = text[:-1]
    return text + "…"


def _patient_block(
    pdf: _ReportPDF, metadata: Mapping[str, Any], source: Mapping[str, Any]
) -> None:
    rows: list[tuple[tuple[str, str], tuple[str, str]]] = [
        (
            ("Patient name", person_name(_s(metadata, "patient_name"))),
            ("Patient ID", _s(metadata, "patient_id")),
        ),
        (("Age", _s(metadata, "age")), ("Sex", _s(metadata, "sex"))),
        (
            ("Study date", _dicom_date(_s(source, "study_date"))),
            ("Modality", _view(source)),
        ),
    ]
    label_w, value_w = 26.0, 64.0
    for left, right in rows:
        for label, value in (left, right):
            pdf.set_font(FONT_FAMILY, "B", 9)
            pdf.cell(label_w, 5.5, label)
            pdf.set_font(FONT_FAMILY, "", 9)
            pdf.cell(value_w, 5.5, _fit(pdf, value or "—", value_w - 1))
        pdf.ln(5.5)
    pdf.set_font(FONT_FAMILY, "B", 9)
    pdf.cell(label_w, 5.5, "SOP Inst. UID")
    pdf.set_font(FONT_FAMILY, "", 9)
    pdf.cell(
        0,
        5.5,
        _fit(pdf, _s(metadata, "sop_instance_uid") or "—", 2 * value_w + label_w),
    )
    pdf.ln(8)


def _result_banner(pdf: _ReportPDF, result: str) -> None:
    pdf.set_fill_color(*RESULT_COLOURS.get(result, (80, 80, 80)))
    pdf.set_text_color(255, 255, 255)
    pdf.set_font(FONT_FAMILY, "B", 15)
    pdf.cell(
        0,
        11,
        _drawable(pdf, f"  Overall result: {result}"),
        fill=True,
        new_x=XPos.LMARGIN,
        new_y=YPos.NEXT,
    )
    pdf.set_text_color(0, 0, 0)
    pdf.ln(3)


def _findings_table(
    pdf: _ReportPDF,
    findings: Sequence[Mapping[str, Any]],
    thresholds: Mapping[str, Any],
) -> None:
    widths = (52.0, 26.0, 24.0, 20.0)
    bar_w = pdf.w - pdf.l_margin - pdf.r_margin - sum(widths) - 4
    row_h = 5.6
    pdf.set_font(FONT_FAMILY, "B", 9)
    pdf.set_fill_color(235, 235, 235)
    for width, title in zip(widths, ("Finding", "Confidence", "Threshold", "Present")):
        pdf.cell(
            width, row_h, title, fill=True, align="L" if title == "Finding" else "R"
        )
    pdf.cell(
        0,
        row_h,
        "   Confidence (tick = threshold)",
        fill=True,
        new_x=XPos.LMARGIN,
        new_y=YPos.NEXT,
    )
    for finding in findings:
        name = str(finding.get("name", ""))
        confidence = _number(finding.get("confidence"), 0.0)
        threshold = _number(thresholds.get(name), DEFAULT_THRESHOLD)
        present = bool(finding.get("presence"))
        pdf.set_font(FONT_FAMILY, "B" if present else "", 9)
        pdf.set_text_color(*(RED if present else (0, 0, 0)))
        y = pdf.get_y()
        pdf.cell(widths[0], row_h, _fit(pdf, name, widths[0] - 1))
        pdf.cell(widths[1], row_h, f"{confidence * 100:.1f} %", align="R")
        pdf.cell(widths[2], row_h, f"{threshold * 100:.0f} %", align="R")
        pdf.cell(widths[3], row_h, "yes" if present else "no", align="R")
        _confidence_bar(
            pdf, pdf.get_x() + 4, y, bar_w, row_h, confidence, threshold, present
        )
        pdf.set_text_color(0, 0, 0)
        pdf.ln(row_h)
    pdf.ln(3)


def _confidence_bar(
    pdf: _ReportPDF,
    x: float,
    y: float,
    width: float,
    row_h: float,
    confidence: float,
    threshold: float,
    present: bool,
) -> None:
    """A grey track, a filled bar proportional to ``confidence``, a tick at ``threshold``."""
    top, height = y + 1.4, row_h - 2.8
    pdf.set_fill_color(*BAR_TRACK)
    pdf.rect(x, top, width, height, style="F")
    if confidence > 0:
        pdf.set_fill_color(*(BAR_PRESENT if present else BAR_ABSENT))
        pdf.rect(x, top, width * min(confidence, 1.0), height, style="F")
    tick_x = x + width * min(max(threshold, 0.0), 1.0)
    pdf.set_draw_color(0, 0, 0)
    pdf.set_line_width(0.5)
    pdf.line(tick_x, y + 0.6, tick_x, y + row_h - 0.6)
    pdf.set_line_width(0.2)


def _images(
    pdf: _ReportPDF, source_png: bytes, heatmap_png: bytes, heatmap: Mapping[str, Any]
) -> None:
    """Source and heatmap side by side, each fitted into its half of the page width."""
    gap = 6.0
    box_w = (pdf.w - pdf.l_margin - pdf.r_margin - gap) / 2
    reserved_below = 36.0  # model block and disclaimers stay on the same page
    box_h = min(95.0, pdf.h - pdf.b_margin - pdf.get_y() - reserved_below - 6)
    if box_h < 55.0:
        pdf.add_page()
        box_h = 95.0
    caption = f"Grad-CAM: {_s(heatmap, 'finding') or 'n/a'}"
    pdf.set_font(FONT_FAMILY, "B", 9)
    pdf.cell(box_w + gap, 5, "Source image")
    pdf.cell(box_w, 5, _fit(pdf, caption, box_w), new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    top = pdf.get_y() + 1
    for index, png in enumerate((source_png, heatmap_png)):
        px_w, px_h = png_size(png)
        scale = min(box_w / px_w, box_h / px_h)
        w, h = px_w * scale, px_h * scale
        x = pdf.l_margin + index * (box_w + gap) + (box_w - w) / 2
        pdf.image(_png_image(pdf, png, f"cxr-image-{index}"), x=x, y=top, w=w, h=h)
    pdf.set_y(top + box_h + 4)


def _png_image(pdf: _ReportPDF, png: bytes, name: str) -> str | io.BytesIO:
    """What to hand ``pdf.image``: the PNG's own compressed stream when it can be embedded as is.

    fpdf2 would decode the PNG and deflate the raw pixels again (level 6, about
    0.5 s for a 2048 x 2048 RGB image). An 8-bit grey or RGB PNG's IDAT stream is
    already a valid PDF ``/FlateDecode`` stream with ``/Predictor 15``, so it is
    registered in the document's image cache under ``name`` and drawn from there:
    the PDF holds exactly the pixels of the PNG, encoded once.
    """
    stream = png_stream(png)
    if stream is None:
        return io.BytesIO(png)
    cache = pdf.image_cache.images
    info = RasterImageInfo(
        data=stream.data, w=stream.width, h=stream.height,
        cs="DeviceGray" if stream.channels == 1 else "DeviceRGB", dpn=stream.channels, bpc=8,
        f="FlateDecode", dp=f"/Predictor 15 /Colors {stream.channels} /Columns {stream.width}",
        iccp=None, iccp_i=None, inverted=False, i=len(cache) + 1, usages=0,
    )
    cache[name] = info
    return name


def _model_block(
    pdf: _ReportPDF, model: Mapping[str, Any], heatmap: Mapping[str, Any]
) -> None:
    sha = _s(model, "sha256")
    identity = (
        f"Model: {_s(model, 'name') or 'unknown'} {_s(model, 'version')}".rstrip()
    )
    if sha:
        identity += f" · SHA-256 {sha[:12]}…"
    details = [identity]
    if model.get("intended_use"):
        details.append(f"Intended use: {_s(model, 'intended_use')}")
    if heatmap:
        layer = _s(heatmap, "layer")
        details.append(
            f"Heatmap: {_s(heatmap, 'method') or 'grad-cam'} for {_s(heatmap, 'finding') or 'n/a'}"
            + (f", layer {layer}" if layer else "")
        )
    pdf.set_font(FONT_FAMILY, "", 8.5)
    width = pdf.w - pdf.l_margin - pdf.r_margin
    for line in details:
        pdf.multi_cell(
            width, 4.5, _drawable(pdf, line), new_x=XPos.LMARGIN, new_y=YPos.NEXT
        )
    pdf.ln(2)
    if is_demo_model(model):
        pdf.set_font(FONT_FAMILY, "B", 11)
        pdf.set_text_color(*RED)
        pdf.multi_cell(width, 6, DEMO_DISCLAIMER, new_x=XPos.LMARGIN, new_y=YPos.NEXT)
        pdf.set_text_color(0, 0, 0)
    pdf.set_font(FONT_FAMILY, "B", 9)
    pdf.multi_cell(width, 5, READER_DISCLAIMER, new_x=XPos.LMARGIN, new_y=YPos.NEXT)


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _s(mapping: Mapping[str, Any], key: str) -> str:
    value = mapping.get(key)
    return "" if value is None else str(value)


def _number(value: Any, default: float) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return default
    return default if math.isnan(number) else number


def _dicom_date(value: str) -> str:
    """``YYYYMMDD`` -> ``YYYY-MM-DD``; anything else unchanged."""
    if len(value) == 8 and value.isdigit():
        return f"{value[:4]}-{value[4:6]}-{value[6:]}"
    return value


def _view(source: Mapping[str, Any]) -> str:
    return " ".join(
        part for part in (_s(source, "modality"), _s(source, "view_position")) if part
    )

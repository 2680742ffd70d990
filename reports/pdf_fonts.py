"""The report's fonts: which faces a document needs, cut and parsed once per process.

DejaVu Sans (shipped in ``reports/fonts``) covers Latin, Greek, Cyrillic and more.
CJK-capable fonts found on the system, or listed in ``CXR_REPORT_FALLBACK_FONTS``
(``os.pathsep``-separated paths), are registered as fallbacks. The page layout that
uses them is ``reports.pdf``.
"""

from __future__ import annotations

import copy
import functools
import io
import os
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fontTools import subset as ftsubset
from fontTools import ttLib
from fpdf import FPDF
from fpdf.fonts import SubsetMap, TTFFont

FONT_DIR = Path(__file__).resolve().parent / "fonts"
FONT_FAMILY = "DejaVu"
FALLBACK_FAMILY = "DejaVuFallback"  # DejaVu Sans cut to CORE_RANGES, or complete
#: Unicode ranges of the main report faces: ASCII, Latin-1, general punctuation, U+FFFD.
BASIC_RANGES: tuple[tuple[int, int], ...] = ((0x0020, 0x007E), (0x00A0, 0x00FF), (0x2000, 0x206F), (0xFFFD, 0xFFFD))
#: The first fallback's ranges: Latin (with Vietnamese), Greek, Cyrillic, punctuation,
#: currency, letter-like symbols, arrows, and U+FFFD. Other scripts: the complete faces.
CORE_RANGES: tuple[tuple[int, int], ...] = (
    (0x0020, 0x024F),
    (0x0370, 0x03FF),
    (0x0400, 0x052F),
    (0x1E00, 0x1EFF),
    (0x2000, 0x206F),
    (0x20A0, 0x20CF),
    (0x2100, 0x21FF),
    (0xFFFD, 0xFFFD),
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


@functools.cache
def fallback_font_paths() -> tuple[Path, ...]:
    """Existing fallback font files: ``CXR_REPORT_FALLBACK_FONTS`` first, then system ones.

    Looked up once per process (``fallback_font_paths.cache_clear()`` to redo it).
    """
    configured = os.environ.get(FALLBACK_FONTS_ENV, "").split(os.pathsep)
    found: list[Path] = []
    for raw in [*configured, *SYSTEM_FALLBACK_FONTS]:
        path = Path(raw.strip()) if raw.strip() else None
        if path and path.suffix.lower() in _FONT_EXTENSIONS and path.is_file() and path not in found:
            found.append(path)
    return tuple(found)


def register_fonts(pdf: FPDF, fallback_fonts: list[TTFFont], *, fallback: Fallback) -> None:
    """Add the report faces and, when the text needs them, fallback faces (their
    parsed fonts are appended to ``fallback_fonts``, for :func:`reports.pdf._drawable`).

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
                fallback_fonts.append(font)
    if fallback.other_fonts:
        for index, path in enumerate(fallback_font_paths()):
            family = f"Fallback{index}"
            font = _add_font(pdf, family, "", path)
            if isinstance(font, TTFFont):
                fallback_fonts.append(font)
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
    options = ftsubset.Options(
        notdef_outline=True,
        recommended_glyphs=True,
        glyph_names=True,
        name_IDs=["*"],
        name_languages=["*"],
        layout_features=[],
    )
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

"""The one-page PDF report (``*_report.pdf``).

Stage: PDF rendering. Inputs: the prediction document (``reports.predictions``) and the
two PNG byte strings already written as ``*_source_image.png`` and ``*_heatmap.png``.
Output: the PDF bytes. Each call builds a fresh ``FPDF`` object, so concurrent or
successive reports share no page, font-subset or patient state.

Fonts (``reports.pdf_fonts``): DejaVu Sans, shipped in ``reports/fonts``, with
CJK-capable fallbacks from the system or ``CXR_REPORT_FALLBACK_FONTS``. A character that no
registered font has is drawn as U+FFFD instead of being left to fpdf2, so missing
glyphs never raise and fpdf2 never logs about them. Arabic and other scripts needing
shaping render as unjoined letters in logical order (fpdf2 shapes only with
uharfbuzz, which is not a dependency).
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

from fpdf import FPDF
from fpdf.enums import XPos, YPos
from fpdf.fonts import TTFFont
from fpdf.image_datastructures import RasterImageInfo

from reports.images import png_size, png_stream
from reports.pdf_fonts import FONT_FAMILY, fallback_for, register_fonts
from reports.predictions import (
    DEFAULT_THRESHOLD,
    RESULT_ABNORMAL,
    RESULT_NORMAL,
    RESULT_TB,
)

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
    identity, disclaimers, and a "Page N/M" footer with the generation time. A condition
    the model does not assess reads "not assessed"; model labels that are present but
    feed no condition (unmapped, or ``broader`` and not approved for it) are listed under
    "Other findings"; the model block names the clinical status, the operating point and
    the manifest schema.
    """
    stamp = (generated_at or datetime.now(timezone.utc)).strftime("%Y-%m-%d %H:%M:%S %Z").strip()
    pdf = _ReportPDF(stamp)
    register_fonts(pdf, pdf.fallback_fonts, fallback=fallback_for(doc))
    pdf.add_page()
    _patient_block(pdf, _mapping(doc.get("metadata")), _mapping(doc.get("source")))
    _result_banner(pdf, str(doc.get("result", "")))
    _findings_table(pdf, doc.get("findings") or [], _mapping(doc.get("thresholds")))
    _other_findings(pdf, doc.get("model_outputs") or [])
    _images(pdf, source_png, heatmap_png, _mapping(doc.get("heatmap")))
    _model_block(pdf, _mapping(doc.get("model")), _mapping(doc.get("heatmap")))
    return bytes(pdf.output())


def is_demo_model(model: Mapping[str, Any]) -> bool:
    """True when the bundle says it is a demo (``demo: true``, clinical status ``demo``,
    or "demo" in intended_use)."""
    return (
        model.get("demo") is True
        or str(model.get("clinical_status", "")).lower() == "demo"
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
        self.line(self.l_margin, self.get_y() + 1, self.w - self.r_margin, self.get_y() + 1)
        self.ln(4)

    def footer(self) -> None:
        self.set_y(-12)
        self.set_font(FONT_FAMILY, "", 8)
        self.set_text_color(*GREY_TEXT)
        width = (self.w - self.l_margin - self.r_margin) / 2
        self.cell(width, 5, f"Generated {self.generated_at}")
        self.cell(width, 5, f"Page {self.page_no()}/{PAGE_ALIAS}", align="R")
        self.set_text_color(0, 0, 0)


def _drawable(pdf: _ReportPDF, text: str) -> str:
    """``text`` drawable by the current font or a fallback; other characters -> U+FFFD.

    Non-printable characters (controls, zero-width and bidi format characters) are
    dropped, and the page-count alias is broken up so a patient name cannot print it.
    """
    fonts = [pdf.current_font, *pdf.fallback_fonts]
    cmaps = [font.cmap for font in fonts if isinstance(font, TTFFont)]
    chars = [
        char if any(ord(char) in cmap for cmap in cmaps) else REPLACEMENT_CHAR for char in text if char.isprintable()
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


def _patient_block(pdf: _ReportPDF, metadata: Mapping[str, Any], source: Mapping[str, Any]) -> None:
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
        pdf.cell(width, row_h, title, fill=True, align="L" if title == "Finding" else "R")
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
        if finding.get("assessed") is False:
            pdf.set_font(FONT_FAMILY, "", 9)
            pdf.set_text_color(*GREY_TEXT)
            pdf.cell(widths[0], row_h, _fit(pdf, name, widths[0] - 1))
            pdf.cell(widths[1], row_h, "—", align="R")
            pdf.cell(widths[2], row_h, "—", align="R")
            pdf.cell(widths[3], row_h, "", align="R")
            pdf.cell(0, row_h, "   not assessed by this model")
            pdf.set_text_color(0, 0, 0)
            pdf.ln(row_h)
            continue
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
        _confidence_bar(pdf, pdf.get_x() + 4, y, bar_w, row_h, confidence, threshold, present)
        pdf.set_text_color(0, 0, 0)
        pdf.ln(row_h)
    pdf.ln(3)


def _other_findings(pdf: _ReportPDF, outputs: Sequence[Any]) -> None:
    """Present model labels that feed no condition: never silently dropped."""
    others = [
        o
        for o in outputs
        if isinstance(o, Mapping)
        and o.get("presence")
        and o.get("relation") != "normal"
        and not o.get("used_for_condition")
    ]
    if not others:
        return
    pdf.set_font(FONT_FAMILY, "B", 9)
    pdf.cell(0, 5, "Other findings (model labels outside the 11 conditions)", new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.set_font(FONT_FAMILY, "", 9)
    width = pdf.w - pdf.l_margin - pdf.r_margin
    for o in others:
        related = f" (related to {o['maps_to']}, not counted for it)" if o.get("maps_to") else ""
        line = (
            f"{_s(o, 'label')}: {_number(o.get('probability'), 0.0) * 100:.1f} % "
            f"(threshold {_number(o.get('threshold'), DEFAULT_THRESHOLD) * 100:.0f} %){related}"
        )
        pdf.set_text_color(*RED)
        pdf.cell(0, 5, _fit(pdf, line, width), new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.set_text_color(0, 0, 0)
    pdf.ln(2)


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


def _images(pdf: _ReportPDF, source_png: bytes, heatmap_png: bytes, heatmap: Mapping[str, Any]) -> None:
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
        data=stream.data,
        w=stream.width,
        h=stream.height,
        cs="DeviceGray" if stream.channels == 1 else "DeviceRGB",
        dpn=stream.channels,
        bpc=8,
        f="FlateDecode",
        dp=f"/Predictor 15 /Colors {stream.channels} /Columns {stream.width}",
        iccp=None,
        iccp_i=None,
        inverted=False,
        i=len(cache) + 1,
        usages=0,
    )
    cache[name] = info
    return name


def _model_block(pdf: _ReportPDF, model: Mapping[str, Any], heatmap: Mapping[str, Any]) -> None:
    sha = _s(model, "sha256") or _s(model, "weights_sha256")
    identity = f"Model: {_s(model, 'name') or 'unknown'} {_s(model, 'version')}".rstrip()
    if sha:
        identity += f" · SHA-256 {sha[:12]}…"
    details = [identity]
    status = [
        f"{title}: {_s(model, key)}"
        for title, key in (
            ("Clinical status", "clinical_status"),
            ("operating point", "operating_point"),
            ("manifest schema", "manifest_schema"),
        )
        if _s(model, key)
    ]
    if status:
        details.append(" · ".join(status))
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
        pdf.multi_cell(width, 4.5, _drawable(pdf, line), new_x=XPos.LMARGIN, new_y=YPos.NEXT)
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
    return " ".join(part for part in (_s(source, "modality"), _s(source, "view_position")) if part)

"""DICOM outputs of one analysed image: a heatmap Secondary Capture, a TID 1500 SR and an
Encapsulated PDF, built to join the source's study in a PACS.

Stage: rendering (optional, beside the four artifacts). Inputs: the source's header
(a pydicom ``Dataset``, pixel data not needed), the heatmap overlay (BGR uint8, as
``reports.images.render_heatmap_overlay`` makes it), the report PDF bytes and the
predictions document. Output: ``{kind: Dataset}`` for the kinds of ``DICOM_SUFFIXES``,
written as ``<pid>_sc.dcm``, ``<pid>_sr.dcm`` and ``<pid>_report_pdf.dcm`` beside the
four artifacts (same atomic publication, ``reports.publish``).

Linking, the way a PACS and a viewer expect it (MONAI's SR landing in a new study
because tags were not copied is the failure this avoids):

* patient and study modules are copied from the source, ``SpecificCharacterSet``
  included (a name in Cyrillic must read the same in the PACS), so each object joins the
  source's study; each output type has its own new series;
* UIDs are derived, not random (``derived_uid``: a ``2.25.`` UID from a name-based UUID)
  from the source SOP Instance UID (the study UID for a series), the model weights' SHA-256 and the output type. A re-sent
  image gives the same objects (the PACS discards the duplicate), a new model version
  gives new ones. One series per study, model and output type: every image of a study
  lands in the same "AI heatmap" series;
* the series description ends with the model's clinical status (the demo model:
  ``"AI heatmap - DEMO MODEL - NOT FOR DIAGNOSTIC USE"``): DICOM has no "not for
  diagnostic use" attribute, peers use the description, and the SR stays UNVERIFIED;
* the model is named in ``ContributingEquipmentSequence`` (name, version and a DeviceUID
  derived from the weights' SHA-256), with purpose DCM 109103 "Processing Equipment":
  highdicom accepts only CID 7005 purposes, so not IHE AIR's draft 99IHE code.

Coding: where pydicom's code dictionary has a SNOMED CT concept for a finding it is
used (Cardiomegaly, Pleural effusion, Pneumothorax, Fibrosis); the other findings, and
the procedure, use the private coding scheme ``99CXRENG`` with the API's label as code
meaning, rather than a guessed SNOMED code. Each finding is one TID 1501 measurement
group: finding type = the finding, a qualitative evaluation present/absent (SCT
52101004 / 272519000) and a measurement "Probability" (DCM 122157, unit UCUM ``1``).

The SC is at the source's size (the 8-bit display image is at most 2048 px on its long
side; a larger source gets the overlay scaled up), RGB, JPEG baseline (lossy, flagged as
such): a heatmap for viewing, not for diagnosis, at a tenth of the size uncompressed.
This module imports no web, queue or model framework.
"""

from __future__ import annotations

import copy
import datetime as dt
import io
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import cv2
import highdicom as hd
import numpy as np
from pydicom import dcmread
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.sr.codedict import codes
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    EncapsulatedPDFStorage,
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
)

from inference.labels import LABELS

#: Output kind -> file-name suffix (after the patient folder's name).
DICOM_SUFFIXES: dict[str, str] = {
    "dicom_sc": "_sc.dcm",
    "dicom_sr": "_sr.dcm",
    "dicom_pdf": "_report_pdf.dcm",
}
SERIES_NUMBERS = {"dicom_sc": 9001, "dicom_sr": 9002, "dicom_pdf": 9003}
SERIES_TITLES = {"dicom_sc": "AI heatmap", "dicom_sr": "AI findings", "dicom_pdf": "AI report"}
MANUFACTURER = "CXR Engine"
PRIVATE_SCHEME = "99CXRENG"
DEMO_STATUS = "DEMO MODEL - NOT FOR DIAGNOSTIC USE"
DEFAULT_STATUS = "NOT FOR DIAGNOSTIC USE"

_UID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_OID, "cxr-engine dicom outputs")
_SCT_FINDINGS = {
    "Cardiomegaly": codes.SCT.Cardiomegaly,
    "Pleural Effusion": codes.SCT.PleuralEffusion,
    "Pneumothorax": codes.SCT.Pneumothorax,
    "Fibrosis": codes.SCT.Fibrosis,
}
PROCEDURE = hd.sr.CodedConcept("CXR-AI", PRIVATE_SCHEME, "Chest radiograph AI analysis")


class DicomOutputError(ValueError):
    """The source's header cannot anchor DICOM outputs (no study or SOP Instance UID)."""


def dicom_output_names(patient_folder: str) -> dict[str, str]:
    """Output kind -> file name: ``{"dicom_sc": "<p>_sc.dcm", ...}``."""
    return {kind: patient_folder + suffix for kind, suffix in DICOM_SUFFIXES.items()}


def finding_code(label: str) -> hd.sr.CodedConcept:
    code = _SCT_FINDINGS.get(label)
    if code is not None:
        return hd.sr.CodedConcept(code.value, code.scheme_designator, code.meaning)
    index = LABELS.index(label)
    return hd.sr.CodedConcept(f"CXR-F{index + 1:02d}", PRIVATE_SCHEME, label)


def label_of_code(code: Any) -> str:
    """The API label for a finding code written by :func:`finding_code`."""
    for label in LABELS:
        expected = finding_code(label)
        if code.value == expected.value and code.scheme_designator == expected.scheme_designator:
            return label
    raise KeyError(f"not a finding code of this engine: {code.value} ({code.scheme_designator})")


def clinical_status(model: Mapping[str, Any]) -> str:
    """The words that end every series description, from the model's identity."""
    if model.get("demo"):
        return DEMO_STATUS
    status = str(model.get("clinical_status") or "").strip()
    return status.upper() if status else DEFAULT_STATUS


def series_description(kind: str, model: Mapping[str, Any]) -> str:
    return f"{SERIES_TITLES[kind]} - {clinical_status(model)}"[:64]  # LO: 64 characters at most


def derived_uid(*sources: str) -> str:
    """A ``2.25.`` UID, the same for the same sources: the integer of a name-based (SHA-1,
    version 5) UUID of the sources, the UUID-derived form of ISO/IEC 9834-8 that DICOM
    PS3.5 B.2 allows. (pydicom's ``generate_uid(prefix=None, entropy_srcs=...)`` ignores the
    sources and returns a random UUID's UID; with a prefix it would need a registered root.)"""
    return f"2.25.{uuid.uuid5(_UID_NAMESPACE, '|'.join(sources)).int}"


def output_uids(source: Dataset, weights_sha256: str, kind: str) -> tuple[str, str]:
    """(SeriesInstanceUID, SOPInstanceUID) of output ``kind`` for ``source``."""
    study, sop = _anchor_uids(source)
    return derived_uid("series", study, weights_sha256, kind), derived_uid("instance", sop, weights_sha256, kind)


def device_uid(weights_sha256: str) -> str:
    return derived_uid("device", weights_sha256)


def build_dicom_outputs(
    source: Dataset,
    *,
    overlay_bgr: np.ndarray,
    report_pdf: bytes,
    document: Mapping[str, Any],
) -> dict[str, Dataset]:
    """The three objects for one image (module docstring). Raises :class:`DicomOutputError`
    when the source lacks the UIDs that link them, ``ValueError`` from highdicom for a
    header it refuses."""
    model = document["model"]
    sha = str(model["weights_sha256"])
    _anchor_uids(source)
    source = _with_type2_defaults(source)
    equipment = [_model_equipment(model)]
    return {
        "dicom_sc": _secondary_capture(source, overlay_bgr, model, sha, equipment),
        "dicom_sr": _structured_report(source, document, model, sha, equipment),
        "dicom_pdf": _encapsulated_pdf(source, report_pdf, document, model, sha, equipment),
    }


def encode_dataset(ds: Dataset) -> bytes:
    """A dataset as a DICOM Part 10 file (preamble, file meta, little endian)."""
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def read_sr_findings(sr: Dataset) -> list[dict[str, Any]]:
    """The findings of an SR written here, read back through highdicom's TID 1500 parser,
    in the predictions JSON's shape: ``[{"name", "presence", "confidence", "assessed"}]``
    (API order). The SR holds the conditions the model assesses only, so this equals the
    JSON's findings with ``assessed`` true (:func:`assessed_findings`)."""
    parsed = hd.sr.Comprehensive3DSR.from_dataset(sr)
    report: Any = parsed.content  # a highdicom MeasurementReport
    found: dict[str, dict[str, Any]] = {}
    for group in report.get_image_measurement_groups():
        label = label_of_code(group.finding_type)
        (evaluation,) = group.get_qualitative_evaluations()
        (measurement,) = group.get_measurements()
        present = evaluation.value.value == codes.SCT.Present.value
        found[label] = {
            "name": label,
            "presence": present,
            "confidence": round(float(measurement.value), 4),
            "assessed": True,
        }
    return [found[label] for label in LABELS if label in found]


def assessed_findings(document: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The document's findings for the conditions the model assesses (a bundle may map its
    labels onto some of the 11 only: the others have no probability to report)."""
    return [f for f in document["findings"] if f.get("assessed", True) and f.get("confidence") is not None]


def source_header(path: str) -> Dataset:
    """The source file's header, without its pixel data."""
    return dcmread(path, stop_before_pixels=True)


def _with_type2_defaults(source: Dataset) -> Dataset:
    """A copy of the header with the patient and study attributes a PACS must receive
    (type 2: present, possibly empty) present; highdicom reads them unconditionally."""
    header = copy.deepcopy(source)
    for keyword in _TYPE2_KEYWORDS:
        if keyword not in header:
            setattr(header, keyword, "")
    return header


def _anchor_uids(source: Dataset) -> tuple[str, str]:
    study, sop = str(source.get("StudyInstanceUID", "") or ""), str(source.get("SOPInstanceUID", "") or "")
    if not study or not sop or not source.get("SOPClassUID"):
        raise DicomOutputError(
            "the source has no StudyInstanceUID (0020,000D), SOPInstanceUID (0008,0018) or SOPClassUID (0008,0016): "
            "DICOM outputs could not join its study"
        )
    return study, sop


def _model_equipment(model: Mapping[str, Any]) -> hd.ContributingEquipment:
    item = hd.ContributingEquipment(
        manufacturer=MANUFACTURER,
        purpose_of_reference=codes.DCM.ProcessingEquipment,
        manufacturer_model_name=str(model.get("name") or "unknown")[:64],
        software_versions=str(model.get("version") or "unknown")[:64],
        contribution_description=clinical_status(model)[:64],
    )
    item.DeviceUID = device_uid(str(model["weights_sha256"]))
    return item


def _source_reference(source: Dataset) -> Dataset:
    ref = Dataset()
    ref.ReferencedSOPClassUID = source.SOPClassUID
    ref.ReferencedSOPInstanceUID = source.SOPInstanceUID
    return ref


def _instance_number(source: Dataset) -> int:
    try:
        value = int(source.get("InstanceNumber") or 1)
    except (TypeError, ValueError):
        return 1
    return value if 0 < value < 2**31 else 1


def _secondary_capture(
    source: Dataset, overlay_bgr: np.ndarray, model: Mapping[str, Any], sha: str, equipment: list[Any]
) -> Dataset:
    rgb = np.ascontiguousarray(overlay_bgr[..., ::-1])
    rows, cols = int(source.get("Rows") or rgb.shape[0]), int(source.get("Columns") or rgb.shape[1])
    if rgb.shape[:2] != (rows, cols):
        rgb = np.asarray(cv2.resize(rgb, (cols, rows), interpolation=cv2.INTER_LINEAR), dtype=np.uint8)
    series_uid, sop_uid = output_uids(source, sha, "dicom_sc")
    orientation = _orientation(source)
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source,
        pixel_array=rgb,
        photometric_interpretation="YBR_FULL_422",
        bits_allocated=8,
        coordinate_system="PATIENT",
        patient_orientation=orientation or ("L", "F"),
        series_instance_uid=series_uid,
        series_number=SERIES_NUMBERS["dicom_sc"],
        sop_instance_uid=sop_uid,
        instance_number=_instance_number(source),
        manufacturer=MANUFACTURER,
        transfer_syntax_uid=JPEGBaseline8Bit,
        contributing_equipment=equipment,
        series_description=series_description("dicom_sc", model),
    )
    sc["Laterality"] = DataElement(0x00200060, "CS", source.get("Laterality") or None)  # 2C: empty, unpaired
    if orientation is None:  # type 2C: empty says "unknown", never a guessed ("L", "F")
        sc["PatientOrientation"] = DataElement(0x00200020, "CS", None)
    sc.SourceImageSequence = DicomSequence([_source_reference(source)])
    sc.LossyImageCompression = "01"  # JPEG baseline: said in the header, as PS3.3 C.7.6.1.1.5 asks
    sc.LossyImageCompressionMethod = "ISO_10918_1"
    sc.BurnedInAnnotation = "NO"  # the caption names a finding and a score, nothing identifying
    sc.DerivationDescription = f"{model.get('name')} {model.get('version')}: Grad-CAM heatmap over the source image"[
        :1024
    ]
    return sc


def _orientation(source: Dataset) -> tuple[str, str] | None:
    """The source's PatientOrientation (the SC shows the same pixels, so the same axes), if usable."""
    value = source.get("PatientOrientation")
    if value is None or isinstance(value, str) or len(value) != 2:
        return None
    row, col = str(value[0]), str(value[1])
    valid = set("LRAPHF")
    return (row, col) if row and col and set(row) <= valid and set(col) <= valid else None


def _structured_report(
    source: Dataset, document: Mapping[str, Any], model: Mapping[str, Any], sha: str, equipment: list[Any]
) -> Dataset:
    series_uid, sop_uid = output_uids(source, sha, "dicom_sr")
    dev_uid = device_uid(sha)
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=dev_uid,
            name=str(model.get("name") or "model")[:64],
            manufacturer_name=MANUFACTURER,
            model_name=str(model.get("version") or "")[:64] or None,
        ),
    )
    context = hd.sr.ObservationContext(observer_device_context=observer)
    image = [hd.sr.SourceImageForMeasurementGroup.from_source_image(source)]
    groups = []
    for finding in assessed_findings(document):
        label = str(finding["name"])
        code = finding_code(label)
        groups.append(
            hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(
                    uid=derived_uid("tracking", str(source.SOPInstanceUID), sha, label), identifier=label[:64]
                ),
                finding_type=code,
                source_images=image,
                measurements=[
                    hd.sr.Measurement(
                        name=codes.DCM.Probability, value=float(finding["confidence"]), unit=codes.UCUM.NoUnits
                    )
                ],
                qualitative_evaluations=[
                    hd.sr.QualitativeEvaluation(
                        name=code, value=codes.SCT.Present if finding["presence"] else codes.SCT.Absent
                    )
                ],
            )
        )
    report = hd.sr.MeasurementReport(
        observation_context=context, procedure_reported=PROCEDURE, imaging_measurements=groups
    )
    sr = hd.sr.Comprehensive3DSR(
        evidence=[source],
        content=report,
        series_instance_uid=series_uid,
        series_number=SERIES_NUMBERS["dicom_sr"],
        sop_instance_uid=sop_uid,
        instance_number=_instance_number(source),
        manufacturer=MANUFACTURER,
        is_complete=True,
        is_final=True,
        is_verified=False,
        contributing_equipment=equipment,
        series_description=series_description("dicom_sr", model),
    )
    _copy_character_set(source, sr)
    return sr


def _encapsulated_pdf(
    source: Dataset,
    pdf: bytes,
    document: Mapping[str, Any],
    model: Mapping[str, Any],
    sha: str,
    equipment: list[Any],
) -> Dataset:
    """Encapsulated PDF IOD, by hand (highdicom has no class for it; MONAI does the same)."""
    series_uid, sop_uid = output_uids(source, sha, "dicom_pdf")
    ds = Dataset()
    for keyword in _PATIENT_STUDY_KEYWORDS:
        if keyword in source:
            ds[keyword] = source[keyword]
    ds.StudyInstanceUID = source.StudyInstanceUID
    ds.SOPClassUID = EncapsulatedPDFStorage
    ds.SOPInstanceUID = sop_uid
    ds.Modality = "DOC"
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = SERIES_NUMBERS["dicom_pdf"]
    ds.SeriesDescription = series_description("dicom_pdf", model)
    ds.Manufacturer = MANUFACTURER
    ds.ConversionType = "SYN"  # synthetic: made by software, not scanned
    ds.InstanceNumber = _instance_number(source)
    now = dt.datetime.now(dt.timezone.utc)
    ds.ContentDate, ds.ContentTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    ds.AcquisitionDateTime = now.strftime("%Y%m%d%H%M%S")
    ds.InstanceCreationDate, ds.InstanceCreationTime = ds.ContentDate, ds.ContentTime
    ds.BurnedInAnnotation = "YES"  # the report prints the patient's name and id
    ds.DocumentTitle = f"AI report: {document.get('result', '')} - {clinical_status(model)}"[:64]
    ds.ConceptNameCodeSequence = DicomSequence([])
    ds.VerificationFlag = "UNVERIFIED"
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    ds.EncapsulatedDocument = pdf if len(pdf) % 2 == 0 else pdf + b"\x00"
    ds.EncapsulatedDocumentLength = len(pdf)
    ds.SourceInstanceSequence = DicomSequence([_source_reference(source)])
    ds.ContributingEquipmentSequence = DicomSequence(equipment)
    _copy_character_set(source, ds)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta = meta
    return ds


def _copy_character_set(source: Dataset, target: Dataset) -> None:
    """The source's character set, so that copied names decode as they did in the source."""
    charset = source.get("SpecificCharacterSet")
    if charset:
        target.SpecificCharacterSet = charset
    elif "SpecificCharacterSet" in target:
        del target.SpecificCharacterSet


_TYPE2_KEYWORDS = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
)
_PATIENT_STUDY_KEYWORDS: Sequence[str] = (
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "PatientBirthDate",
    "PatientSex",
    "PatientAge",
    "OtherPatientIDsSequence",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
    "StudyDescription",
)

"""Data carried between stages: what a DICOM file became, and who it belongs to."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class PatientInfo:
    """Identity and demographics, every value a string ("" when the tag is absent).

    ``patient_id`` is the effective id: the request's override when one was given,
    else (0010,0020). It is *not* sanitised here; folder names come from
    ``reports.naming.sanitize_patient_id``.
    """

    patient_id: str
    patient_name: str = ""
    sop_instance_uid: str = ""
    study_instance_uid: str = ""
    series_instance_uid: str = ""
    age: str = ""
    sex: str = ""
    modality: str = ""
    view_position: str = ""
    body_part: str = ""
    study_date: str = ""
    acquisition_datetime: str = ""

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


@dataclass
class DicomImage:
    """A decoded radiograph ready for the model and the renderers.

    ``pixels``: float32, shape (rows, cols), values in [0, 1], *display polarity*
    (air and lungs dark, bone bright) after modality LUT, VOI and polarity.
    ``provenance``: JSON-serialisable record of every pixel decision taken.
    """

    path: str
    pixels: np.ndarray
    patient: PatientInfo
    provenance: dict[str, Any] = field(default_factory=dict)

"""The 11 findings of the API contract, in its order and spelling (``docs/API.md``)."""

from __future__ import annotations

LABELS: tuple[str, ...] = (
    "Tuberculosis",
    "Cardiomegaly",
    "Pleural Thickening",
    "Pleural Effusion",
    "Pneumothorax",
    "Consolidation",
    "Atelectasis",
    "Nodule/Mass",
    "Fibrosis",
    "Infiltration",
    "Calcification",
)

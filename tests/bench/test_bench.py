"""bench/: the benchmark's code on a tiny corpus (no timings asserted, only that it measures)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pydicom
import pytest

from bench.__main__ import ratios
from bench.service import percentile, write_tiny_corpus
from bench.stages import FLOOR_STAGES, REFERENCE_STAGES, floor
from demo.phantom_dicom import write_phantoms
from inference.predict import Predictor, configure_tensorflow


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    configure_tensorflow()
    return Predictor()


def test_floor_times_every_stage_on_both_kinds_of_file(predictor: Predictor, tmp_path: Path) -> None:
    write_phantoms(tmp_path / "in", 2, seed=3, size=96)  # index 0 uncompressed, 1 JPEG 2000
    result = floor(sorted((tmp_path / "in").glob("*.dcm")), predictor, tmp_path / "out")
    assert result["files"] == 2 and result["uncompressed"]["files"] == 1 and result["compressed"]["files"] == 1
    means = result["mean_ms"]
    assert set(means) == {*FLOOR_STAGES, *REFERENCE_STAGES, "floor", "floor_cpu"}
    assert means["floor_cpu"] > 0
    assert all(means[s] > 0 for s in FLOOR_STAGES)
    assert means["floor"] == pytest.approx(sum(means[s] for s in FLOOR_STAGES), abs=0.1 * len(FLOOR_STAGES))
    assert result["files_per_s"] == pytest.approx(1000.0 / means["floor"], rel=1e-2)
    # publishing was measured for real: each file's four artifacts are on disk
    assert len(list((tmp_path / "out" / "floor").glob("*/*_report.pdf"))) == 2


def test_tiny_corpus_files_are_valid_dicom_with_their_own_patients(tmp_path: Path) -> None:
    write_tiny_corpus(tmp_path, 3, 32)
    datasets = [pydicom.dcmread(p) for p in sorted(tmp_path.glob("*.dcm"))]
    assert [ds.PatientID for ds in datasets] == ["BIG000000", "BIG000001", "BIG000002"]
    assert len({ds.SOPInstanceUID for ds in datasets}) == 3
    assert all(ds.pixel_array.shape == (32, 32) for ds in datasets)


def test_ratios_compare_each_figure_with_its_target() -> None:
    results: dict[str, Any] = {
        "floor_demo": {"files_per_s": 2.0},
        "in_process_demo": {"files_per_s": 1.8},
        "service_demo_c1": {"files_per_s": 1.71},
        "service_demo_c2": {"files_per_s": 2.5},
        "single_service_demo": {"p50_ms": 560.0, "p95_ms": 600.0, "overhead_p50_ms": 60.0, "overhead_p95_ms": 90.0},
        "big_job": {"api_rss_peak_mib": 120.0, "redis_growth_after_expiry_mib": 0.2, "callback_s": 3.5},
    }
    figures, targets = ratios(results)
    assert figures["in_process_vs_floor"] == 0.9 and figures["service_c1_vs_in_process"] == 0.95
    assert figures["single_overhead_p50_ms"] == 60.0
    met = {t["name"]: t["met"] for t in targets}
    assert met["service_c2_vs_c1"] is False  # 1.46 < 1.7
    assert met["in_process_vs_floor"] and met["single_overhead_p50_ms"] and met["big_job_callback_s"]
    assert met["in_process_vs_floor_densenet121"] is None  # not measured


def test_percentile_interpolates() -> None:
    assert percentile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.5
    assert percentile([5.0], 0.95) == 5.0

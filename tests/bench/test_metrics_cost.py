"""bench/metrics_cost.py on a tiny corpus: it measures both sides of each comparison (no
timing asserted: only that the figures exist and the hooks really counted)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prometheus_client import REGISTRY

from bench.metrics_cost import file_cost, request_cost, without_request_metrics
from demo.phantom_dicom import write_phantoms
from tests.support.service import redis_db_url


def test_file_cost_times_files_and_hooks(predictor: Any, tmp_path: Path) -> None:
    write_phantoms(tmp_path / "in", 2, seed=5, size=96)
    before = REGISTRY.get_sample_value("cxr_files_processed_total", {"kind": "bulk"}) or 0.0
    result = file_cost(sorted((tmp_path / "in").glob("*.dcm")), predictor, tmp_path / "out")
    assert result["files"] == 2 and result["stages_per_file"] >= 8  # files were processed, not skipped
    assert result["mean_file_ms"] > 0 and result["hook_us_per_file"] > 0 and 0 < result["ratio"] < 1
    after = REGISTRY.get_sample_value("cxr_files_processed_total", {"kind": "bulk"}) or 0.0
    assert after - before >= 2 * 200  # the hook loop did count


def test_request_cost_compares_an_app_with_and_without_the_hooks(tmp_path: Path) -> None:
    result = request_cost(redis_db_url("idle"), tmp_path, requests=3, rounds=2)
    assert set(result) == {"GET /ping", "GET /jobs/<id>"}
    for figures in result.values():
        assert figures["us_with"] > 0 and figures["us_without"] > 0 and figures["hook_us"] > 0


def test_the_control_app_has_no_request_metrics(app: Any) -> None:
    from api import create_app

    control = without_request_metrics(create_app(dict(app.config)))
    names = [getattr(f, "__name__", "") for f in control.before_request_funcs[None] + control.after_request_funcs[None]]
    assert "_start_clock" not in names and "_count" not in names
    assert "_start_clock" in [getattr(f, "__name__", "") for f in app.before_request_funcs[None]]

"""engine.settings: the worker reads CXR_DATA_ROOTS itself, as the API does (issue 15 item 2)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from engine.settings import WorkerSettings


def test_data_roots_are_read_and_resolved(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "alias").symlink_to(tmp_path / "real")
    settings = WorkerSettings.from_env({"CXR_DATA_ROOTS": f"{tmp_path / 'alias'}{os.pathsep}/data"})
    assert settings.data_roots == ((tmp_path / "real").resolve(), Path("/data"))


def test_unset_roots_are_the_current_directory_in_development(caplog: pytest.LogCaptureFixture) -> None:
    assert WorkerSettings.from_env({}).data_roots == (Path(os.path.realpath(os.getcwd())),)
    assert "CXR_DATA_ROOTS is not set" in caplog.text


def test_unset_roots_stop_a_production_worker() -> None:
    with pytest.raises(ValueError, match="CXR_DATA_ROOTS is not set; a worker refuses to start in production"):
        WorkerSettings.from_env({"CXR_ENV": "production"})
    assert WorkerSettings.from_env({"CXR_ENV": "production", "CXR_DATA_ROOTS": "/data"}).data_roots == (Path("/data"),)

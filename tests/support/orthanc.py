"""A real Orthanc (Debian package ``orthanc``) for the PACS tests: own config, free ports.

Never the system service: a private process with a config written here, its database in
a temporary folder, stopped after. Orthanc 1.10 cannot bind to one address, so access is
closed instead: its REST API answers only local clients (``RemoteAccessAllowed: false``)
and its DICOM server accepts echo and store only from the registered modality (the
engine, AE and host checked). A missing Orthanc fails the test, it is never skipped:
``make test`` installs it (``.ci/system-deps``).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import requests

from cxr.stack import free_port

ORTHANC_BINARIES = ("Orthanc", "/usr/sbin/Orthanc")
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")  # Debian orthanc-dicomweb


def orthanc_binary() -> str:
    for name in ORTHANC_BINARIES:
        found = shutil.which(name)
        if found:
            return found
    raise AssertionError(
        "Orthanc is not installed (Debian package 'orthanc', binary /usr/sbin/Orthanc): "
        "run `apt-get install -y orthanc` (make test does it: .ci/system-deps); the PACS tests need a real PACS"
    )


def dicomweb_plugin() -> Path:
    if not DICOMWEB_PLUGIN.is_file():
        raise AssertionError(
            f"Orthanc's DICOMweb plugin is not installed ({DICOMWEB_PLUGIN}): "
            "run `apt-get install -y orthanc-dicomweb` (make test does it: .ci/system-deps)"
        )
    return DICOMWEB_PLUGIN


class Orthanc:
    """One Orthanc process; ``start`` and ``stop`` may be called again (same ports and database)."""

    def __init__(
        self, folder: Path, modalities: dict[str, list[Any]], aet: str = "ORTHANC", *, dicomweb: bool = False
    ) -> None:
        self.binary = orthanc_binary()
        self.folder = folder
        self.aet = aet
        self.http_port, self.dicom_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.dicomweb_url = f"{self.url}/dicom-web"
        self.config = folder / "orthanc.json"
        self.log = folder / "orthanc.log"
        config = {
            "Name": "cxr-engine-test",
            "StorageDirectory": str(folder / "db"),
            "IndexDirectory": str(folder / "db"),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": aet,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomAlwaysAllowEcho": False,
            "DicomAlwaysAllowStore": False,
            "DicomCheckModalityHost": True,
            "DicomModalities": modalities,
            "Plugins": [str(dicomweb_plugin())] if dicomweb else [],
            "DicomWeb": {"Enable": dicomweb, "Root": "/dicom-web/"},
            "StableAge": 60,  # the engine decides on its own quiet period; Orthanc routes nothing itself
            "OverwriteInstances": False,
        }
        folder.mkdir(parents=True, exist_ok=True)
        self.config.write_text(json.dumps(config, indent=2), encoding="utf-8")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> None:
        handle = self.log.open("ab")
        self.proc = subprocess.Popen([self.binary, str(self.config)], stdout=handle, stderr=subprocess.STDOUT)
        handle.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"Orthanc exited at start: {self.log.read_text(errors='replace')[-2000:]}")
            try:
                if requests.get(f"{self.url}/system", timeout=1).ok:
                    return
            except requests.RequestException:
                time.sleep(0.2)
        raise AssertionError(f"Orthanc did not answer in {timeout} s: {self.log.read_text(errors='replace')[-2000:]}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    # --- REST helpers ---

    def upload(self, path: Path) -> dict[str, Any]:
        response = requests.post(f"{self.url}/instances", data=path.read_bytes(), timeout=30)
        response.raise_for_status()
        return dict(response.json())

    def get(self, route: str, **params: Any) -> Any:
        response = requests.get(f"{self.url}{route}", params=params, timeout=30)
        response.raise_for_status()
        return response.json() if "json" in response.headers.get("content-type", "") else response.content

    def post(self, route: str, body: Any) -> Any:
        response = requests.post(f"{self.url}{route}", json=body, timeout=120)
        response.raise_for_status()
        return response.json()


@contextmanager
def running_orthanc(folder: Path, modalities: dict[str, list[Any]], *, dicomweb: bool = False) -> Iterator[Orthanc]:
    orthanc = Orthanc(folder, modalities, dicomweb=dicomweb)
    orthanc.start()
    try:
        yield orthanc
    finally:
        orthanc.stop()

"""reports/ stays a plain library: no web, queue or model framework behind it."""

from __future__ import annotations

import subprocess
import sys


def test_reports_does_not_import_frameworks() -> None:
    code = (
        "import sys, reports.naming, reports.images, reports.predictions, reports.pdf, "
        "reports.publish; "
        "print(sorted(m for m in ('tensorflow', 'flask', 'celery', 'keras') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"

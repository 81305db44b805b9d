"""The package's surface and import boundary."""

from __future__ import annotations

import subprocess
import sys

from clreg import monitor


def test_public_api_is_complete() -> None:
    assert all(hasattr(monitor, name) for name in monitor.__all__)
    expected = {
        "check_drift", "save_snapshot", "fit_reference", "batch_features", "image_statistics",
        "Reference", "DriftConfig", "FeatureConfig", "DriftFindings", "ColumnTest",
        "MonitorError", "DriftCheckFailed", "InvalidInput", "InvalidReference",
    }
    assert expected <= set(monitor.__all__)
    leaves = ("DriftCheckFailed", "InvalidInput", "InvalidReference")
    assert all(issubclass(getattr(monitor, e), monitor.MonitorError) for e in leaves)


def test_monitor_imports_neither_torch_nor_other_packages() -> None:
    # its findings are its own; the daemon stores them as a registry record
    code = (
        "import sys, clreg.monitor; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] == 'torch' "
        "or m.startswith('clreg.') and m.split('.')[1] != 'monitor'); "
        "print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"

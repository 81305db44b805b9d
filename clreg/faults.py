"""Failpoints: named places in the pipeline where a crash test stops the daemon, then kills it from outside.

Armed only by settings (`CLREG_FAULTS__PAUSE_AT='["after_register"]'`, `CLREG_FAULTS__SIGNAL_DIR=...`):
on reaching an armed point the process writes `<signal_dir>/<point>` (its pid) and waits for the SIGKILL
the test sends. Unarmed, `reach()` is one set lookup.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from pydantic import BaseModel, ConfigDict

POINTS = ("after_receive", "during_drift", "during_training", "after_register", "after_gate",
          "after_promotion")  # an update that passes its gate
REJECT_POINTS = ("after_reject", "after_retrying")  # one rejected for forgetting, and its retry
SHADOW_POINTS = ("during_shadow_begin", "during_shadow_judge")  # one mirrored on live traffic first
KNOWN = POINTS + REJECT_POINTS + SHADOW_POINTS


class FaultConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    pause_at: frozenset[str] = frozenset()
    signal_dir: Path | None = None


_armed: FaultConfig = FaultConfig()


def arm(cfg: FaultConfig) -> None:
    unknown = set(cfg.pause_at) - set(KNOWN)
    if unknown:
        raise ValueError(f"unknown failpoints {sorted(unknown)}; known: {', '.join(KNOWN)}")
    global _armed
    _armed = cfg


def reach(point: str) -> None:
    """Pause here forever if `point` is armed (after telling the test where we are)."""
    if point not in _armed.pause_at:
        return
    if _armed.signal_dir is not None:
        _armed.signal_dir.mkdir(parents=True, exist_ok=True)
        (_armed.signal_dir / point).write_text(str(os.getpid()))
    threading.Event().wait()

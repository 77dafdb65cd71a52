"""Whether Ray runs in this process, asked without importing it.

The local runner never starts Ray, and importing ray only to learn that costs about a second of
CPU (and ray's exit handlers at the end of the process). A Ray worker, and a driver that
started or joined Ray, has imported ray already, so sys.modules answers exactly."""

from __future__ import annotations

import sys
from typing import Any


def running_ray() -> Any:
    """The ray module when Ray is initialized in this process, else None."""
    ray = sys.modules.get("ray")
    try:
        return ray if ray is not None and ray.is_initialized() else None
    except Exception:  # a partly imported or stubbed module: no Ray here
        return None

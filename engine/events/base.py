"""The base every event derives from."""

from __future__ import annotations

import time

from pydantic import BaseModel, ConfigDict, Field


class _Event(BaseModel):
    model_config = ConfigDict(frozen=True, use_attribute_docstrings=True)

    ts: float = Field(default_factory=time.time)
    """Wall-clock time the event was created (seconds since the epoch)."""

"""A one-replica deployment holding the runtime version pin set through the admin API.

Router replicas are autoscaled, so a pin set through one of them must be
visible to all: each router reads it here on every watcher tick. The pin is
deliberately ephemeral (lost if this replica restarts, then the service falls
back to ``user_config``'s pin or the index's ``CURRENT`` pointer); the durable
ways to pin or roll back are ``user_config`` (``serve deploy``) and moving the
index's ``CURRENT`` pointer (``IndexStore.set_current``).
"""

from __future__ import annotations

import time
from typing import Optional

__all__ = ["VersionControl"]


class VersionControl:
    def __init__(self) -> None:
        self.pin: Optional[str] = None
        self.seq = 0
        self.changed_at: Optional[float] = None

    def get(self) -> dict:
        return {"pin": self.pin, "seq": self.seq, "changed_at": self.changed_at}

    def set(self, pin: Optional[str]) -> dict:
        self.pin = pin
        self.seq += 1
        self.changed_at = time.time()
        return self.get()

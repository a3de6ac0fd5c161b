"""What a running farm collection has left: a small named Ray actor that the head's dispatcher
updates and `latbench farm status` reads. It lives as long as the collecting process."""

from __future__ import annotations

import os
import socket
import uuid

#: every collection's queue actor is named with this prefix (in the farm's namespace)
PREFIX = "collect/"


def queue_name(device: str) -> str:
    """Unique per collection: a finished one's name may linger a moment after its actor is killed."""
    return f"{PREFIX}{device}/{socket.gethostname()}/{os.getpid()}/{uuid.uuid4().hex[:8]}"


class CollectionQueue:
    """Holds the latest snapshot of one collection: device, batches queued, units measuring."""

    def __init__(self, snapshot: dict):
        self.state = dict(snapshot)

    def update(self, snapshot: dict) -> None:
        self.state.update(snapshot)

    def snapshot(self) -> dict:
        return dict(self.state)

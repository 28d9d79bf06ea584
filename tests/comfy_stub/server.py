"""Stub of ComfyUI's top-level server.py: only what the pack's live view uses.

Mirrors: ``PromptServer(loop)`` sets the class attribute ``PromptServer.instance`` (absent before
the first server is made, as in ComfyUI), ``client_id`` (the id of the client whose prompt runs,
None when none), ``send_sync(event, data, sid=None)``.

Stub-only: ``send_sync`` records ``(event, data, sid)`` in ``events`` (a deep copy of ``data``, which
must be JSON); ``PromptServer.uninstall()`` removes ``instance`` again.
"""
from __future__ import annotations

import json


class PromptServer:
    def __init__(self, loop=None):
        PromptServer.instance = self
        self.loop = loop
        self.client_id = None
        self.last_node_id = None
        self.events: list[tuple] = []

    def send_sync(self, event, data, sid=None):
        self.events.append((event, json.loads(json.dumps(data)), sid))

    @classmethod
    def uninstall(cls) -> None:
        if "instance" in cls.__dict__:
            del cls.instance

"""Progress bars (also the interrupt check), live previews and status text on a running node."""
from __future__ import annotations

import logging

log = logging.getLogger("progrpo")


class Progress:
    """ComfyUI's progress bar for one node (also the interrupt check); no-op without a server."""

    def __init__(self, total: int, node_id: str | None = None):
        import comfy.utils

        self.node_id = node_id
        self.bar = comfy.utils.ProgressBar(max(1, int(total)), node_id=node_id)

    def update(self, value: int, total: int | None = None, preview=None, max_px: int = 512) -> None:
        self.bar.update_absolute(value, total, preview=("JPEG", preview, max_px) if preview is not None else None)

    def text(self, message: str) -> None:
        show_text(self.node_id, message)


def show_text(node_id: str | None, message: str) -> None:
    """Text shown on a running node in the UI (``send_progress_text``; the frontend displays it
    under the node). A no-op without a server or node id, and never an error."""
    if node_id is None:
        return
    try:
        from server import PromptServer

        server = getattr(PromptServer, "instance", None)
        if server is not None and hasattr(server, "send_progress_text"):
            server.send_progress_text(message, node_id)
    except Exception as e:  # a status line must never break a node
        log.debug("ProGRPO: no progress text (%s)", e)


def is_interrupt(exc: BaseException) -> bool:
    try:
        import comfy.model_management

        return isinstance(exc, comfy.model_management.InterruptProcessingException)
    except ImportError:
        return False

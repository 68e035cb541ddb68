"""What running a checkpoint can fail with, per item: the engine returns it, the img2img path
passes it on, and the daemon turns it into a quarantine reason."""

from __future__ import annotations

from core.reasons import Reason


class InferenceError(Exception):
    """One item could not be run through the model; the rest of its batch is unaffected."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message

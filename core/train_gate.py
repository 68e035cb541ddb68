"""Moved to :mod:`core.training.gate`; this name stays for the callers that import it."""

from core.training.gate import EXIT_NOT_PROMOTED, GateResult, promotion_gate

__all__ = ["EXIT_NOT_PROMOTED", "GateResult", "promotion_gate"]

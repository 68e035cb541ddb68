"""Precision names, importable without torch (the CLI's choices, the settings' validation).

Six stages in order: enc1, enc2, enc3, dec1, dec2 and the output layer. "-mixed" runs only
the inner, widest stages (enc2, enc3, dec1) reduced; the ones next to the image stay fp32.
"""

from __future__ import annotations

PRECISIONS = ("fp32", "bf16", "fp16", "bf16-mixed", "fp16-mixed")
STAGES = 6
MIXED_REDUCED_STAGES = (False, True, True, True, False, False)

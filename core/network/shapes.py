"""The network's shape rule, importable without torch (settings validate against it).

Three 2x poolings in the post's network (core.network.model): the height and width it is fed must be
multiples of :data:`SIZE_MULTIPLE`.
"""

from __future__ import annotations

SIZE_MULTIPLE = 8
# An output size setting's value for "the input's own size" (each side rounded down to a
# multiple of SIZE_MULTIPLE); otherwise a size is the output's longer side in pixels.
INPUT_SIZE = "input"
MAX_SIZE = 8192


def check_size(value: int) -> int:
    """A size setting's validator: a positive multiple of :data:`SIZE_MULTIPLE`."""
    if value <= 0 or value % SIZE_MULTIPLE:
        raise ValueError(f"must be a positive multiple of {SIZE_MULTIPLE}")
    return value


def check_output_size(value: int | str) -> int | str:
    """An output size setting: :data:`INPUT_SIZE`, or a multiple of 8 up to MAX_SIZE."""
    if value == INPUT_SIZE:
        return value
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"must be {INPUT_SIZE!r} or a positive multiple of {SIZE_MULTIPLE}")
    if value > MAX_SIZE:
        raise ValueError(f"must be at most {MAX_SIZE}")
    return check_size(value)

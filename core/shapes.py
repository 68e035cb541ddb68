"""The network's shape rule, importable without torch (settings validate against it).

Three 2x poolings in the seed's network (core.model): the height and width it is fed must be
multiples of :data:`SIZE_MULTIPLE`.
"""

from __future__ import annotations

SIZE_MULTIPLE = 8


def check_size(value: int) -> int:
    """A size setting's validator: a positive multiple of :data:`SIZE_MULTIPLE`."""
    if value <= 0 or value % SIZE_MULTIPLE:
        raise ValueError(f"must be a positive multiple of {SIZE_MULTIPLE}")
    return value

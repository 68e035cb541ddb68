"""Training objectives as objects: what a run trains the network to do, and how it is served.

``base`` holds the :class:`Objective` interface and the registry (:func:`register`,
:func:`get`, :func:`names`); each objective is one module (``reconstruct``, ``denoise``,
``style``, ``guided``) and one line below. This package sits above what it uses (the network, the
samplers, the trainer's parts, checkpoints) and below what asks it (the engine, the trainer's
command line, the gate, ``artd generate``); nothing it imports imports it back
(tests/test_import_graph.py). docs/training.md says which objective suits which collection.
"""

from __future__ import annotations

from core.checkpoint import CheckpointMeta
from core.objectives.base import (
    Objective,
    Steps,
    UnknownObjective,
    get,
    names,
    register,
    unregister,
)
from core.objectives.denoise import Denoise
from core.objectives.guided import Guided
from core.objectives.reconstruct import Reconstruct
from core.objectives.style import Style
from core.runtime.samplers import Sampler
from core.training.figure import Figure

register(Reconstruct())
register(Denoise())
register(Style())
register(Guided())

# The built-in objectives, in registration order.
OBJECTIVES: tuple[str, ...] = names()


def of(meta: CheckpointMeta) -> Objective:
    """The objective a checkpoint was trained for, once it has checked the fields it records
    (ValueError naming the field: an unknown objective, a denoise checkpoint without its
    schedule, a schedule on a one-pass checkpoint)."""
    objective = get(meta.objective)
    objective.validate_meta(meta.to_dict())
    return objective


def sampler_for(meta: CheckpointMeta) -> Sampler:
    """How a checkpoint is served: its objective's sampler (the engine's one question)."""
    return of(meta).sampler(meta)


def figure_for(meta: CheckpointMeta) -> Figure:
    """How a checkpoint's validation figure feeds its network (the gate's question)."""
    return of(meta).figure(meta)


__all__ = [
    "OBJECTIVES",
    "Figure",
    "Objective",
    "Steps",
    "UnknownObjective",
    "figure_for",
    "get",
    "names",
    "of",
    "register",
    "sampler_for",
    "unregister",
]

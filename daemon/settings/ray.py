"""Where the model runs when one machine is not enough (``RaySettings``): a Ray cluster's
address and the pool of model actors on it. Shared by the daemon (``ARTD_RAY_*``, TOML,
flags) and ``artd process --ray``; unset, nothing of Ray is imported (docs/operations.md,
"Beyond one machine: Ray")."""

from __future__ import annotations

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings


class RaySettings(BaseSettings):
    """The Ray cluster and its model actors (all unused while ``ray_address`` is unset)."""

    ray_address: str | None = Field(
        None,
        description="a Ray cluster for the model (HOST:PORT, ray://HOST:PORT, 'auto': the "
        "RAY_ADDRESS variable or the cluster on this host, 'local': a Ray of this process's "
        "own); unset: local model workers",
    )
    ray_actors: int = Field(1, ge=1, le=1024, description="model actors on the cluster")
    ray_gpus_per_actor: float = Field(0.0, ge=0.0, le=64.0, description="GPUs each actor holds")
    ray_cpus_per_actor: float = Field(1.0, ge=0.0, le=256.0, description="CPUs each actor holds")

    @field_validator("ray_address")
    @classmethod
    def _address(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        value = value.strip()
        if value in ("auto", "local") or value.startswith("ray://") or ":" in value:
            return value
        raise ValueError(f"{value!r} is not HOST:PORT, ray://HOST:PORT, 'auto' or 'local'")

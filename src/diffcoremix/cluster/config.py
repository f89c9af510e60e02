"""Options of the executor that runs generation, filtering and judging (kept free of torch and Ray)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from diffcoremix.config import check_types, require

RAY_INSTALL_HINT = "pip install 'diffcoremix[ray]'"


@dataclass(frozen=True)
class ExecutorConfig:
    """Where ``generate``, ``filter``, ``judge`` and ``augment`` run their models."""

    executor: Literal["local", "ray"] = "local"
    """local (this process) or ray (actors on a Ray cluster, writing to OUT on storage every node sees; needs
    ``pip install 'diffcoremix[ray]'``)."""
    address: str | None = None
    """The Ray cluster to join (auto, or ray://HOST:10001); null starts a Ray instance on this machine (or joins the
    one this process already started)."""
    workers: int | None = None
    """Ray actors (each holds one model); null is as many as the cluster's CPUs (or GPUs) can hold."""
    gpus_per_worker: float | None = None
    """GPUs each actor reserves; null is 1 when the cluster has GPUs and the device allows CUDA, else 0."""
    cpus_per_worker: float = 1.0
    """CPUs each actor reserves (also its number of torch threads, at least 1)."""

    def __post_init__(self) -> None:
        check_types(self)
        require(self.executor in ("local", "ray"), "executor", self.executor, "local or ray")
        require(self.workers is None or self.workers >= 1, "workers", self.workers, ">= 1 or null")
        gpus = self.gpus_per_worker
        require(gpus is None or gpus >= 0, "gpus_per_worker", gpus, ">= 0 or null")
        require(self.cpus_per_worker > 0, "cpus_per_worker", self.cpus_per_worker, "> 0")
        require(self.address is None or bool(self.address.strip()), "address", self.address, "a non-empty address")
        if self.executor == "local":
            for name in ("address", "workers", "gpus_per_worker"):
                require(getattr(self, name) is None, name, getattr(self, name), "unset with --executor local")

    @property
    def on_ray(self) -> bool:
        return self.executor == "ray"

"""Entering the chosen executor for the length of a job (kept free of Ray until Ray is asked for)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

from diffcoremix.cluster.config import ExecutorConfig

if TYPE_CHECKING:
    from diffcoremix.cluster.ray_backend import RayCluster


@contextlib.contextmanager
def ray_cluster(executor: ExecutorConfig | None, device: str) -> Iterator[RayCluster | None]:
    """The Ray cluster's actors for the length of a job when ``executor`` asks for Ray, else None (this process).

    The one place that starts (or joins) Ray: ``generate``, ``filter``, ``judge`` and ``augment`` (which keeps the
    actors across its rounds) all enter it.
    """
    if executor is None or not executor.on_ray:
        yield None
        return
    from diffcoremix.cluster.ray_backend import RayCluster

    with RayCluster(executor, device) as cluster:
        yield cluster

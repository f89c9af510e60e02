"""The stages with a choice of executor: ``generate`` and ``filter`` in this process, or on a Ray cluster."""

from __future__ import annotations

from pathlib import Path

from diffcoremix.cluster.config import ExecutorConfig
from diffcoremix.cluster.executor import ray_cluster
from diffcoremix.data.sources import DataConfig
from diffcoremix.embedders.cache import embed_files
from diffcoremix.filter.config import FilterConfig
from diffcoremix.filter.runner import FilterReport, embedder_spec
from diffcoremix.filter.runner import filter_run as local_filter_run
from diffcoremix.generate.config import GenerateConfig
from diffcoremix.generate.runner import GenerationSummary
from diffcoremix.generate.runner import generate as local_generate
from diffcoremix.prompts.builder import PromptsConfig


def generate(
    data: str | Path,
    out: str | Path,
    prompts: PromptsConfig | None = None,
    config: GenerateConfig | None = None,
    executor: ExecutorConfig | None = None,
    *,
    data_config: DataConfig | None = None,
    overwrite: bool = False,
    progress: bool = False,
) -> GenerationSummary:
    """:func:`diffcoremix.generate` on the chosen executor: the same plan, batches, seeds, images and manifest.

    Example:
        >>> from diffcoremix.cluster import ExecutorConfig, generate
        >>> generate("data", "out", config=GenerateConfig(preset="tiny"),
        ...          executor=ExecutorConfig("ray", workers=2))  # doctest: +SKIP
    """
    config = config or GenerateConfig()
    with ray_cluster(executor, config.device) as cluster:
        return local_generate(data, out, prompts, config, data_config=data_config, overwrite=overwrite,
                              runner=cluster.generate if cluster else None, progress=progress)  # fmt: skip


def filter_run(
    out: str | Path,
    config: FilterConfig | None = None,
    executor: ExecutorConfig | None = None,
    *,
    data: str | Path | None = None,
    data_config: DataConfig | None = None,
    progress: bool = False,
) -> FilterReport:
    """:func:`diffcoremix.filter_run` on the chosen executor: on Ray the actors compute the embeddings that are not
    cached (in the batches this process would use), and this process decides, as locally."""
    config = config or FilterConfig()
    with ray_cluster(executor, config.device) as cluster:
        embed = cluster.embedding(embedder_spec(out, config), config.device) if cluster else embed_files
        return local_filter_run(out, config, data=data, data_config=data_config, embed=embed, progress=progress)

"""Where the models run: this process (the default), or actors on a Ray cluster (``--executor ray``).

``ray`` is an optional extra (``pip install 'diffcoremix[ray]'``); this package imports it only when asked to run on
Ray. See :mod:`diffcoremix.cluster.ray_backend` for how work is cut and why the results equal the local ones.
"""

from diffcoremix.cluster.config import RAY_INSTALL_HINT, ExecutorConfig
from diffcoremix.cluster.stages import filter_run, generate

__all__ = ["RAY_INSTALL_HINT", "ExecutorConfig", "filter_run", "generate"]

"""Reaching the Hugging Face hub: whether it can be reached, asked once per process, and what is in its cache.

Without network access, ``huggingface_hub`` retries every request with back-off (30 to 50 s per model, a
dozen log lines) before it looks at its cache. The loaders (:mod:`diffcoremix.generate.backend`,
:mod:`diffcoremix.embedders.models`) ask :func:`hub_offline` first: it is True when ``HF_HUB_OFFLINE`` or
``TRANSFORMERS_OFFLINE`` is set, else when one TCP connection to the hub (``HF_ENDPOINT``, or the proxy that
serves it) does not open within :data:`PROBE_TIMEOUT_S`. Offline, they load from the cache only, and fail at
once when the weights are not there. Local files and folders never need the hub and never trigger the probe.

Only the standard library is imported here at module level; ``huggingface_hub`` is imported where it is used.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import socket
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Iterator

logger = logging.getLogger(__name__)

DEFAULT_ENDPOINT = "https://huggingface.co"
PROBE_TIMEOUT_S = 2.0
"""How long the one connection attempt may take before the hub counts as unreachable."""

_TRUE = {"1", "ON", "YES", "TRUE"}  # huggingface_hub's spelling of a true environment flag


def endpoint() -> str:
    """The hub's base URL: ``HF_ENDPOINT``, else https://huggingface.co."""
    return os.environ.get("HF_ENDPOINT", DEFAULT_ENDPOINT).rstrip("/")


def hub_offline() -> bool:
    """Whether the hub is out of reach for this process (asked once; see :func:`offline_reason`)."""
    return offline_reason() is not None


@functools.cache
def offline_reason() -> str | None:
    """Why the hub is out of reach (``"HF_HUB_OFFLINE is set"``...), or None when it can be reached.

    The answer is computed once per process: the first call may take up to :data:`PROBE_TIMEOUT_S`.
    """
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(name, "").upper() in _TRUE:
            return f"{name} is set"
    url = endpoint()
    host, port, proxy = _probe_address(url)
    error = _connect_error(host, port, PROBE_TIMEOUT_S)
    if error is None:
        return None
    reason = f"the hub {url} cannot be reached{f' through the proxy {host}:{port}' if proxy else ''}: {error}"
    logger.info("%s: loading hub models from the local cache only", reason)
    return reason


def _probe_address(url: str) -> tuple[str, int, bool]:
    """The (host, port) a request to ``url`` first connects to, and whether that is a proxy (``HTTPS_PROXY``...)."""
    parts = urllib.parse.urlsplit(url)
    proxy = urllib.request.getproxies().get(parts.scheme)
    if proxy and not urllib.request.proxy_bypass(parts.hostname or ""):
        parts, through_proxy = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}"), True
    else:
        through_proxy = False
    return parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80), through_proxy


def _connect_error(host: str, port: int, timeout: float) -> str | None:
    """None when a TCP connection to ``host:port`` opens within ``timeout`` seconds, else why not.

    The attempt runs in a daemon thread, so that a name lookup that hangs (it takes no timeout) cannot hold
    the caller longer than ``timeout`` either.
    """
    outcome: list[str | None] = []

    def connect() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            outcome.append(None)
        except OSError as err:
            outcome.append(err.strerror or type(err).__name__)

    thread = threading.Thread(target=connect, name="diffcoremix-hub-probe", daemon=True)
    thread.start()
    thread.join(timeout)
    return outcome[0] if outcome else f"no answer within {timeout:g} s"


def not_a_hub_reason(repo_id: str) -> str | None:
    """Why the endpoint, which a connection reached, is not the hub (a proxy or captive portal answering in its
    place), or None when it answers as the hub does or cannot be asked.

    The hub answers ``/api/models/<repo>`` with JSON, also for a repository that does not exist (a 401 or 404
    with ``{"error": ...}``); a proxy's error or login page is HTML. Called after a hub load failed: the
    libraries' own words ("does not appear to have a file named model_index.json") blame the model instead.
    """
    url = f"{endpoint()}/api/models/{urllib.parse.quote(repo_id)}"
    try:
        with urllib.request.urlopen(url, timeout=PROBE_TIMEOUT_S) as response:
            status, kind, body = response.status, response.headers.get_content_type(), response.read(65536)
    except urllib.error.HTTPError as err:
        status, kind, body = err.code, err.headers.get_content_type(), err.read(65536)
    except (OSError, ValueError):  # unreachable now: the offline message, not this one, is the right one
        return None
    try:
        json.loads(body)
        return None
    except ValueError:
        return (
            f"the hub {endpoint()} answered, but not as a Hugging Face hub (HTTP {status}, {kind}): a proxy or "
            "captive portal answers in its place; set HF_ENDPOINT or HTTPS_PROXY to reach the hub"
        )


@contextlib.contextmanager
def quiet_loading() -> Iterator[None]:
    """diffusers' and transformers' own progress bars ("Loading pipeline components", "Loading weights", "Writing
    model shards") off while loading or saving a model: they would interleave with the command's bar, and ``-q``
    promises none."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    was = diffusers_logging.is_progress_bar_enabled(), transformers_logging.is_progress_bar_enabled()
    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    try:
        yield
    finally:
        if was[0]:
            diffusers_logging.enable_progress_bar()
        if was[1]:
            transformers_logging.enable_progress_bar()  # type: ignore[no-untyped-call]


def cache_dir() -> str:
    """The hub cache folder huggingface_hub uses (``HF_HUB_CACHE``, ``HF_HOME/hub``, ...)."""
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def cached_file(repo_id: str, filenames: Iterable[str], revision: str | None = None) -> str | None:
    """The local path of the first of ``filenames`` found in the hub cache for ``repo_id``, else None."""
    from huggingface_hub import try_to_load_from_cache

    for filename in filenames:
        path = try_to_load_from_cache(repo_id, filename, revision=revision)
        if isinstance(path, str):
            return path
    return None


@contextlib.contextmanager
def cache_only() -> Iterator[None]:
    """Within the block, huggingface_hub serves files from its cache and sends no request.

    This is huggingface_hub's own offline mode (what ``HF_HUB_OFFLINE=1`` sets at import), switched on for the
    block only. ``local_files_only`` is not enough: open_clip's loader does not take it, diffusers'
    ``from_single_file`` downloads missing configs regardless, and building the user agent fetches a registry
    from the hub. The switch is process-wide: other threads loading from the hub meanwhile are offline too.
    """
    from huggingface_hub import constants

    saved = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = saved

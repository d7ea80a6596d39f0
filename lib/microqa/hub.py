"""Reaching the Hugging Face hub, written once for CLIP and the VLMs.

Offline (as on the development machines) a hub lookup would retry for half a minute before
failing; one quick TCP probe decides instead, and lookups then go to the local cache only.
"""

from __future__ import annotations

import contextlib
import functools
import socket
from collections.abc import Iterator
from urllib.parse import urlparse


def hub_host() -> str:
    try:
        from huggingface_hub import constants

        return urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    except ImportError:
        return "huggingface.co"


@functools.lru_cache(maxsize=4)
def unreachable_reason(host: str | None = None, timeout_s: float = 3.0) -> str | None:
    """Why the hub cannot be reached (None when it can): one TCP probe, remembered."""
    host = host or hub_host()
    try:
        with socket.create_connection((host, 443), timeout=timeout_s):
            return None
    except OSError as exc:
        return f"{host} is unreachable ({exc})"


def reachable() -> bool:
    return unreachable_reason() is None


@contextlib.contextmanager
def offline_unless_reachable() -> Iterator[None]:
    """Hub lookups inside go to the local cache only when the hub cannot be reached."""
    from huggingface_hub import constants

    previous = constants.HF_HUB_OFFLINE
    if not previous and not reachable():
        constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = previous

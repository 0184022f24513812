"""What the spawn page says of each image a user may choose: the versions inside it (from the
``org.labgpu.version.*`` labels scripts/build-images.sh writes), or that it is not on this
server. One ``docker inspect`` per image, remembered for a short while: images are built or
removed while the hub runs, and the spawn page must not wait on Docker for every visit."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from docker.errors import APIError, NotFound

from labgpu.labels import image_versions_text

# Seconds a Docker answer about an image is reused.
CACHE_SECONDS = 30.0
_cache: dict[str, tuple[float, str | None]] = {}

Inspect = Callable[[str], Awaitable[dict[str, Any]]]


async def image_versions(inspect: Inspect, images: Iterable[tuple[str, str]]) -> dict[str, str | None]:
    """``images``: (choice name, Docker reference) pairs. Returns, per choice name, the versions
    text of the image, or None when this Docker engine has no such image. An image Docker could
    not be asked about (an engine error) is left out: the form offers it as before."""
    found: dict[str, str | None] = {}
    now = time.monotonic()
    for name, ref in images:
        cached = _cache.get(ref)
        if cached is not None and now - cached[0] < CACHE_SECONDS:
            found[name] = cached[1]
            continue
        try:
            info = await inspect(ref)
        except NotFound:
            text: str | None = None
        except APIError:
            continue
        else:
            text = image_versions_text((info.get("Config") or {}).get("Labels") or {})
        _cache[ref] = (now, text)
        found[name] = text
    return found

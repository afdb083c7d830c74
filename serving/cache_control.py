"""The Cache-Control request header, parsed into the plain value the cache reads (cache/policy.py)."""

from __future__ import annotations

from cache.policy import CacheControl


def parse_cache_control(header: str | None) -> CacheControl:
    """The directives the cache honours; unknown directives are ignored, as HTTP caches do."""
    if not header:
        return CacheControl()
    no_cache = no_store = False
    max_age: float | None = None
    for part in header.split(","):
        name, _, value = part.strip().partition("=")
        name = name.strip().lower()
        if name == "no-cache":
            no_cache = True
        elif name == "no-store":
            no_store = True
        elif name == "max-age":
            try:
                max_age = max(0.0, float(value.strip().strip('"')))
            except ValueError:
                pass
    return CacheControl(no_cache, no_store, max_age)

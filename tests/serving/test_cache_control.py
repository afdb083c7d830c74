"""serving/cache_control.py: the Cache-Control header into the cache's plain CacheControl value."""

from __future__ import annotations

import pytest

from serving.cache_control import parse_cache_control


@pytest.mark.parametrize(
    ("header", "no_cache", "no_store", "max_age"),
    [
        (None, False, False, None),
        ("", False, False, None),
        ("no-cache", True, False, None),
        ("No-Cache", True, False, None),
        ("no-store", False, True, None),
        ("no-cache, no-store", True, True, None),
        ("max-age=30", False, False, 30.0),
        ("MAX-AGE=30", False, False, 30.0),
        ("max-age = 7", False, False, 7.0),
        ('max-age="12"', False, False, 12.0),
        ("max-age=0", False, False, 0.0),
        ("max-age=-5", False, False, 0.0),
        ("max-age=abc", False, False, None),
        ("max-age=", False, False, None),
        ("max-age", False, False, None),
        ("private, max-age=5, no-transform", False, False, 5.0),
        (",,;junk==, no-store ,", False, True, None),
        ("no-cachex", False, False, None),
    ],
)
def test_parse_cache_control(header: str | None, no_cache: bool, no_store: bool, max_age: float | None) -> None:
    cc = parse_cache_control(header)
    assert (cc.no_cache, cc.no_store, cc.max_age) == (no_cache, no_store, max_age)

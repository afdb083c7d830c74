"""Fixtures for the chart tests; helpers live in chart_helpers.py."""

from __future__ import annotations

import pytest
from chart_helpers import PROFILES


@pytest.fixture(params=list(PROFILES))
def profile(request: pytest.FixtureRequest) -> str:
    """Each values profile in turn: the defaults, values-cpu.yaml, values-external-redis.yaml."""
    return request.param

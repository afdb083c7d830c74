"""The models the upstreams serve, merged, refreshed in the background so lookups cost nothing."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from serving.protocol import OpenAIError
from serving.router import Router
from serving.upstream import UpstreamClient


class ModelCatalog:
    def __init__(self, upstream: UpstreamClient, router: Router, refresh_s: float) -> None:
        self._upstream = upstream
        self._router = router
        self._refresh_s = refresh_s
        self._models: dict[str, dict[str, Any]] = {}
        self._fetched_at = 0.0
        self._refreshing: asyncio.Task[None] | None = None
        self.reachable: dict[str, bool] = {}

    async def refresh(self) -> None:
        """Ask every replica for its models; a replica that does not answer is marked unreachable."""
        merged: dict[str, dict[str, Any]] = {}
        replicas = self._router.replicas()

        async def one(url: str) -> None:
            try:
                doc = await self._upstream.get_json(url + "/v1/models")
            except OpenAIError:
                self.reachable[url] = False
                return
            self.reachable[url] = True
            for model in doc.get("data", []) if isinstance(doc, dict) else []:
                if isinstance(model, dict) and isinstance(model.get("id"), str):
                    merged.setdefault(model["id"], model)

        await asyncio.gather(*(one(r.url) for r in replicas))
        for gone in set(self.reachable) - {r.url for r in replicas}:
            del self.reachable[gone]
        if merged or not any(self.reachable.values()):
            self._models = merged
        self._fetched_at = time.monotonic()

    def _refresh_if_stale(self) -> None:
        stale = time.monotonic() - self._fetched_at > self._refresh_s
        if stale and (self._refreshing is None or self._refreshing.done()):
            self._refreshing = asyncio.get_running_loop().create_task(self.refresh())

    async def models(self) -> list[dict[str, Any]]:
        if not self._models:
            await self.refresh()
        else:
            self._refresh_if_stale()
        return list(self._models.values())

    def label(self, model: str) -> str:
        """A model's metric label: its name if an upstream serves it, else "other", so a name a
        client made up never becomes a time series."""
        return model if model in self._models else "other"

    async def check(self, model: str) -> None:
        """404 for a model no upstream serves; unknown (all upstreams down) lets the call fail later."""
        if model in self._models:
            self._refresh_if_stale()
            return
        if time.monotonic() - self._fetched_at > 1.0:  # a model just loaded, or our list is empty
            await self.refresh()
        if self._models and model not in self._models:
            raise OpenAIError(404, f"The model '{model}' does not exist", "invalid_request_error",
                              param="model", code="model_not_found")

"""Replica choice for upstream calls.

Interface used by serving/upstream.py: ``choose(affinity)`` returns a :class:`Replica` and counts it
in flight; ``release(replica, ok)`` must follow every ``choose``. ``affinity`` is the text whose
prefix should keep landing on the same replica (see :func:`affinity_text`).

Policies (``routing.policy``):

- ``prefix_aware``: consistent hashing of the affinity text's first ``prefix_chars`` characters on a
  ring with ``virtual_nodes`` points per replica, so requests that share a prompt prefix reuse the
  KV blocks vLLM's automatic prefix caching kept on one replica. Bounded load: a replica already
  holding more than ``load_factor`` x the mean load spills the request to the next replica on the
  ring (Mirrokni et al., "Consistent Hashing with Bounded Loads").
- ``least_loaded``: the replica with the smallest load.
- ``round_robin``: one after the other.

Load is vLLM's own ``num_requests_running + num_requests_waiting`` when a fresh scrape exists
(plus what this gateway sent or finished since that scrape), else this gateway's in-flight count.
Health: ``eject_after_failures`` consecutive failures eject a replica for ``eject_for_s``; after that
it is tried again, and one more failure ejects it again at once. Ejection steers requests to the
healthy replicas; it never refuses a request some replica could still try. With every replica
ejected (a single replica that stalled, or all of them), requests go to the least bad one, the one
whose ejection ends first: turning a stall that already passed into ``eject_for_s`` of 503s helps
no one, and a replica that is really down still fails fast on its own (connect refused).

Sticky conversations: a bounded LRU (``routing.session_affinity_entries``, default
:data:`DEFAULT_SESSION_ENTRIES`) maps a hash of the whole affinity text (one conversation) to the
replica it last went to. A conversation that bounded load moved, or that started before a replica
joined, stays where its history is cached while that replica is healthy and under the cap.

Memory: the ring holds ``replicas x virtual_nodes`` integers, the LRU at most
``session_affinity_entries`` (int, url) pairs; no prompt text is kept.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from serving.config import UpstreamConfig
from serving.replicas import ReplicaDiscovery, Resolver
from serving.vllm_metrics import VllmMetrics

log = logging.getLogger(__name__)

Clock = Callable[[], float]

DEFAULT_SESSION_ENTRIES = 65_536
"""Conversations remembered for stickiness (~100 bytes each) when the config does not say."""


class NoReplica(RuntimeError):
    """No replica is configured, or a retry has tried them all."""


@dataclass(eq=False)
class Replica:
    """One vLLM endpoint and the router's bookkeeping about it."""

    url: str
    in_flight: int = 0
    failures: int = 0  # consecutive failed releases
    ejected_until: float = 0.0  # clock() value; 0 = never ejected
    probation: bool = False  # back from ejection: one failure ejects again
    chosen: int = 0  # requests routed here (for the load split)
    spilled: int = 0  # of those, requests that bounded load moved here from their ring owner
    ejections: int = 0
    while_ejected: int = 0  # of those, requests sent here while ejected: no healthy replica was left

    def available(self, now: float) -> bool:
        """Not ejected at ``now``."""
        return now >= self.ejected_until


def _part_text(part: Any) -> str:
    if isinstance(part, Mapping) and part.get("type") in ("text", "input_text"):
        text = part.get("text")
        return text if isinstance(text, str) else repr(text)
    return repr(part)


def _message_text(m: Mapping[str, Any]) -> str:
    content = m.get("content")
    if isinstance(content, str):
        text = content
    elif isinstance(content, list):
        text = "".join(_part_text(p) for p in content)
    else:
        text = "" if content is None else repr(content)
    return f"{m.get('role')}:{text}"


def affinity_text(body: Mapping[str, Any]) -> str:
    """The stable head of the prompt, start first: what routing hashes.

    For chat requests: the leading system/developer messages, the tools, and the first user turn,
    but not what follows. That part stays the same as a conversation grows (each turn resends the
    whole history), so turn 3 lands on the replica whose prefix cache already holds turns 1-2.
    ``model`` and ``cache_salt`` lead: vLLM shares no cached blocks across models or salts, so
    requests that differ there gain nothing from landing together. For completions requests, the
    prompt itself (the router keeps only its first ``prefix_chars`` characters). For Responses
    requests, the instructions and the input up to its first user message.
    """
    head: list[str] = []
    for key in ("model", "cache_salt"):
        value = body.get(key)
        if isinstance(value, str) and value:
            head.append(f"{key}={value}")
    messages = body.get("messages")
    if isinstance(messages, list):
        lead: list[str] = []
        turns: list[str] = []
        for m in messages:
            if not isinstance(m, Mapping):
                continue
            if not turns and m.get("role") in ("system", "developer"):
                lead.append(_message_text(m))
                continue
            turns.append(_message_text(m))
            if m.get("role") == "user":
                break
        tools = body.get("tools")
        # chat templates render tools near the start, ahead of the conversation
        tools_part = ["tools:" + json.dumps(tools, default=repr, ensure_ascii=False)] if tools else []
        return "\n".join(head + lead + tools_part + turns)
    if "input" in body and "prompt" not in body:  # Responses API: instructions lead, then the input
        instructions = body.get("instructions")
        lead = [instructions] if isinstance(instructions, str) else []
        value = body.get("input")
        if isinstance(value, list):
            items = [m for m in value if isinstance(m, Mapping)]
            first_user = next((i for i, m in enumerate(items) if m.get("role") == "user"), len(items) - 1)
            value = "\n".join(_message_text(m) for m in items[:first_user + 1])
        return "\n".join([*head, *lead, value if isinstance(value, str) else repr(value)])
    prompt = body.get("prompt")
    text = prompt if isinstance(prompt, str) else repr(prompt)
    return "\n".join([*head, text]) if head else text


def _hash64(data: str) -> int:
    """Stable 64-bit hash (Python's hash() is salted per process; gateways must agree)."""
    return int.from_bytes(hashlib.blake2b(data.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "big")


class HashRing:
    """Consistent-hash ring: ``virtual_nodes`` points per replica url; adding or removing one of n
    replicas moves only ~1/n of the keys."""

    def __init__(self, urls: Sequence[str], virtual_nodes: int) -> None:
        points = sorted((_hash64(f"{url}#{i}"), url) for url in urls for i in range(virtual_nodes))
        self._hashes = [h for h, _ in points]
        self._owners = [u for _, u in points]
        self._n = len(set(urls))

    def __len__(self) -> int:
        return self._n

    def walk(self, key: str) -> Iterator[str]:
        """Distinct urls in ring order, starting at the owner of ``key``."""
        if not self._hashes:
            return
        start = bisect.bisect_right(self._hashes, _hash64(key))
        seen: set[str] = set()
        size = len(self._hashes)
        for i in range(size):
            url = self._owners[(start + i) % size]
            if url not in seen:
                seen.add(url)
                yield url
                if len(seen) == self._n:
                    return

    def owner(self, key: str) -> str | None:
        """The url owning ``key``, or None on an empty ring."""
        return next(self.walk(key), None)


class Router:
    """Chooses a vLLM replica per request; see the module docstring for the policies."""

    def __init__(
        self,
        cfg: UpstreamConfig,
        *,
        clock: Clock = time.monotonic,
        resolver: Resolver | None = None,
        metrics: VllmMetrics | None = None,
    ) -> None:
        self.cfg = cfg
        self.routing = cfg.routing
        self._clock = clock
        self._replicas: list[Replica] = []
        self._by_url: dict[str, Replica] = {}
        self._ring = HashRing([], self.routing.virtual_nodes)
        self._rr = 0
        # read with a default until the config model has the field
        self._sessions_max = int(getattr(self.routing, "session_affinity_entries", DEFAULT_SESSION_ENTRIES))
        self._sessions: OrderedDict[int, str] = OrderedDict()
        self.vllm_metrics = metrics if metrics is not None else VllmMetrics(
            self.routing.metrics_scrape_s, headers=self._auth_headers(), clock=clock
        )
        self.vllm_metrics.in_flight_of = self._in_flight_of
        self.discovery = ReplicaDiscovery(cfg, self.set_urls, resolver=resolver)
        if not cfg.dns_name:
            self.set_urls(cfg.urls)

    def _auth_headers(self) -> dict[str, str]:
        if not self.cfg.api_key_file:
            return {}
        try:
            with open(self.cfg.api_key_file, encoding="utf-8") as fh:
                key = fh.read().strip()
        except OSError:
            return {}
        return {"Authorization": f"Bearer {key}"} if key else {}

    async def start(self) -> None:
        """Resolve replicas (DNS), then refresh them and scrape vLLM metrics in the background."""
        await self.discovery.start()
        await self.vllm_metrics.start()

    async def aclose(self) -> None:
        """Stop background work."""
        await self.discovery.aclose()
        await self.vllm_metrics.aclose()

    def set_urls(self, urls: Sequence[str]) -> None:
        """Replace the replica set; replicas that stay keep their state, and the ring is rebuilt."""
        urls = list(dict.fromkeys(u.rstrip("/") for u in urls))
        if urls == [r.url for r in self._replicas]:
            return
        self._replicas = [self._by_url.get(u) or Replica(u) for u in urls]
        self._by_url = {r.url: r for r in self._replicas}
        self._ring = HashRing(urls, self.routing.virtual_nodes)
        keep = set(urls)
        for session, url in list(self._sessions.items()):
            if url not in keep:
                del self._sessions[session]
        self.vllm_metrics.set_targets(urls)
        log.info("upstream replicas: %d (%s)", len(urls), ", ".join(urls))

    def replicas(self) -> list[Replica]:
        return list(self._replicas)

    def _in_flight_of(self, url: str) -> int:
        r = self._by_url.get(url)
        return r.in_flight if r is not None else 0

    def load(self, replica: Replica) -> int:
        """vLLM's running + waiting when freshly scraped (plus our change since), else in-flight."""
        snap = self.vllm_metrics.fresh(replica.url)
        if snap is None or snap.queue is None:
            return replica.in_flight
        estimate = snap.queue + replica.in_flight - snap.in_flight_at_scrape
        return max(replica.in_flight, math.ceil(estimate))

    def _limit(self, loads: Sequence[int]) -> int:
        """Most load a replica may hold and still take this request (bounded-load cap)."""
        mean = (sum(loads) + 1) / len(loads)  # counting the request being placed
        return max(math.ceil(self.routing.load_factor * mean), math.floor(mean) + 1)

    def choose(self, affinity: str, exclude: Collection[Replica] = ()) -> Replica:
        """Pick a replica for a request whose stable prompt head is ``affinity``; count it in flight.

        ``exclude``: replicas this request already failed on (a retry goes elsewhere). With every
        other replica ejected, the one whose ejection ends first (see the module docstring).
        """
        if not self._replicas:
            raise NoReplica("no upstream replica configured or discovered")
        candidates = [r for r in self._replicas if r not in exclude]
        if not candidates:
            raise NoReplica("no other upstream replica is available")
        now = self._clock()
        healthy = [r for r in candidates if r.available(now)]
        if not healthy:
            replica = min(candidates, key=lambda r: (r.ejected_until, self.load(r)))
            replica.while_ejected += 1
            replica.in_flight += 1
            replica.chosen += 1
            return replica
        policy = self.routing.policy
        if policy == "round_robin":
            replica = healthy[self._rr % len(healthy)]
            self._rr += 1
        elif policy == "least_loaded" or not affinity:
            replica = self._least_loaded(healthy)
        else:
            replica = self._prefix_aware(affinity, healthy)
        replica.in_flight += 1
        replica.chosen += 1
        return replica

    def _least_loaded(self, healthy: list[Replica]) -> Replica:
        # rotate the start so ties are shared rather than always going to the first replica
        self._rr += 1
        k = self._rr % len(healthy)
        order = healthy[k:] + healthy[:k]
        return min(order, key=self.load)

    def _prefix_aware(self, affinity: str, healthy: list[Replica]) -> Replica:
        loads = {r.url: self.load(r) for r in healthy}
        limit = self._limit(list(loads.values()))
        session = _hash64(affinity) if self._sessions_max > 0 else None
        if session is not None:
            url = self._sessions.get(session)
            if url is not None and url in loads and loads[url] + 1 <= limit:
                self._sessions.move_to_end(session)
                return self._by_url[url]
        replica = self._ring_choice(affinity[: self.routing.prefix_chars], healthy, loads, limit)
        if session is not None:
            self._sessions[session] = replica.url
            self._sessions.move_to_end(session)
            if len(self._sessions) > self._sessions_max:
                self._sessions.popitem(last=False)
        return replica

    def _ring_choice(self, key: str, healthy: list[Replica], loads: dict[str, int], limit: int) -> Replica:
        """First healthy replica under the cap, walking the ring from ``key``'s owner."""
        first = True
        for url in self._ring.walk(key):
            if url not in loads:  # ejected
                first = False
                continue
            if loads[url] + 1 <= limit:
                replica = self._by_url[url]
                if not first:
                    replica.spilled += 1
                return replica
            first = False
        replica = min(healthy, key=lambda r: loads[r.url])  # unreachable in theory: min <= mean
        replica.spilled += 1
        return replica

    def owner(self, affinity: str) -> Replica | None:
        """The ring owner of ``affinity`` ignoring load and health (for tests and diagnostics)."""
        url = self._ring.owner(affinity[: self.routing.prefix_chars])
        return self._by_url.get(url) if url else None

    def release(self, replica: Replica, ok: bool) -> None:
        """End a request chosen by :meth:`choose`; ``ok=False`` counts towards ejection."""
        replica.in_flight = max(0, replica.in_flight - 1)
        if ok:
            replica.failures = 0
            replica.probation = False
            return
        replica.failures += 1
        if replica.probation or replica.failures >= self.routing.eject_after_failures:
            replica.ejected_until = self._clock() + self.routing.eject_for_s
            replica.ejections += 1
            replica.failures = 0
            replica.probation = True
            log.warning("upstream %s ejected for %.1f s after failures", replica.url, self.routing.eject_for_s)

    def status(self) -> list[dict[str, Any]]:
        """Per-replica state for /ready and diagnostics (no prompt data)."""
        now = self._clock()
        return [
            {
                "url": r.url,
                "healthy": r.available(now),
                "ejected_for_s": round(max(0.0, r.ejected_until - now), 3),
                "in_flight": r.in_flight,
                "load": self.load(r),
            }
            for r in self._replicas
        ]

    def collector(self) -> RouterCollector:
        """A Prometheus collector of routing decisions; see :meth:`register`."""
        return RouterCollector(self)

    def register(self, registry: CollectorRegistry) -> None:
        """Export routing decisions and the replicas' vLLM metrics on ``registry``."""
        registry.register(self.collector())
        self.vllm_metrics.register(registry)


class RouterCollector(Collector):
    """``cachestack_route_*``: requests routed, spills and ejections per replica."""

    def __init__(self, router: Router) -> None:
        self._router = router

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        routed = CounterMetricFamily("cachestack_route_requests", "Requests routed to each replica", labels=["replica"])
        spilled = CounterMetricFamily(
            "cachestack_route_spilled", "Requests bounded load moved off their ring owner, by receiving replica",
            labels=["replica"],
        )
        ejections = CounterMetricFamily("cachestack_route_ejections", "Replica ejections after failures", labels=["replica"])
        while_ejected = CounterMetricFamily(
            "cachestack_route_while_ejected", "Requests sent to an ejected replica because none was healthy",
            labels=["replica"],
        )
        healthy = GaugeMetricFamily("cachestack_route_replica_healthy", "1 if the replica is not ejected", labels=["replica"])
        in_flight = GaugeMetricFamily("cachestack_route_in_flight", "Requests in flight per replica", labels=["replica"])
        now = self._router._clock()
        for r in self._router.replicas():
            routed.add_metric([r.url], r.chosen)
            spilled.add_metric([r.url], r.spilled)
            ejections.add_metric([r.url], r.ejections)
            while_ejected.add_metric([r.url], r.while_ejected)
            healthy.add_metric([r.url], 1.0 if r.available(now) else 0.0)
            in_flight.add_metric([r.url], r.in_flight)
        yield from (routed, spilled, ejections, while_ejected, healthy, in_flight)

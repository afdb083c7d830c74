"""Sending a request to a replica, and on to the next one when a replica cannot be reached.

A replica that sent no response byte back (connect refused or timed out, connection dropped before
the status line: a vLLM pod that died or is being replaced) did not answer the request, so the same
bytes go to the next healthy replica, each replica tried at most once. Nothing else is retried: a
read timeout may be a replica still generating (a second try would double the wait), and a response,
even a 5xx or a stream that breaks off after its first byte, has already been answered by someone.
"""

from __future__ import annotations

import asyncio

from serving import metrics
from serving.protocol import OpenAIError
from serving.router import NoReplica, Replica, Router
from serving.upstream import UpstreamClient, UpstreamResponse, UpstreamUnreachable


async def send(router: Router, upstream: UpstreamClient, affinity: str, path: str,
               body: bytes) -> tuple[Replica, UpstreamResponse]:
    """POST ``body`` to the replica the router picks, failing over on connect errors.

    Returns the replica and its started response; the caller releases the replica (``router.release``)
    once done with the response. On any error the replicas tried are released here.
    """
    tried: list[Replica] = []
    last: UpstreamUnreachable | None = None
    while True:
        try:
            replica = router.choose(affinity, exclude=tried)
        except NoReplica as exc:
            if last is not None:
                raise last from None
            metrics.UPSTREAM_ERRORS.labels("no_replica").inc()
            raise OpenAIError(503, str(exc), "upstream_error", code="no_upstream_available",
                              headers={"retry-after": "1"}) from None
        if tried:
            metrics.UPSTREAM_RETRIES.inc()
        try:
            return replica, await upstream.post(replica.url, path, body)
        except UpstreamUnreachable as exc:
            router.release(replica, False)
            metrics.UPSTREAM_ERRORS.labels(str(exc.code)).inc()
            tried.append(replica)
            last = exc
        except OpenAIError as exc:
            router.release(replica, False)
            metrics.UPSTREAM_ERRORS.labels(str(exc.code)).inc()
            raise
        except asyncio.CancelledError:  # a hit or a client that left: not the replica's failure
            router.release(replica, True)
            raise

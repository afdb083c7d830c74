"""A mixed workload for soak and capacity tests with locust (the benchmarks' exact numbers come from the
bench_*.py scripts, whose load driver costs less CPU than locust's on 2 cores).

    .venv/bin/locust -f loadtests/locustfile.py --host http://127.0.0.1:8080 --headless \
        -u 32 -r 8 -t 60s --only-summary

Each request is named by its cache outcome (HIT exact, HIT semantic, MISS, BYPASS), so locust's table
shows latency per outcome. Set CACHESTACK_MODEL (default smollm2) and CACHESTACK_API_KEY if needed.
"""

from __future__ import annotations

import os
import random

from locust import FastHttpUser, between, task

MODEL = os.environ.get("CACHESTACK_MODEL", "smollm2")
KEY = os.environ.get("CACHESTACK_API_KEY", "unused")
COUNTRIES = ["France", "Spain", "Italy", "Germany", "Japan", "Brazil", "Canada", "Egypt", "India", "Kenya"]
FORMS = ["What is the capital of {c}?", "what's the capital city of {c}", "Which city is the capital of {c}?"]


class ChatUser(FastHttpUser):
    wait_time = between(0.0, 0.05)

    def _ask(self, question: str, stream: bool) -> None:
        body = {"model": MODEL, "temperature": 0, "max_tokens": 32, "stream": stream,
                "messages": [{"role": "user", "content": question}]}
        with self.client.post("/v1/chat/completions", json=body, headers={"authorization": f"Bearer {KEY}"},
                              catch_response=True, name="chat") as r:
            outcome = r.headers.get("x-cache", "?")
            layer = r.headers.get("x-cache-layer")
            r.request_meta["name"] = f"chat {'stream ' if stream else ''}{outcome}{' ' + layer if layer else ''}"
            if r.status_code != 200:
                r.failure(f"HTTP {r.status_code}")

    @task(8)
    def repeated_question(self) -> None:
        c = random.choice(COUNTRIES)
        self._ask(random.choice(FORMS).format(c=c), stream=False)

    @task(2)
    def streamed(self) -> None:
        self._ask(random.choice(FORMS).format(c=random.choice(COUNTRIES)), stream=True)

    @task(1)
    def novel_question(self) -> None:
        self._ask(f"Give me a fun fact about the number {random.randint(0, 10**9)}.", stream=False)

"""What each scenario asks: request bodies and headers, no HTTP (loadtests/workload/client.py sends them).

Cold reruns: every body carries ``seed`` = the run's seed. The gateway hashes every output-changing
parameter into the context fingerprint (cache/keys.py), and ``seed`` is one (it picks the sample of a
sampled request), so entries of one run are invisible to the next: L1, Redis exact and semantic alike.
At temperature 0 vLLM decodes greedily and the seed changes nothing it generates. This needs no gateway
config (namespaces must be configured; a namespace per run is not possible) and no purge (which needs
the admin key and reaches other replicas' L1 only after 30 s). ``--warm`` keeps one fixed seed.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loadtests.workload.pool import Intent, ZipfSampler

DATA = Path(__file__).resolve().parent.parent / "data"
WARM_RUN_ID = "warm"
SYSTEM_FAQ = "You are the customer support assistant of Northwind. Answer in one or two short sentences."

# scenario -> weights of its steps; mixed adds Cache-Control and sampled shares (see Workload)
SCENARIOS: dict[str, dict[str, int]] = {
    "faq": {"faq": 1},
    "shared_prefix": {"shared_prefix": 1},
    "chat_stream": {"chat_stream": 1},
    "mixed": {"faq": 6, "shared_prefix": 2, "chat_stream": 2, "completion": 1},
}

SHARED_PREFIX_QUESTIONS = [
    "What is the maximum file size for uploads on the Business plan?",
    "How long are deleted files kept in the trash?",
    "Which regions can data be stored in?",
    "What are the support hours for Pro customers?",
    "How many versions of a file are kept on the Basic plan?",
    "Can guests edit documents?",
    "What happens when a payment fails?",
    "How do I request a data export?",
    "Which single sign-on providers are supported?",
    "What is the API rate limit per minute?",
    "How are refunds handled for annual plans?",
    "Is two-factor authentication mandatory for admins?",
    "How quickly are security incidents reported to customers?",
    "What does the Business plan cost per seat?",
    "Can I pause my subscription?",
    "How do shared links expire?",
    "What is the uptime commitment?",
    "Where can I see the audit log?",
    "How are backups encrypted?",
    "How do I move a workspace to another region?",
    "What file types can be previewed?",
    "How many members can a workspace have on the Pro plan?",
    "Who can change billing details?",
    "What happens to my data when I cancel?",
    "Are there discounts for nonprofits?",
    "How do I report a vulnerability?",
    "What does the legal hold feature do?",
    "How long does a data export take?",
    "Can I restore a deleted workspace?",
    "How are service credits calculated?",
]

CHAT_OPENERS = [
    "Explain what a cache is.", "Give me three tips for writing clear emails.", "What is the difference between RAM and disk?",
    "Suggest a name for a bakery.", "How do plants make food?", "What is a prime number?", "Write a haiku about rain.",
    "How do I make a cup of tea?", "What causes the seasons?", "Explain recursion to a child.",
    "What is the capital of Australia?", "Give me a packing list for a weekend trip.", "What is an API?",
    "How does a bicycle stay upright?", "Recommend a beginner workout.", "What is inflation?",
    "Tell me a fun fact about octopuses.", "How do vaccines work?", "What is the tallest mountain?",
    "Summarise the water cycle.",
]
CHAT_FOLLOW_UPS = ["Can you give an example?", "Make it shorter.", "Why is that?", "Tell me more.",
                   "Explain it more simply.", "What is a common mistake here?"]


def run_seed(run_id: str) -> int:
    """The ``seed`` every request of a run carries (see the module docstring)."""
    return int.from_bytes(hashlib.sha256(run_id.encode()).digest()[:4], "big") & 0x7FFFFFFF


@dataclass(frozen=True, slots=True)
class Request:
    """One request to send: the route, its body and headers, and what the summary should know."""

    kind: str
    path: str
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)
    intent: str = ""
    control: str = ""
    paraphrase: int = -1  # which of the intent's paraphrases was asked


@dataclass(frozen=True, slots=True)
class Settings:
    model: str = "smollm2"
    seed: int = 0
    namespace: str | None = None
    max_tokens: int = 64
    no_cache_share: float = 0.05  # mixed only: faq requests sent with Cache-Control: no-cache
    no_store_share: float = 0.05  # ... and with no-store
    sampled_share: float = 0.03  # ... and with temperature 0.7 (BYPASS in a `sampled: never` namespace)


def rag_context() -> str:
    return (DATA / "rag_context.md").read_text(encoding="utf-8")


class Workload:
    """One simulated user's next requests for a scenario; each step is one request, a chat_stream step a
    whole conversation (its turns depend on the answers, so the client asks for them one at a time)."""

    def __init__(self, scenario: str, settings: Settings, sampler: ZipfSampler | None, rng: random.Random) -> None:
        self.steps = SCENARIOS[scenario]
        self.mixed = scenario == "mixed"
        self.s = settings
        self.sampler = sampler
        self.rng = rng
        self._system_rag = rag_context() + "\n\nAnswer the user's question from the document above in one sentence."

    def next_kind(self) -> str:
        kinds = list(self.steps)
        return self.rng.choices(kinds, weights=[self.steps[k] for k in kinds])[0]

    def _base(self, **extra: Any) -> dict[str, Any]:
        body = {"model": self.s.model, "temperature": 0, "seed": self.s.seed, "max_tokens": self.s.max_tokens, **extra}
        return body

    def _headers(self) -> dict[str, str]:
        return {"x-cache-namespace": self.s.namespace} if self.s.namespace else {}

    def _intent(self) -> tuple[Intent, int]:
        assert self.sampler is not None, "this scenario needs a question pool"
        intent = self.sampler.draw(self.rng)
        return intent, self.rng.randrange(len(intent.paraphrases))

    def faq(self) -> Request:
        intent, k = self._intent()
        question = intent.paraphrases[k]
        body = self._base(stop=["\n"], messages=[{"role": "system", "content": SYSTEM_FAQ},
                                                  {"role": "user", "content": question}])
        headers, control = self._headers(), ""
        if self.mixed:
            u = self.rng.random()
            if u < self.s.no_cache_share:
                control = "no-cache"
            elif u < self.s.no_cache_share + self.s.no_store_share:
                control = "no-store"
            elif u < self.s.no_cache_share + self.s.no_store_share + self.s.sampled_share:
                body["temperature"] = 0.7
                control = "sampled"
            if control in ("no-cache", "no-store"):
                headers["cache-control"] = control
        # a sampled answer is one draw: it says nothing about which entry a hit came from
        return Request("faq", "/v1/chat/completions", body, headers, "" if control == "sampled" else intent.id, control, k)

    def completion(self) -> Request:
        intent, k = self._intent()
        body = self._base(stop=["\n"], prompt=f"Customer question: {intent.paraphrases[k]}\nSupport answer:")
        return Request("completion", "/v1/completions", body, self._headers(), intent.id, paraphrase=k)

    def shared_prefix(self) -> Request:
        question = self.rng.choice(SHARED_PREFIX_QUESTIONS)
        body = self._base(messages=[{"role": "system", "content": self._system_rag}, {"role": "user", "content": question}])
        return Request("shared_prefix", "/v1/chat/completions", body, self._headers())

    def conversation(self) -> tuple[str, list[str]]:
        """A chat_stream step: the opener and the follow-ups (2-3 turns in all)."""
        follow = self.rng.sample(CHAT_FOLLOW_UPS, self.rng.randint(1, 2))
        return self.rng.choice(CHAT_OPENERS), follow

    def chat_turn(self, history: list[dict[str, str]]) -> Request:
        body = self._base(stream=True, stream_options={"include_usage": True}, messages=history)
        return Request("chat_stream", "/v1/chat/completions", body, self._headers())

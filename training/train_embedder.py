"""Fine-tune the cache's embedder (all-MiniLM-L6-v2) for "same question" retrieval.

Why: the semantic tier first asks KNN for neighbours by cosine and the verifier only sees what KNN
returns above the floor; stock MiniLM was trained for general similarity, so paraphrases of a
question sit about as close as questions about the same topic that need another answer. A contrastive
fine-tune on duplicate questions with hard negatives pulls the first together and pushes the second
apart, at no cost per lookup (same architecture, same ONNX export).

Data: the *train* buckets of qqp_dev.jsonl (sha256(text_a) % 10 in 0..5, training/README.md); bucket 6
(calib) chooses thresholds and 7-9 (check) only report. Each duplicate pair (a, b) becomes a triplet
(a, b, hard negative), where the hard negative is, in this order of preference, a question labelled
*not* a duplicate of ``a`` in the file, or a near-miss of ``a`` made by training/augment.py (entity,
number, time, negation, direction changed). Loss: sentence-transformers' MultipleNegativesRankingLoss
(the other in-batch positives and negatives are negatives too), batches without duplicate texts.
``--loss cosent`` trains instead on every labelled pair of the train buckets (duplicates and
non-duplicates) with CoSENTLoss, which orders the pairs' cosines by label: the quantity a cosine floor
thresholds. Texts go through cache.keys.normalise_query, as serving embeds them.

    OMP_NUM_THREADS=2 python -m training.train_embedder --out /tmp/embedder-ft --epochs 1
    OMP_NUM_THREADS=2 python -m training.train_embedder --init /tmp/embedder-ft --loss cosent --out /tmp/embedder-ft2

The result is a sentence-transformers folder; ``python -m training.export_embedder`` writes the
shipped copy (fp16 weights) that ``embedder.model`` can name.
"""

from __future__ import annotations

import argparse
import random
import time
from collections import defaultdict

from cache.keys import normalise_query
from training.augment import antonym_swap, direction_swap, entity_swap, negate, number_change, time_change
from training.qqp_split import DEFAULT_QQP, bucket, read_pairs
from training.train_verifier import base_model_path


def triplets(qqp: str, seed: int) -> list[tuple[str, str, str]]:
    """(anchor, positive, hard negative) from the train buckets, in a seeded random order."""
    rng = random.Random(seed)
    pos: list[tuple[str, str]] = []
    negs: dict[str, list[str]] = defaultdict(list)
    questions: list[str] = []
    for a, b, y in read_pairs(qqp):
        if bucket(a) > 5:
            continue
        questions += [a, b]
        if y == 1:
            pos.append((a, b))
        else:
            negs[a].append(b)
            negs[b].append(a)
    vocab = sorted({w for q in questions for i, w in enumerate(q.split()) if i > 0 and w[:1].isupper() and len(w) > 2})
    makers = [number_change, antonym_swap, time_change, negate, direction_swap]
    out: list[tuple[str, str, str]] = []
    mined = synthetic = 0
    for a, b in pos:
        if rng.random() < 0.5:
            a, b = b, a
        neg = rng.choice(negs[a]) if negs.get(a) else None
        if neg is not None:
            mined += 1
        else:
            for make in rng.sample(makers, len(makers)) + [lambda q, r: entity_swap(q, vocab, r)]:
                neg = make(a, rng)
                if neg and normalise_query(neg) != normalise_query(a):
                    synthetic += 1
                    break
                neg = None
        if neg is None:
            neg = rng.choice(questions)
        out.append((normalise_query(a), normalise_query(b), normalise_query(neg)))
    rng.shuffle(out)
    print(f"{len(out)} triplets: {mined} mined negatives, {synthetic} synthetic, "
          f"{len(out) - mined - synthetic} random", flush=True)
    return out


def labelled_pairs(qqp: str, seed: int) -> list[tuple[str, str, float]]:
    """(a, b, label) for every pair of the train buckets, normalised, in a seeded random order."""
    rng = random.Random(seed)
    out = [(normalise_query(a), normalise_query(b), float(y)) for a, b, y in read_pairs(qqp) if bucket(a) <= 5]
    rng.shuffle(out)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--qqp", default=DEFAULT_QQP)
    ap.add_argument("--out", required=True)
    ap.add_argument("--init", default=None, help="start from this sentence-transformers folder")
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=3e-5)
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--seed", type=int, default=17)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--save-every", type=int, default=50)
    ap.add_argument("--loss", choices=["mnrl", "cosent"], default="mnrl")
    args = ap.parse_args()

    import torch
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer
    from sentence_transformers.losses import CoSENTLoss, MultipleNegativesRankingLoss
    from sentence_transformers.training_args import BatchSamplers, SentenceTransformerTrainingArguments

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    if args.loss == "mnrl":
        rows = triplets(args.qqp, args.seed)
        data = Dataset.from_dict({"anchor": [r[0] for r in rows], "positive": [r[1] for r in rows],
                                  "negative": [r[2] for r in rows]})
    else:
        pairs = labelled_pairs(args.qqp, args.seed)
        data = Dataset.from_dict({"sentence1": [p[0] for p in pairs], "sentence2": [p[1] for p in pairs],
                                  "score": [p[2] for p in pairs]})
    model = SentenceTransformer(args.init or base_model_path(), device="cpu", local_files_only=True)
    model.max_seq_length = args.max_length
    targs = SentenceTransformerTrainingArguments(
        output_dir=args.out + "-ckpt",
        num_train_epochs=args.epochs,
        per_device_train_batch_size=args.batch,
        learning_rate=args.lr,
        warmup_ratio=0.1,
        batch_sampler=BatchSamplers.NO_DUPLICATES if args.loss == "mnrl" else BatchSamplers.BATCH_SAMPLER,
        save_strategy="steps",
        save_steps=args.save_every,
        save_total_limit=2,
        logging_steps=10,
        seed=args.seed,
        dataloader_num_workers=0,
        report_to=[],
        use_cpu=True,
    )
    loss = MultipleNegativesRankingLoss(model) if args.loss == "mnrl" else CoSENTLoss(model)
    trainer = SentenceTransformerTrainer(model=model, args=targs, train_dataset=data, loss=loss)
    started = time.monotonic()
    import glob

    resume = bool(glob.glob(args.out + "-ckpt/checkpoint-*"))
    trainer.train(resume_from_checkpoint=resume or None)
    model.save(args.out)
    print(f"saved {args.out} after {(time.monotonic() - started) / 60:.1f} min", flush=True)


if __name__ == "__main__":
    main()

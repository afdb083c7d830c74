"""Export the fine-tuned cross-encoder to ONNX and quantise it to int8 (dynamic, per-channel weights).

    python -m training.export_verifier --hf /tmp/verifier-hf --out cache/models/verifier

Writes ``model_int8.onnx`` and ``tokenizer.json`` into ``--out``; ``training/calibrate_verifier.py``
then writes ``verifier.json`` (logistic layer, default floor and threshold) next to them.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import torch


def export(hf_dir: str, out_dir: str) -> Path:
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.set_num_threads(1)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = AutoTokenizer.from_pretrained(hf_dir)
    model = AutoModelForSequenceClassification.from_pretrained(hf_dir).eval()
    enc = tok(["how do i reset my password"], ["how can i change my password"], return_tensors="pt")
    names = ["input_ids", "attention_mask", "token_type_ids"]

    class Wrapped(torch.nn.Module):
        def __init__(self, m: torch.nn.Module) -> None:
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask, token_type_ids):  # noqa: ANN001
            return self.m(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids).logits

    with tempfile.TemporaryDirectory() as tmp:
        fp32 = Path(tmp) / "model.onnx"
        axes = {n: {0: "batch", 1: "seq"} for n in names}
        axes["logits"] = {0: "batch"}
        torch.onnx.export(
            Wrapped(model), tuple(enc[n] for n in names), str(fp32), input_names=names,
            output_names=["logits"], dynamic_axes=axes, opset_version=17, dynamo=False,
        )
        quantize_dynamic(str(fp32), str(out / "model_int8.onnx"), weight_type=QuantType.QInt8,
                         per_channel=True, op_types_to_quantize=["MatMul", "Gather"])
    tok.save_pretrained(tmp2 := tempfile.mkdtemp())
    shutil.copy(Path(tmp2) / "tokenizer.json", out / "tokenizer.json")
    shutil.rmtree(tmp2, ignore_errors=True)
    return out / "model_int8.onnx"


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hf", required=True, help="directory written by training.train_verifier")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent.parent / "cache" / "models" / "verifier"))
    args = ap.parse_args()
    path = export(args.hf, args.out)
    print(path, path.stat().st_size // 1024, "KiB")

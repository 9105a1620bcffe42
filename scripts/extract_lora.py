"""Ship a fully fine-tuned LLM as a small LoRA adapter (compactvlm.train.lora_extract: the truncated SVD of each
linear layer's weight change), next to the checkpoint's own compressor, in the checkpoint format every command loads.

    python scripts/extract_lora.py --checkpoint runs/recipe/stf-s2-mix/final --rank 32 --out runs/recipe/stf-s2-mix-lora32

Prints how much of the LLM's weight change the adapter keeps; evaluate the result (real and shuffled images,
scripts/learning_curve.py) before shipping it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from compactvlm.train.lora_extract import TARGETS


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="a compact checkpoint whose LLM was fully trained")
    p.add_argument("--rank", type=int, default=32)
    p.add_argument("--out", required=True, help="new checkpoint folder (refused if it holds anything not ours)")
    p.add_argument("--dtype", choices=("float16", "bfloat16", "float32"), default="float16",
                   help="dtype of the stored adapter and compressor (default float16)")
    a = p.parse_args(argv)
    if a.rank < 1:
        p.error("--rank must be >= 1")

    import torch

    from compactvlm.errors import CompactVLMError
    from compactvlm.model.build import build_model
    from compactvlm.model.checkpoint import check_replaceable, load_pretrained, read_config, save_pretrained
    from compactvlm.train.lora_extract import lora_from_finetune

    try:
        check_replaceable(Path(a.out), "--out")
        cfg, _ = read_config(a.checkpoint)
        tuned = load_pretrained(a.checkpoint, progress=False)
        base = build_model(cfg, progress=False)  # same config with the packaged (untrained) LLM
    except CompactVLMError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    base.llm, rep = lora_from_finetune(tuned.llm, base.llm, a.rank, TARGETS)
    dt = getattr(torch, a.dtype)
    with torch.no_grad():
        base.compressor.load_state_dict(tuned.compressor.state_dict())
        base.compressor.to(dt)
        for n, prm in base.llm.named_parameters():
            prm.requires_grad_("lora_" in n)
            if "lora_" in n:
                prm.data = prm.data.to(dt)
    save_pretrained(base, a.out, trainable_only=True,
                    extra={"lora_extraction": {"from": str(a.checkpoint), **rep}})
    print(f"{a.out}: LoRA r={a.rank} on {rep['layers']} layers; of the LLM's squared weight change: kept "
          f"{rep['kept']:.1%}, cut from the targets' tails {rep['cut']:.1%}"
          + "".join(f", dropped ({k}) {v:.1%}" for k, v in rep["dropped"].items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

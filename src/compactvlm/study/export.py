"""``compactvlm study export``: trained rows' compressor weights with their provenance (the demo's shipped
weights)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import CompactVLMError
from .plan import StudyPlan, checkpoint_dir, result_path


def export_rows(plan: StudyPlan, rows: list[str], seed: int, out_dir: str | os.PathLike,
                dtype: str = "float16") -> list[Path]:
    """Copy trained rows' compressor checkpoints into ``out_dir/<row>/`` (weights cast to ``dtype`` to keep the
    package small; they load into a float32 model unchanged up to that rounding) with ``provenance.json``: the
    plan, seed, training config and the row's measured study result. LoRA adapters trained with the LLM (a
    stage-2 recipe) are copied the same way; a checkpoint holding fully trained LLM weights is refused (a 135M
    LLM is 545 MB in fp32: too large to ship, and without them the copy would be another model)."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    from ..model.checkpoint import COMPRESSOR_WEIGHTS, CONFIG_NAME, LLM_WEIGHTS
    from ..model.manifest import write_manifest

    written = []
    for name in rows:
        row = plan.row(name)
        if not row.trained:
            raise CompactVLMError(f"row {name!r} is evaluation-only; it has no weights of its own",
                                  f"export {row.from_!r} instead")
        final = checkpoint_dir(plan, row, seed) / "final"
        res = result_path(plan, name, seed)
        if not (final / CONFIG_NAME).exists() or not res.exists():
            raise CompactVLMError(f"row {name!r} seed {seed} has no finished checkpoint and result",
                                  f"run `compactvlm study run --plan <plan> --rows {name} --seeds {seed}` first")
        llm = json.loads((final / CONFIG_NAME).read_text()).get("llm_weights")
        if llm and llm.get("kind") != "lora":
            raise CompactVLMError(f"row {name!r} seed {seed} trained the LLM's own weights ({llm.get('kind')}); "
                                  "`study export` ships compressor (and LoRA adapter) weights only, and the "
                                  "compressor alone would be another model", f"use the checkpoint {final} itself, "
                                  "or export a row trained with a frozen or LoRA LLM")
        dest = Path(out_dir) / name
        if dest.exists() and not ((dest / "provenance.json").is_file() and (dest / CONFIG_NAME).is_file()):
            raise CompactVLMError(f"{dest} exists and is not an earlier `study export` of a row (no provenance.json "
                                  f"and {CONFIG_NAME}); nothing was changed",
                                  "export into a new folder, or move that folder away first")
        tmp = dest.with_name(f".{name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        shutil.copy2(final / CONFIG_NAME, tmp / CONFIG_NAME)
        for f in (COMPRESSOR_WEIGHTS, LLM_WEIGHTS) if llm else (COMPRESSOR_WEIGHTS,):
            sd = load_file(str(final / f))
            save_file({k: v.to(getattr(torch, dtype)).contiguous() for k, v in sd.items()}, tmp / f)
        result = json.loads(res.read_text())
        train_cfg = (checkpoint_dir(plan, row, seed) / "train_config.yaml")
        (tmp / "provenance.json").write_text(json.dumps({
            "plan": plan.name, "row": name, "seed": seed, "weights_dtype": dtype,
            "trained_by": f"compactvlm study run --plan <plan> --rows {name} --seeds {seed}",
            "exported_by": f"compactvlm study export --plan <plan> --rows {name} --seed {seed}",
            "train_config": train_cfg.read_text() if train_cfg.exists() else None,
            "study_result": {k: result[k] for k in ("vision_tokens", "metrics", "cost", "train", "finished")},
        }, indent=1))
        write_manifest(tmp)
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
        written.append(dest)
    return written

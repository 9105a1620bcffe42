"""Ship a recipe checkpoint as `make demo`'s weights: the compressor plus a LoRA adapter extracted from the fully
trained LLM (scripts/extract_lora.py; a full LLM copy is 545 MB), evaluated on the SceneQA test split with real and
shuffled images *after* extraction, and written to ``src/compactvlm/assets/demo/<row>/`` with a provenance.json
that says how it was trained, extracted and measured.

    python scripts/ship_demo_weights.py --checkpoint runs/r3/stf-ground-s2/final --row stf-k2e1 --rank 16 \
        --data data/recipe --recipe "compactvlm train --config configs/train/recipe_ground.yaml ..." \
        --recipe "compactvlm train --config configs/train/recipe_stage2_ground.yaml ..."

The destination is replaced only when it is an earlier shipped folder (it holds provenance.json); the extracted
model's own evaluation (not the source checkpoint's) is what provenance.json and the demo report.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))


def drop_packaged_tokenizer(folder: Path) -> bool:
    """Remove the checkpoint's saved tokenizer when it equals the packaged LLM's (same vocabulary, special tokens
    and chat template): the shipped folder then loads the packaged one, 3.4 MB less per row. True if removed."""
    from transformers import AutoTokenizer

    from compactvlm.model.assets import TOKENIZER_DIR
    from compactvlm.model.build import build_model
    from compactvlm.model.checkpoint import read_config

    saved = folder / TOKENIZER_DIR
    if not saved.is_dir():
        return False
    cfg, _ = read_config(folder)
    base = build_model(cfg, progress=False).tokenizer
    tok = AutoTokenizer.from_pretrained(saved)
    same = (tok.get_vocab() == base.get_vocab() and tok.chat_template == base.chat_template
            and tok.all_special_tokens == base.all_special_tokens)
    if same:
        from compactvlm.model.manifest import write_manifest

        shutil.rmtree(saved)
        write_manifest(folder)
    return same


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", required=True, help="a compact checkpoint whose LLM was fully trained")
    ap.add_argument("--row", required=True, help="the shipped name (demo:<row>), e.g. stf-k2e1 or full-mlp2x")
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--data", required=True, help="the SceneQA build whose test split measures the extracted model")
    ap.add_argument("--split", default="test")
    ap.add_argument("--recipe", action="append", default=[], help="a command of the recipe (repeat, in order)")
    ap.add_argument("--dest", default=str(ROOT / "src" / "compactvlm" / "assets" / "demo"))
    ap.add_argument("--work", default="runs/ship", help="scratch folder: the extracted model and its evaluation")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--limit", type=int, default=None, help="only the first N questions (tests)")
    a = ap.parse_args(argv)

    from compactvlm.errors import CompactVLMError
    from compactvlm.evaluate.harness import evaluate_with_controls
    from compactvlm.model.checkpoint import load_pretrained
    from compactvlm.model.manifest import MARKER_NAME, write_manifest
    from compactvlm.runtime import set_threads

    import extract_lora

    dest = Path(a.dest) / a.row
    if dest.exists() and not (dest / "provenance.json").is_file():
        raise CompactVLMError(f"{dest} exists and is not a shipped folder (no provenance.json); nothing was changed",
                              "ship into another --dest, or move that folder away first")
    if not (Path(a.data) / f"{a.split}_answers.jsonl").is_file():
        raise CompactVLMError(f"{a.data} has no {a.split} split", "pass --data <a SceneQA build>")
    work = Path(a.work) / a.row
    extracted = work / "model"
    if extracted.exists():
        shutil.rmtree(extracted)  # ours: the scratch copy of an earlier run of this script
    rc = extract_lora.main(["--checkpoint", a.checkpoint, "--rank", str(a.rank), "--out", str(extracted)])
    if rc:
        return rc
    drop_packaged_tokenizer(extracted)
    set_threads(a.threads)
    from compactvlm.evaluate.answer import make_answer_fn

    model = load_pretrained(extracted, progress=False)
    answer = make_answer_fn(model, a.data)
    kw = dict(batch_size=8, limit=a.limit, progress=True, split=a.split)
    t0 = time.time()
    ev = evaluate_with_controls("sceneqa", a.data, answer, work / "eval-real", {"shuffled": work / "eval-shuffled"},
                                resume=False, **kw)
    real, blind, gap = ev["real"], ev["controls"]["shuffled"], ev["gap"]
    meta = json.loads((extracted / "compactvlm.json").read_text())
    src_meta = json.loads((Path(a.checkpoint) / "compactvlm.json").read_text())
    prov = {
        "row": a.row,
        "source_checkpoint": str(a.checkpoint),
        "source_step": src_meta.get("step"),
        "recipe": a.recipe,
        "shipped_by": "python scripts/ship_demo_weights.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "lora_extraction": meta.get("lora_extraction"),
        "weights_dtype": "float16",
        "test": {"data": a.data, "split": a.split, "n_questions": real["n"],
                 "real": {"components": real["components"], "family_mean": real["family_mean"]},
                 "shuffled": {"components": blind["components"], "family_mean": blind["family_mean"]},
                 "gap": gap, "seconds": round(time.time() - t0, 1)},
    }
    (extracted / "provenance.json").write_text(json.dumps(prov, indent=1) + "\n")
    (extracted / MARKER_NAME).unlink(missing_ok=True)  # package data: no dot files (the folder is the package's)
    for f in extracted.iterdir():
        f.chmod(0o644)
    write_manifest(extracted)
    tmp = dest.with_name(f".{a.row}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    shutil.copytree(extracted, tmp)
    tmp.chmod(0o755)
    if dest.exists():
        shutil.rmtree(dest)
    tmp.rename(dest)
    d = gap["controls"]["shuffled"]["family_mean"]["delta"]
    print(f"{dest}: family mean {real['family_mean']:.1f} real vs {blind['family_mean']:.1f} shuffled "
          f"({d[0]:+.1f} [{d[1]:+.1f}, {d[2]:+.1f}]), {real['n']} questions")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""SceneQA as local lmms-eval tasks: files lmms-eval reads from disk (no hub), scored by lmms-eval's own POPE and
VQA code.

    write_sceneqa_tasks("data/sceneqa", "lmms_tasks")
    lmms-eval eval --model compactvlm --model_args pretrained=DIR --tasks sceneqa_pope,sceneqa_vqa \\
        --include_path lmms_tasks --batch_size 8

Tasks (each a YAML + a JSON-lines test split, sharing ``utils.py``):
- ``sceneqa_pope``: the ``existence`` family (yes/no), lmms-eval's ``pope`` scoring (accuracy, precision,
  recall, F1, its yes-ratio);
- ``sceneqa_vqa``: the ``counting``, ``ocr`` and ``unanswerable`` families (ten human answers each), lmms-eval's
  ``textvqa`` scoring (EvalAI processor, leave-one-out VQA accuracy) as ``exact_match``.
The prompts are SceneQA's own (question and instruction); images are read from the SceneQA folder by path.
Scoring the same answers with ``rules="lmms-eval"`` in compactvlm gives the same numbers (tested).
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import CompactVLMError

POPE_FAMILIES = ("existence",)
VQA_FAMILIES = ("counting", "ocr", "unanswerable")

_UTILS = '''"""Written by compactvlm.interop.lmms_eval_tasks: SceneQA docs -> lmms-eval requests; scoring is lmms-eval's."""
from PIL import Image

from lmms_eval.tasks.pope.utils import (pope_aggregate_accuracy, pope_aggregate_f1_score, pope_aggregate_precision,
                                        pope_aggregate_recall, pope_aggregate_yes_ratio, pope_process_results)
from lmms_eval.tasks.textvqa.utils import textvqa_process_results


def doc_to_visual(doc):
    with Image.open(doc["image"]) as im:
        return [im.convert("RGB")]


def doc_to_text(doc, lmms_eval_specific_kwargs=None):
    return doc["prompt"]
'''

def _yaml(task: str, data: Path, process: str, metrics: list[dict], max_new_tokens: int) -> str:
    lines = [f"task: {task}", "dataset_path: json", "dataset_kwargs:", "  data_files:", f"    test: {json.dumps(str(data))}",
             "test_split: test", "output_type: generate_until", "doc_to_visual: !function utils.doc_to_visual",
             "doc_to_text: !function utils.doc_to_text", 'doc_to_target: "answer"', "generation_kwargs:"]
    gen = {"max_new_tokens": int(max_new_tokens), "temperature": 0, "do_sample": False}
    lines += [f"  {k}: {json.dumps(v)}" for k, v in gen.items()]
    lines += [f"process_results: !function utils.{process}", "metric_list:"]
    for m in metrics:
        lines.append(f"  - metric: {m['metric']}")
        agg = m["aggregation"]
        lines.append(f"    aggregation: {'!function utils.' + agg if agg.startswith('pope_') else agg}")
        lines.append("    higher_is_better: true")
    lines += ["metadata:", "  - version: 0.0", ""]
    return "\n".join(lines)


def write_sceneqa_tasks(data_dir, out_dir, split: str = "test", limit: int | None = None,
                        max_new_tokens: int = 12) -> list[str]:
    """Write the local tasks for the SceneQA build ``data_dir`` into ``out_dir`` (a new or empty folder).
    ``limit``: only the first N questions of each task; ``max_new_tokens``: the tasks' generation length (as
    ``compactvlm eval --max-new-tokens``). Returns the task names."""
    from ..evaluate.benchmarks import get_benchmark

    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise CompactVLMError(f"{out} is not empty", "write the tasks into a new folder")
    items = get_benchmark("sceneqa", data_dir, split=split).items()
    pope, vqa = [], []
    for it in items:
        fam = it.meta["family"]
        doc = {"question_id": it.key, "prompt": it.prompt, "question": it.meta.get("question", it.prompt),
               "image": str(Path(it.image_path).resolve()), "category": it.meta.get("subset", fam)}
        if fam in POPE_FAMILIES:
            pope.append({**doc, "answer": it.meta["answer"]})
        elif fam in VQA_FAMILIES:
            vqa.append({**doc, "answer": it.meta["answer"], "answers": list(it.meta["answers"])})
    if limit is not None:
        pope, vqa = pope[:limit], vqa[:limit]
    if not pope or not vqa:
        raise CompactVLMError(f"{data_dir} ({split}) lacks existence or counting/ocr/unanswerable questions",
                              "build SceneQA with all families (compactvlm data build sceneqa)")
    out.mkdir(parents=True, exist_ok=True)
    (out / "utils.py").write_text(_UTILS, encoding="utf-8")
    for name, rows in (("sceneqa_pope", pope), ("sceneqa_vqa", vqa)):
        data = (out / f"{name}_{split}.jsonl").resolve()
        data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    pope_metrics = [{"metric": f"pope_{m}", "aggregation": f"pope_aggregate_{m}"}
                    for m in ("accuracy", "precision", "recall", "f1_score", "yes_ratio")]
    (out / "sceneqa_pope.yaml").write_text(_yaml("sceneqa_pope", (out / f"sceneqa_pope_{split}.jsonl").resolve(),
                                                 "pope_process_results", pope_metrics, max_new_tokens),
                                           encoding="utf-8")
    (out / "sceneqa_vqa.yaml").write_text(_yaml("sceneqa_vqa", (out / f"sceneqa_vqa_{split}.jsonl").resolve(),
                                                "textvqa_process_results",
                                                [{"metric": "exact_match", "aggregation": "mean"}], max_new_tokens),
                                          encoding="utf-8")
    return ["sceneqa_pope", "sceneqa_vqa"]

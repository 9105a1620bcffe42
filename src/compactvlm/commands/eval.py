"""compactvlm eval --benchmark NAME --data DIR --out DIR [model options]"""

from __future__ import annotations

import argparse
import json


def add_parser(sub) -> None:
    p = sub.add_parser("eval", help="evaluate a model on a benchmark (SceneQA or real benchmarks on disk)",
                       description="Batched greedy generation over a benchmark; answers are written incrementally to "
                                   "OUT/predictions.jsonl (an interrupted run resumes), metrics to OUT/metrics.json.")
    p.add_argument("--benchmark", required=True, help="sceneqa, gqa, pope, textvqa, scienceqa, mme, mmbench, vqav2, vizwiz")
    p.add_argument("--data", required=True, help="benchmark folder (for SceneQA: the folder `data build` wrote)")
    p.add_argument("--split", default=None, help="SceneQA split: test (default) or val")
    p.add_argument("--out", required=True, help="output folder for predictions and metrics")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--limit", type=int, default=None, help="only the first N questions")
    p.add_argument("--max-new-tokens", type=int, default=12)
    p.add_argument("--no-resume", action="store_true", help="start over instead of resuming")
    p.add_argument("--name", default=None, help="run name stored with the metrics (default: method + tokens)")
    p.add_argument("--quiet", action="store_true")
    from ._common import add_model_args

    add_model_args(p)
    p.set_defaults(func=run)


def make_answer_fn(model, data_dir: str | None, max_new_tokens: int = 12):
    """EvalItems -> answers with the model: ``compactvlm.evaluate.answer.make_answer_fn`` (kept here for callers)."""
    from ..evaluate.answer import make_answer_fn as library_answer_fn

    return library_answer_fn(model, data_dir, max_new_tokens)


def run(args: argparse.Namespace) -> int:
    import torch

    from ..errors import CompactVLMError
    from ..evaluate.harness import evaluate
    from ._common import model_from_args

    if args.batch_size < 1:
        raise CompactVLMError(f"--batch-size must be >= 1, got {args.batch_size}", "use e.g. 8")
    if args.threads:
        torch.set_num_threads(args.threads)
    model = model_from_args(args, progress=not args.quiet)
    tokens = model.num_image_tokens()
    method = args.reduce or model.compressor.registry_name
    # FastV keeps all tokens in the prompt and prunes to its budget inside the LLM
    kept = args.budget if getattr(model.reduction, "in_llm", False) and args.budget else tokens
    run_info = {"name": args.name or f"{method}-{kept}", "method": method, "vision_tokens": tokens,
                "compressor": model.compressor.registry_name, "compressor_params": dict(model.compressor.params),
                "reduce": args.reduce, "budget": args.budget, "checkpoint": args.checkpoint}
    kw = {"split": args.split} if args.split else {}
    metrics = evaluate(args.benchmark, args.data, make_answer_fn(model, args.data, args.max_new_tokens), args.out,
                       batch_size=args.batch_size, resume=not args.no_resume, limit=args.limit,
                       progress=not args.quiet, run_info=run_info, **kw)
    from ..evaluate.report import results_table

    try:
        print(results_table([metrics]))
    except Exception:  # noqa: BLE001 - the table is a convenience; the JSON is the result
        print(json.dumps({k: v for k, v in metrics.items() if not isinstance(v, (dict, list))}, indent=1))
    print(f"vision tokens: {tokens}  metrics: {args.out}/metrics.json")
    return 0

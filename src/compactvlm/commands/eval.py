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
    p.add_argument("--no-resume", action="store_true",
                   help="start over instead of resuming (needed when --out holds another model's answers)")
    p.add_argument("--name", default=None, help="run name stored with the metrics (default: method + tokens)")
    p.add_argument("--rules", choices=("llava", "lmms-eval"), default="llava",
                   help="scoring rules: llava (LLaVA's evaluation scripts, default) or lmms-eval (lmms-eval 0.7.3's "
                        "tasks); recorded in metrics.json, see docs/metrics.md")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--control", choices=["shuffled", "blank"], default=None,
                   help="a blind control: answer every question with another question's image (shuffled: a fixed "
                        "permutation of the images without fixed points) or a blank image")
    p.add_argument("--with-controls", action="store_true",
                   help="also run the shuffled and blank controls (into OUT/control-shuffled, OUT/control-blank) and "
                        "print real vs control per family with paired bootstrap CIs (OUT/blind_gap.json)")
    p.add_argument("--feature-cache", default=None, metavar="DIR",
                   help="keep the frozen encoder's blocks of each image on disk in DIR, so that evaluations of other "
                        "checkpoints with the same encoder (and the controls) run no encoder on those images "
                        "(default: kept in memory for this command only)")
    from ._common import add_model_args

    add_model_args(p)
    p.set_defaults(func=run)


def make_answer_fn(model, data_dir: str | None, max_new_tokens: int = 12, feature_cache: str | None = None):
    """EvalItems -> answers with the model: ``compactvlm.evaluate.answer.make_answer_fn`` (kept here for callers);
    ``feature_cache``: a folder for the frozen encoder's blocks of each image (else they are kept in memory)."""
    from ..evaluate.answer import make_answer_fn as library_answer_fn
    from ..model.features import ImageFeatureCache

    return library_answer_fn(model, data_dir, max_new_tokens,
                             features=ImageFeatureCache(root=feature_cache) if feature_cache else True)


def run(args: argparse.Namespace) -> int:
    from ..errors import CompactVLMError

    if args.batch_size < 1:
        raise CompactVLMError(f"--batch-size must be >= 1, got {args.batch_size}", "use e.g. 8")
    if args.max_new_tokens < 1:
        raise CompactVLMError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}", "use e.g. 12")
    if args.control and args.with_controls:
        raise CompactVLMError("--control and --with-controls exclude each other",
                              "use --with-controls for real + both controls, or --control NAME for one control run")
    if args.with_controls and args.benchmark not in ("sceneqa", "sceneqa-val"):
        raise CompactVLMError("--with-controls prints per-family CIs for SceneQA only",
                              "run the controls of other benchmarks one by one with --control shuffled|blank")
    # the benchmark, its images and the output folder are checked before the (slow) model load
    from ..evaluate.benchmarks.base import get_benchmark
    from ..evaluate.harness import hold_run, run_identity

    from ._common import setup_runtime

    setup_runtime(args)  # --threads set, --device checked
    reader = get_benchmark(args.benchmark, args.data, rules=args.rules,
                           **({"split": args.split} if args.split else {}))
    items = reader.items()
    reader.check_image_paths(items)
    from ..data.llava import control_tokens

    for it in items:
        found = control_tokens(it.prompt)
        if found or it.prompt.count("<image>") > 1:
            raise CompactVLMError(f"question {it.question_id!r} of {args.data} contains control text "
                                  f"{', '.join(found) or '<image> twice'}",
                                  "remove chat-template markers from the benchmark's questions (they would be read "
                                  "as turn markers, not text)")
    producer = eval_producer(args)
    with hold_run(args.out, run_identity(reader, producer, args.control), resume=not args.no_resume):
        return _run(args, reader, producer)


def eval_producer(args: argparse.Namespace) -> dict:
    """What produces the answers, as run.json records it (a resume with another producer is refused)."""
    from pathlib import Path

    from ..errors import CompactVLMError
    from ..model.manifest import folder_digest
    from ._common import compressor_params

    ck = args.checkpoint
    if ck and not Path(ck).is_dir():
        raise CompactVLMError(f"checkpoint folder not found: {ck}", "pass a folder written by `compactvlm train`")
    params = compressor_params(args)  # parses a --compressor / --reduce spec first
    return {"checkpoint_digest": folder_digest(ck) if ck else None, "encoder": args.encoder, "llm": args.llm,
            "compressor": args.compressor, "compressor_params": params, "reduce": args.reduce,
            "reduce_params": args.reduce_params, "budget": args.budget,
            "decoding": {"greedy": True, "max_new_tokens": args.max_new_tokens}}


def _run(args: argparse.Namespace, reader, producer: dict) -> int:
    from ..errors import CompactVLMError
    from ..evaluate.harness import evaluate
    from ._common import model_from_args

    model = model_from_args(args, progress=not args.quiet)
    tokens = model.num_image_tokens()
    method = args.reduce or model.compressor.registry_name
    # FastV keeps all tokens in the prompt and prunes to its budget inside the LLM
    kept = args.budget if (model.reduction is not None and model.reduction.in_llm) and args.budget else tokens
    run_info = {"name": args.name or f"{method}-{kept}", "method": method, "vision_tokens": tokens,
                "compressor": model.compressor.registry_name, "compressor_params": dict(model.compressor.params),
                "reduce": args.reduce, "budget": args.budget, "checkpoint": args.checkpoint}
    if args.control:
        run_info["name"] += f"-control-{args.control}"
    if (args.control or args.with_controls) and model.compressor.wants_given_masks:
        raise CompactVLMError("blind controls are not defined for a compressor that reads the given object masks "
                              "(the masks would still show where the objects are)", "evaluate it without a control")
    answer = make_answer_fn(model, args.data, args.max_new_tokens, args.feature_cache)
    metrics = evaluate(reader, args.data, answer, args.out, batch_size=args.batch_size, resume=not args.no_resume,
                       limit=args.limit, progress=not args.quiet, run_info=run_info, producer=producer,
                       control=args.control)
    from ..evaluate.report import results_table

    try:
        print(results_table([metrics]))
    except Exception:  # noqa: BLE001 - the table is a convenience; the JSON is the result
        print(json.dumps({k: v for k, v in metrics.items() if not isinstance(v, (dict, list))}, indent=1))
    print(f"vision tokens: {tokens}  metrics: {args.out}/metrics.json")
    line = baselines_line(reader, args)  # what guessing scores, beside what the model scored
    if line:
        print(line)
    if args.with_controls:
        print(blind_controls(args, reader, answer, run_info, producer))
    return 0


def baselines_line(reader, args: argparse.Namespace) -> str | None:
    """Chance / majority per family of the questions run (where the benchmark knows them), and, for a real-image
    run without controls, that its accuracies alone do not show the model reads the image."""
    items = reader.items()[: args.limit] if args.limit else reader.items()
    base = reader.baselines(items)
    if not base:
        return None
    from ..evaluate.report import baselines_text

    line = baselines_text(base)
    if not args.control and not args.with_controls:
        line += ("\nno blind control in this run: these scores alone do not show that the model reads the image; "
                 "add --with-controls (the same questions with shuffled and with blank images, paired CIs)")
    return line


def blind_controls(args: argparse.Namespace, reader, answer, run_info: dict, producer: dict) -> str:
    """Run the shuffled and blank controls next to the finished real run and return the per-family table."""
    from pathlib import Path

    from ..evaluate.benchmarks.base import write_json
    from ..evaluate.controls import format_blind_table
    from ..evaluate.harness import run_controls

    out = Path(args.out)
    gap = run_controls(reader, answer, out, {c: out / f"control-{c}" for c in ("shuffled", "blank")},
                       run_info=run_info, batch_size=args.batch_size, resume=not args.no_resume, limit=args.limit,
                       progress=not args.quiet, producer=producer)["gap"]
    write_json(out / "blind_gap.json", gap)
    return ("blind controls (real minus control; 95% CI: paired bootstrap over test images; the model sees on a "
            "family where real - shuffled is above 0)\n" + format_blind_table(gap) + f"\nwritten: {out}/blind_gap.json")

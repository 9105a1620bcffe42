"""compactvlm study run|status|report|compare|export --plan configs/study/sceneqa_cpu.yaml"""

from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    p = sub.add_parser("study", help="run the papers' experiments on SceneQA and write docs/results.md",
                       description="`run` trains/evaluates/measures each (row, seed) of a plan and writes one result "
                                   "JSON per run (existing ones are skipped, interrupted runs resume); `report` builds "
                                   "the Markdown tables and plots from those files.")
    ssub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    r = ssub.add_parser("run", help="run rows of a study plan")
    r.add_argument("--plan", required=True, help="study plan YAML (configs/study/)")
    r.add_argument("--rows", default=None, help="comma-separated row names (default: all, in plan order)")
    r.add_argument("--seeds", default=None, help="comma-separated seeds (default: the plan's)")
    r.add_argument("--force", action="store_true",
                   help="redo (row, seed) pairs that already have a result: from the model on disk (re-scored, "
                   "cost re-measured), or, for a trained row whose model is gone, trained again")
    r.add_argument("--keep-going", action="store_true", help="on a failing row, report it and go on")
    r.add_argument("--device", default=None, choices=["cpu", "cuda"], help="override the plan's device")
    r.add_argument("--threads", type=int, default=None,
                   help="override the plan's torch threads per process (e.g. 2 to give one row both cores of a 2-core "
                        "machine; results record the threads used)")
    r.add_argument("--allow-emulated-bf16", action="store_true",
                   help="run a plan that answers in bfloat16 (eval_dtype) on a device without native bf16 anyway "
                        "(refused by default: its answers are ~5.5x slower there, its training in fp32)")
    r.add_argument("--quiet", action="store_true")
    r.set_defaults(func=run)
    st = ssub.add_parser("status",
                         help="where each (row, seed) stands: done, training (step, checkpoint), waiting, blocked",
                         description="Read from the plan's result and run folders only (no model load, nothing "
                                     "written): each (row, seed)'s state, and for one in training its stage, last "
                                     "step and the checkpoint a restart resumes from; last, the compute the listed "
                                     "pairs still need (a last stage's measured pace, else the plan's cost_hint).")
    st.add_argument("--plan", required=True)
    st.add_argument("--rows", default=None, help="comma-separated row names (default: all)")
    st.add_argument("--seeds", default=None, help="comma-separated seeds (default: the plan's)")
    st.add_argument("--pending", action="store_true", help="leave out the (row, seed) pairs that are done")
    st.set_defaults(func=status)
    rep = ssub.add_parser("report", help="write the results Markdown + plots from the result files")
    rep.add_argument("--plan", required=True)
    rep.add_argument("--out", default=None, help="Markdown file (default: the plan's `report`)")
    rep.add_argument("--force", action="store_true",
                     help="replace the Markdown file even if another plan's report (or a hand-written file) is there")
    rep.set_defaults(func=report)
    cp = ssub.add_parser("compare", help="paired comparisons: row A against row(s) B or against A's blind control",
                         description="A's answers minus B's on the same test questions, per SceneQA family and on the "
                                     "family mean, with the test-image bootstrap CI the report uses; from the result "
                                     "files only (no model load). B may be a control name (e.g. shuffled): A against "
                                     "its own answers with the images replaced. Several B: one table each, in order. "
                                     "Each side's scores stand beside its own blind control's (where its result file "
                                     "has those answers) and the test split's chance / majority.")
    cp.add_argument("--plan", required=True)
    cp.add_argument("a", metavar="A", help="row, or ROW@SEED")
    cp.add_argument("b", metavar="B", nargs="+", help="row, ROW@SEED, or a blind control of A (shuffled); several allowed")
    cp.add_argument("--seed", type=int, default=None, help="the seed of a side without @SEED (default: the plan's first)")
    cp.add_argument("--plan-b", default=None,
                    help="B's plan (default: --plan), e.g. the same row at another training length; it must share "
                         "the SceneQA build")
    cp.add_argument("--json", action="store_true", help="print the comparison as JSON")
    cp.set_defaults(func=compare)
    ex = ssub.add_parser("export", help="copy trained rows' compressor weights (the demo's shipped weights)")
    ex.add_argument("--plan", required=True)
    ex.add_argument("--rows", required=True, help="comma-separated trained rows")
    ex.add_argument("--seed", type=int, default=0)
    ex.add_argument("--out", default=None, help="default: the package's assets/demo folder")
    ex.add_argument("--dtype", default="float16", choices=["float16", "bfloat16", "float32"])
    ex.set_defaults(func=export)


def _ints(text: str, what: str) -> list[int]:
    from ..errors import CompactVLMError

    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise CompactVLMError(f"--{what} {text!r} is not a comma-separated list of integers", "write e.g. 0,1,2") from None


def _row_names(plan, text: str | None) -> list[str] | None:
    """``--rows``'s names (None: not given); an unknown name fails before any work."""
    if not text:
        return None
    names = [r.strip() for r in text.split(",")]
    for name in names:
        plan.row(name)
    return names


def run(args: argparse.Namespace) -> int:
    from ..errors import CompactVLMError
    from ..study import load_plan, result_path, run_row
    from ..study.progress import StudyProgress, build_queue
    from ..study.run import check_stages, emulated_bf16
    from ..study.source import forced_retraining, missing_source

    plan = load_plan(args.plan)
    if args.device:
        plan.device = args.device
    if args.threads is not None:
        if args.threads < 1:
            raise CompactVLMError(f"--threads {args.threads}: need at least 1", "pass e.g. --threads 2")
        plan.threads = args.threads
    if plan.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise CompactVLMError("--device cuda but torch sees no CUDA device", "run on a GPU machine or use --device cpu")
    rows = _row_names(plan, args.rows) or [r.name for r in plan.rows]
    _, warnings = check_stages(plan)  # every stage's config loads before any work
    for w in warnings:
        print(f"[study] warning: {w}", flush=True)
    seeds = _ints(args.seeds, "seeds") if args.seeds else plan.seeds
    pairs = []
    for seed in seeds:
        for name in rows:
            if seed not in plan.row_seeds(name, [seed]):
                print(f"[study] {name} seed {seed}: not one of the row's seeds {plan.row(name).seeds}", flush=True)
                continue
            if result_path(plan, name, seed).exists() and not args.force:
                print(f"[study] {name} seed {seed}: already done", flush=True)
                continue
            pairs.append((name, seed))
    slow = emulated_bf16(plan) if pairs else None
    if slow and not args.allow_emulated_bf16:
        raise CompactVLMError(slow, "run the plan on a machine with native bf16 (lscpu lists amx_bf16 or avx512_bf16), "
                                    "or add --allow-emulated-bf16 to run it here anyway (eval_dtype float32 would not "
                                    "pair with the plan's bfloat16 answers)")
    if slow:
        print(f"[study] warning: {slow}", flush=True)
    progress = StudyProgress(plan, build_queue(plan, pairs))
    failed = []
    for i, (name, seed) in enumerate(pairs):
        print(progress.start(i), flush=True)
        gone = missing_source(plan, name, seed)
        if gone is not None and gone.reproducible:  # run_row refuses the others itself
            print(f"[study] warning: {gone.message}", flush=True)
        retrain = forced_retraining(plan, name, seed) if args.force else None
        if retrain:
            print(f"[study] warning: {retrain}", flush=True)
        try:
            path = run_row(plan, name, seed, progress=not args.quiet, force=args.force)
        except CompactVLMError as e:
            print(progress.finish(i, failed=True), flush=True)
            if not args.keep_going:
                raise
            failed.append((name, seed, str(e)))
            print(f"[study] {name} seed {seed} FAILED: {e}", flush=True)
            continue
        print(progress.finish(i), flush=True)
        print(f"[study] {name} seed {seed}: wrote {path}", flush=True)
    for name, seed, why in failed:
        print(f"[study] failed: {name} seed {seed}: {why}")
    return 1 if failed else 0


def status(args: argparse.Namespace) -> int:
    from collections import Counter

    from ..study import load_plan
    from ..study.status import compute_left, plan_status

    plan = load_plan(args.plan)
    pairs = plan_status(plan, _row_names(plan, args.rows), _ints(args.seeds, "seeds") if args.seeds else None)
    counts = Counter(p.state for p in pairs)
    shown = [p for p in pairs if not (args.pending and p.state == "done")]
    w = max([len(p.row) for p in shown] + [3])
    for p in shown:
        print(f"{p.row:<{w}}  s{p.seed}  {p.state:<11}  {p.detail}".rstrip())
    print(f"{len(pairs)} (row, seed) pairs: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    print(compute_left(pairs))
    if counts.get("done", 0) < len(pairs):
        from ..study.run import emulated_bf16

        slow = emulated_bf16(plan)
        if slow:
            print(f"this machine: {slow}; `study run` refuses the plan here (--allow-emulated-bf16 overrides)")
    return 0


def report(args: argparse.Namespace) -> int:
    from ..study import load_plan, write_report

    plan = load_plan(args.plan)
    out = write_report(plan, args.plan, args.out, force=args.force)
    print(f"wrote {out}")
    return 0


def compare(args: argparse.Namespace) -> int:
    import json

    from ..study import load_plan
    from ..study.pairwise import compare_pair, format_pair, parse_side

    plan = load_plan(args.plan)
    plan_b = load_plan(args.plan_b) if args.plan_b else None
    seed = args.seed if args.seed is not None else plan.seeds[0]
    a, seed_a = parse_side(args.a, seed)
    sides = [parse_side(b, seed) for b in args.b]  # every B parsed before any comparison runs
    res = [compare_pair(plan, args.plan, a, seed_a, b, seed_b, plan_b=plan_b, plan_b_file=args.plan_b)
           for b, seed_b in sides]
    if args.json:
        print(json.dumps(res[0] if len(res) == 1 else res, indent=1))  # several B: a list, in the order given
    else:
        print("\n\n".join(format_pair(r) for r in res))
    return 0


def export(args: argparse.Namespace) -> int:
    from ..study import export_rows, load_plan
    from .demo import assets_dir

    plan = load_plan(args.plan)
    for p in export_rows(plan, [r.strip() for r in args.rows.split(",")], args.seed, args.out or assets_dir(),
                         args.dtype):
        print(f"exported {p}")
    return 0

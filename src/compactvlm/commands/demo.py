"""compactvlm demo: the main job on the embedded default (packaged models + built-in benchmark).

Builds a small SceneQA test split, loads the full-token baseline (``mlp2x_gelu``, 256 tokens) and STF k=2 E=1 (64
tokens) with the weights shipped in ``compactvlm/assets/demo/`` (compressor + a LoRA adapter extracted from the fully
trained LLM, from the grounding recipe of docs/recipe.md; written by ``scripts/ship_demo_weights.py``, each folder's
``provenance.json`` says how it was trained and what it scored on the 425-question test split), evaluates both with the SceneQA metrics
and prints accuracy per question family, PRT, vision tokens, LLM prefill FLOPs and TTFT side by side, with each model's
blind control beside it (the same questions with every image replaced by another question's image): a model sees
on a family only where real minus shuffled is above 0.
``--checkpoint-dir DIR`` uses other checkpoints (folders ``DIR/<row>``) in the same layout.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ROWS = ("full-mlp2x", "stf-k2e1")


def blind_verdict(sees: bool, point: float, n_questions: int) -> str:
    """How a model's family-mean difference to its blind control reads: ``sees`` (the controls' rule, CI above 0)
    -> "sees"; a ``point`` above 0 whose CI reaches 0 -> "not resolved" (too few questions to tell, which is not
    evidence of blindness); else "does NOT beat its blind control"."""
    if sees:
        return "sees"
    if point > 0:
        return (f"not resolved on {n_questions} questions (the CI includes 0; --images raises the split, and the "
                "shipped numbers below come from a larger one)")
    return "does NOT beat its blind control"


def assets_dir() -> Path:
    """The shipped checkpoints' folder (``model.shipped``; also reachable as ``--checkpoint demo:NAME``)."""
    from ..model.shipped import shipped_dir

    return shipped_dir()


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help="the main job: full-token vs STF on SceneQA with the packaged models",
                       description=__doc__.split("\n\n", 1)[1] if __doc__ else None)
    p.add_argument("--images", type=int, default=40, help="SceneQA test images (default 40, ~85 questions)")
    p.add_argument("--seed", type=int, default=0, help="SceneQA build seed")
    p.add_argument("--out", default=None, help="work folder (default: <cache>/demo)")
    p.add_argument("--checkpoint-dir", default=None, help="folder holding full-mlp2x/ and stf-k2e1/ checkpoints")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    p.add_argument("--repeats", type=int, default=7,
                   help="interleaved timing rounds of the two models' TTFT (default 7)")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                   help="inference dtype (auto: bfloat16 on a CUDA GPU with bf16, else float32; bfloat16 on this CPU halves TTFT but changes 10-19%% of the current weak models' answers)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..data.images import load_image
    from ..data.sceneqa import build_sceneqa
    from ..errors import CompactVLMError
    from ..evaluate.harness import evaluate_with_controls
    from ..evaluate.prt import prt, seen_datasets
    from ..model.checkpoint import load_pretrained
    from ..efficiency.timing import compare_ttft
    from ..efficiency.cost import measure_cost
    from ..runtime import set_threads
    from ..zoo.cache import cache_dir
    from .eval import make_answer_fn

    if args.images < 1:
        raise CompactVLMError(f"--images must be >= 1, got {args.images}", "use e.g. --images 40")
    if args.repeats < 1:
        raise CompactVLMError(f"--repeats must be >= 1, got {args.repeats}", "use e.g. --repeats 7")
    set_threads(args.threads)
    src = Path(args.checkpoint_dir) if args.checkpoint_dir else assets_dir()
    for row in ROWS:
        if not (src / row / "compactvlm.json").exists():
            raise CompactVLMError(f"demo checkpoint {src / row} is missing",
                                  "reinstall compactvlm, or train it: compactvlm study run --plan "
                                  "configs/study/sceneqa_cpu.yaml --rows full-mlp2x,stf-k2e1 --seeds 0")
    work = Path(args.out) if args.out else cache_dir() / "demo"
    data = work / f"sceneqa-s{args.seed}-n{args.images}"
    if not (data / "manifest.json").exists():  # build_sceneqa replaces only a (partial) build of its own
        build_sceneqa(data, seed=args.seed, sizes={"caption": 0, "train": 0, "val": 0, "test": args.images},
                      progress=not args.quiet)
    first = json.loads((data / "test_questions.jsonl").read_text().splitlines()[0])
    probe = load_image(data / first["image"])
    results, models = {}, {}
    for row in ROWS:
        model = load_pretrained(src / row, progress=not args.quiet)
        dtype = model.set_dtype(args.dtype)
        prov = src / row / "provenance.json"
        info = {"name": row, "vision_tokens": model.num_image_tokens(), "method": model.compressor.registry_name,
                "checkpoint": str(src / row)}
        answer = make_answer_fn(model, str(data))
        # resume=False: the demo's own folders are answered afresh every run, so answers cached by an earlier run
        # (other shipped weights, another --checkpoint-dir) are never shown as this run's
        ev = evaluate_with_controls("sceneqa", str(data), answer, work / "eval" / f"{row}-{dtype}",
                                    {"shuffled": work / "eval" / f"{row}-{dtype}-shuffled"}, run_info=info,
                                    resume=False, batch_size=args.batch_size, progress=not args.quiet)
        metrics, blind, gap = ev["real"], ev["controls"]["shuffled"], ev["gap"]
        cost = measure_cost(model, probe, first["text"], repeats=0)  # FLOPs; the time below, interleaved
        results[row] = {"tokens": model.num_image_tokens(), "metrics": metrics, "cost": cost, "blind": blind,
                        "gap": gap,
                        "provenance": json.loads(prov.read_text()) if prov.exists() else None}
        models[row] = model
    # both models' TTFT in interleaved rounds on the same image and question: the ratio is taken per round
    flops = {r: results[r]["cost"]["flops_total"] for r in ROWS}
    cmp = compare_ttft([(r, models[r]) for r in ROWS], [probe], first["text"], repeats=args.repeats, warmup=1,
                       ideal={r: flops[ROWS[0]] / flops[r] for r in ROWS[1:]}, progress=not args.quiet,
                       desc="TTFT rounds")
    for r in ROWS:
        results[r]["cost"].update(ttft_ms=cmp.wall_ms[r]["median"], ttft_ms_min=cmp.wall_ms[r]["min"],
                                  ttft_ms_max=cmp.wall_ms[r]["max"], ttft_cpu_ms=cmp.cpu_ms[r]["median"])
    del models
    ref = results[ROWS[0]]["metrics"]["components"]
    fams = list(ref)
    print(f"\nSceneQA test split: {args.images} images, {results[ROWS[0]]['metrics']['n']} questions "
          f"(seed {args.seed}); DINOv2-S/14 + SmolLM2-135M-Instruct, weights from {src}")
    head = f"{'':<28}" + "".join(f"{r:>14}{'blind':>8}" for r in ROWS)
    print(head)
    print("-" * len(head))

    def blind(r, f):  # the shuffled-image control, in the same units as the real column
        m = results[r]["blind"]
        v = m["family_mean"] if f == "family_mean" else m["components"].get(f)
        return f"{v:>8.1f}" if v is not None else f"{'':>8}"

    def line(label, cells, tail=""):  # one table row: per model its value (14 wide) and its blind control (8 wide)
        print(f"{label:<28}" + "".join(f"{v:>14}{b:>8}" for v, b in cells) + tail)

    for f in fams:
        line(f.split("/")[-1], [(f"{results[r]['metrics']['components'][f]:.1f}", blind(r, f)) for r in ROWS])
    line("family mean", [(f"{results[r]['metrics']['family_mean']:.1f}", blind(r, "family_mean")) for r in ROWS])
    # PRT over the families where the full-token model beats its blind control (as the study reports it)
    scope = seen_datasets([results[ROWS[0]]["gap"]["sees"]])
    line("PRT vs full tokens (%)",
         [(f"{prt(results[r]['metrics']['components'], ref, scope)['prt']:.1f}" if scope != [] else "n/a", "")
          for r in ROWS],
         f"(over {', '.join(f.split('/')[-1] for f in scope)}: the families {ROWS[0]} sees)" if scope else
         f"({ROWS[0]} beats its blind control on no family)" if scope == [] else "")
    line("vision tokens", [(f"{results[r]['tokens']:d}", "") for r in ROWS])
    line("LLM prefill GFLOPs", [(f"{results[r]['cost']['flops_llm'] / 1e9:.2f}", "") for r in ROWS])
    line("vision GFLOPs", [(f"{results[r]['cost']['flops_vision'] / 1e9:.2f}", "") for r in ROWS])
    line("TTFT ms (median)", [(f"{results[r]['cost']['ttft_ms']:.0f}", "") for r in ROWS])
    line("TTFT CPU ms (median)", [(f"{results[r]['cost']['ttft_cpu_ms']:.0f}", "") for r in ROWS])
    print(f"\nSTF k=2 answers from {results[ROWS[1]]['tokens']} instead of {results[ROWS[0]]['tokens']} vision tokens "
          f"({results[ROWS[0]]['cost']['flops_llm'] / results[ROWS[1]]['cost']['flops_llm']:.2f}x fewer LLM FLOPs); "
          f"first token on this CPU ({dtype}, {cmp.rounds} interleaved rounds, median of per-round ratios): "
          f"{cmp.describe(ROWS[1])}")
    for w in cmp.warnings:
        print(f"warning: {w}")
    print("blind = the same model and questions with every image replaced by another question's image (a fixed "
          "shuffle); a model sees where it beats its blind control:")
    for r in ROWS:
        g = results[r]["gap"]
        d = g["controls"]["shuffled"]["family_mean"]["delta"]
        seen = [f for f, ok in g["sees"].items() if ok and f != "family_mean"]
        print(f"  {r}: family mean real - blind {d[0]:+.1f} [95% CI {d[1]:+.1f}, {d[2]:+.1f}] -> "
              + blind_verdict(g["sees"]["family_mean"], d[0], results[r]["metrics"]["n"])
              + (f"; families with a CI above 0: {', '.join(seen)}" if seen else ""))
    for r in ROWS:  # what each shipped model scored, with its control, on the larger split it was shipped with
        t = (results[r]["provenance"] or {}).get("test")
        if t:
            d = t["gap"]["controls"]["shuffled"]["family_mean"]["delta"]
            print(f"  {r} as shipped ({t['n_questions']} questions of {t['data']}/{t['split']}, provenance.json): "
                  f"family mean {t['real']['family_mean']:.1f} vs {t['shuffled']['family_mean']:.1f} blind, "
                  f"{d[0]:+.1f} [95% CI {d[1]:+.1f}, {d[2]:+.1f}]")
    from ..evaluate.benchmarks.base import get_benchmark
    from ..evaluate.report import baselines_text

    reader = get_benchmark("sceneqa", str(data))
    chance = reader.baselines(reader.items())  # the build's manifest: this test split's chance and majority
    if chance:
        print(baselines_text(chance))
    per_family = json.loads((data / "manifest.json").read_text()).get("counts", {}).get("test", {}).get("per_family", {})
    if per_family:
        few = min(per_family.values())
        print(f"note: as few as {few} questions per family here, so per-family differences of a few questions are "
              f"noise; docs/results_v2_900.md has the study of these models' recipe on 2,125 questions (--images "
              f"raises this demo's size).")
    out = work / "demo_results.json"
    summary = {r: {"tokens": v["tokens"], "components": v["metrics"]["components"],
                   "family_mean": v["metrics"]["family_mean"], "cost": v["cost"],
                   "blind_control": {"components": v["blind"]["components"], "family_mean": v["blind"]["family_mean"],
                                     "gap": v["gap"]}} for r, v in results.items()}
    summary["ttft_comparison"] = cmp.to_dict()
    out.write_text(json.dumps(summary, indent=1))
    print(f"results: {out}")
    return 0

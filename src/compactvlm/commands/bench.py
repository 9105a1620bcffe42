"""compactvlm bench [--model PRESET|PATH] [--compressor ROW ...] [--batch N] [--device cpu|cuda]

Per row (``COMPRESSOR[:k=v,...][+REDUCTION[:k=v,...]]``): vision tokens, FLOPs split into vision encoder /
compressor / LLM prefill (``FlopCounterMode`` on the meta device, per sample; plus the LLM prefill over the
vision tokens alone), then TTFT (encode + compress + prefill + first token; median and spread), decode
tokens/s, peak memory and KV-cache bytes on the device, and the ratios against the full-token model
(``mlp2x_gelu``, always measured in the same run): TTFT speedup next to the FLOPs-ideal speedup, and the
compressor's share of TTFT. Writes JSON (``--json``) and optionally a PNG (``--plot``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..spec import REFERENCE, default_comparison


def add_parser(sub) -> None:
    p = sub.add_parser(
        "bench", help="FLOPs, time to first token, decode speed and memory per compressor",
        description="Benchmark compressors and training-free reductions on one model shape: FLOPs split into "
                    "encoder / compressor / LLM prefill (FlopCounterMode on the meta device, no weights), TTFT "
                    "(median and spread), decode tokens/s, peak memory and KV-cache bytes, and the TTFT speedup "
                    "versus the full-token model next to the FLOPs-ideal speedup.")
    from ._common import checkpoint_arg

    p.add_argument("--model", default="default", type=checkpoint_arg,
                   help="preset (default, llava-1.5-7b), a compactvlm checkpoint folder (or shipped demo:NAME) or an "
                        "HF llava-style folder")
    p.add_argument("--compressor", action="extend", nargs="+", default=[], metavar="ROW",
                   help="row COMPRESSOR[:k=v,...][+REDUCTION[:k=v,...]], e.g. stf:k=2,E=1 or "
                        "mlp2x_gelu+fastv:budget=64,k=2; repeatable (default: a set of compressors and reductions "
                        "at a quarter of the patch tokens). The full-token reference mlp2x_gelu is always added.")
    p.add_argument("--batch", type=int, default=1, help="images per timed batch (default 1)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (timings)")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                   help="weights/activations (auto: bfloat16 on a CUDA GPU with bf16 and for --flops-only, else "
                        "float32)")
    p.add_argument("--random-weights", action="store_true",
                   help="random weights of the preset's shapes (timings need no trained weights; the only choice "
                        "for presets without offline weights, e.g. llava-1.5-7b)")
    p.add_argument("--flops-only", action="store_true", help="count FLOPs only (meta device: no weights, seconds)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads, fixed for the run (default: torch's)")
    p.add_argument("--warmup", type=int, default=2, help="untimed runs before timing (default 2)")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per row; the median is reported (default 5)")
    p.add_argument("--decode-tokens", type=int, default=16,
                   help="tokens generated to time decoding (default 16; 0 skips the decode timing)")
    p.add_argument("--text-tokens", type=int, default=40,
                   help="text tokens of the prompt when the model has no tokenizer (random/meta weights; default 40)")
    p.add_argument("--question", default="Describe the image in detail.",
                   help="question of the prompt when the model has a tokenizer (real weights)")
    p.add_argument("--json", default="bench.json", metavar="PATH", help="results file (default bench.json)")
    p.add_argument("--plot", default=None, metavar="PNG", help="also plot TTFT and FLOPs versus vision tokens")
    g = p.add_argument_group("evaluation throughput and bf16 parity (--answers)")
    g.add_argument("--answers", default=None, metavar="SCENEQA_DIR",
                   help="instead of the rows: answer this SceneQA split's questions with the packaged full-token "
                        "(256) and STF k=2 (64) models, fp32 plain generate vs fp32 / default-dtype shared-prefix "
                        "answering, interleaved; questions/s, identical answers, first-token logit difference, "
                        "and the full-token TTFT fp32 vs the default dtype")
    g.add_argument("--split", default="test", help="SceneQA split for --answers (default test)")
    g.add_argument("--limit", type=int, default=None, help="--answers: only the first N questions")
    g.add_argument("--eval-batch-size", type=int, default=8, help="--answers: questions per batch (default 8)")
    g.add_argument("--checkpoint-dir", default=None,
                   help="--answers: folder with full-mlp2x/ and stf-k2e1/ checkpoints (default: the packaged ones)")
    g.add_argument("--rows", default="full-mlp2x,stf-k2e1", help="--answers: which of those (comma-separated)")
    p.add_argument("--peer", action="store_true",
                   help="instead of the rows: the full-token checkpoint (full-mlp2x, packaged or --checkpoint-dir) "
                        "against transformers' LlavaForConditionalGeneration running the same modules, at 256 "
                        "(224 px) and 64 (112 px) image tokens, interleaved: our TTFT / HF's, and each "
                        "pipeline's measured/ideal 256 -> 64 speedup")
    p.set_defaults(func=run)


# ---- rows -------------------------------------------------------------------------------------------------
def default_rows(preset) -> list[str]:
    """``spec.default_comparison`` at the preset's patch count: the reference, the registry's default variants and
    every reduction at a quarter of the patch tokens (rows the model cannot run are left out by ``run``)."""
    h, w = preset.grid
    return default_comparison(h * w)


def _check_args(args) -> None:
    from ..errors import CompactVLMError

    for name, low in (("batch", 1), ("repeats", 1), ("warmup", 0), ("decode_tokens", 0), ("text_tokens", 0)):
        v = getattr(args, name)
        if v < low:
            raise CompactVLMError(f"--{name.replace('_', '-')} must be >= {low}, got {v}",
                                  f"use e.g. --{name.replace('_', '-')} {max(low, 1)}")
    from ..runtime import check_threads

    check_threads(args.threads)
    if args.flops_only and args.random_weights:
        raise CompactVLMError("--flops-only and --random-weights exclude each other",
                              "--flops-only builds no weights; drop one of them")
    if args.plot and not str(args.plot).lower().endswith(".png"):
        raise CompactVLMError(f"--plot {args.plot!r} is not a .png path", "write e.g. --plot bench.png")
    for flag, path, ours in (("--json", args.json, _our_report), ("--plot", args.plot, _our_plot)):
        if path and Path(path).exists() and not ours(Path(path)):
            raise CompactVLMError(f"{flag} {path} exists and is not a file compactvlm bench wrote",
                                  f"pass another {flag} path, or move that file away (nothing is overwritten "
                                  "but the bench's own earlier output)")


WRITER = "compactvlm bench"  # marks the bench's own JSON and PNG files: only those are replaced by a later run


def _our_report(p: Path) -> bool:
    import json

    try:
        obj = json.loads(p.read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(obj, dict) and obj.get("written_by") == WRITER


def _our_plot(p: Path) -> bool:
    from PIL import Image

    try:
        with Image.open(p) as im:
            return im.info.get("Software") == WRITER
    except (OSError, ValueError):
        return False


# ---- formatting -------------------------------------------------------------------------------------------
def _unit(v: float) -> tuple[float, str]:
    return (1e12, "TFLOPs") if v >= 1e12 else (1e9, "GFLOPs")


def _g(x: float) -> str:
    return f"{x:.2f}" if x >= 1 else f"{x:.3g}"


def _mib(b: int | None) -> str:
    return "n/a" if b is None else f"{b / 2**20:.1f}"


def format_table(header: list[str], rows: list[list[str]], left: int = 1) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    fmt = lambda cells: "  ".join(c.ljust(w) if i < left else c.rjust(w)  # noqa: E731
                                  for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([fmt(header), fmt(["-" * w for w in widths])] + [fmt(r) for r in rows])


def flops_table(results: list[dict], ref: dict) -> str:
    div, unit = _unit(ref["flops"]["total"])
    header = ["row", "vis tok", "equiv tok", "encoder", "compressor", "LLM prefill", "LLM vis-only", "total",
              "ideal x", "KV/sample MiB"]
    rows = []
    for r in results:
        f = r["flops"]
        rows.append([r["label"] + (" (ref)" if r is ref else ""), str(f["vision_tokens"]),
                     _g(f["equivalent_tokens"]), _g(f["encoder"] / div), _g(f["compressor"] / div),
                     _g(f["llm_prefill"] / div), _g(f["llm_vision_only"] / div), _g(f["total"] / div),
                     f"{r['ratios']['flops_ideal_speedup']:.2f}", _mib(f["kv_cache_bytes"])])
    return f"FLOPs per sample in {unit}\n" + format_table(header, rows)


def timing_table(results: list[dict], ref: dict) -> str:
    header = ["row", "vis tok", "TTFT ms", "p25-p75", "CPU ms", "encode", "compress", "LLM+1st", "speedup x",
              "rounds p25-p75", "CPU-time x", "ideal x", "meas/ideal", "comp %", "decode tok/s", "peak MiB", "KV MiB"]
    rows = []
    for r in results:
        t, q = r["timing"], r["ratios"]
        tt = t["ttft_ms"]
        dec = "n/a" if t["decode_tokens_per_s"] is None else f"{t['decode_tokens_per_s']:.1f}"
        rows.append([r["label"] + (" (ref)" if r is ref else ""), str(t["vision_tokens"]), f"{tt['median']:.1f}",
                     f"{tt['p25']:.1f}-{tt['p75']:.1f}", f"{t['cpu_ms']['median']:.1f}", f"{t['encode_ms']:.1f}",
                     f"{t['compress_ms']:.1f}", f"{t['llm_ms']:.1f}", f"{q['ttft_speedup']:.2f}",
                     f"{q['ttft_speedup_p25']:.2f}-{q['ttft_speedup_p75']:.2f}", f"{q['ttft_cpu_speedup']:.2f}",
                     f"{q['flops_ideal_speedup']:.2f}",
                     f"{q['measured_over_ideal']:.2f}", f"{100 * q['compressor_share_of_ttft']:.1f}", dec,
                     _mib(t["peak_memory_bytes"]), _mib(t["kv_cache_bytes"])])
    return format_table(header, rows)


def summary_lines(results: list[dict], ref: dict) -> list[str]:
    lines = []
    for r in results:
        q = r["ratios"]
        if r.get("cost_note"):
            lines.append(f"{r['label']}: {r['cost_note']}")
        t = r.get("timing")
        if t is None or r is ref:
            continue
        total = t["ttft_ms"]["median"]
        lines.append(
            f"{r['label']}: TTFT {total:.1f} ms vs {ref['timing']['ttft_ms']['median']:.1f} ms for {ref['label']} "
            f"-> {q['ttft_speedup']:.2f}x faster (median of per-round ratios; p25-p75 {q['ttft_speedup_p25']:.2f}-"
            f"{q['ttft_speedup_p75']:.2f}, CPU time {q['ttft_cpu_speedup']:.2f}x), FLOPs-ideal "
            f"{q['flops_ideal_speedup']:.2f}x "
            f"(measured/ideal {q['measured_over_ideal']:.2f}); compressor {100 * q['compressor_share_of_ttft']:.1f}% "
            f"of TTFT; time: encode {100 * t['encode_ms'] / total:.0f}%, compress {100 * t['compress_ms'] / total:.0f}%, "
            f"LLM prefill + first token {100 * t['llm_ms'] / total:.0f}%")
    return lines


def _label_points(ax, points: list[tuple[str, float, float]]) -> None:
    """Label (name, x, y) points. Points within 2% of the x range of each other share one label block beside the
    highest, names listed top to bottom in the order of their y (a dozen rows at 144 tokens would otherwise print
    over each other)."""
    span = max((abs(x) for _, x, _ in points), default=1.0) or 1.0
    clusters: list[list[tuple[str, float, float]]] = []
    for p in sorted(points, key=lambda p: p[1]):
        if clusters and p[1] - clusters[-1][0][1] <= 0.02 * span:
            clusters[-1].append(p)
        else:
            clusters.append([p])
    for c in clusters:
        c.sort(key=lambda p: -p[2])
        ax.annotate("\n".join(name for name, _, _ in c), (c[0][1], c[0][2]), fontsize=7 if len(c) == 1 else 6,
                    xytext=(4, 3 if len(c) == 1 else 0), textcoords="offset points", va="bottom" if len(c) == 1 else "top")


def plot(results: list[dict], path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    timed = [r for r in results if r.get("timing")]
    n = 2 if timed else 1
    fig, axes = plt.subplots(1, n, figsize=(6.5 * n, 4.6), squeeze=False)
    xs = [r["flops"]["equivalent_tokens"] for r in results]
    div, unit = _unit(max(r["flops"]["total"] for r in results))
    ax = axes[0][0]
    for key, name in (("total", "total to first token"), ("llm_prefill", "LLM prefill (prompt)"),
                      ("llm_vision_only", "LLM prefill (vision tokens only)")):
        ax.scatter(xs, [r["flops"][key] / div for r in results], label=name)
    _label_points(ax, [(r["label"], x, r["flops"]["total"] / div) for r, x in zip(results, xs)])
    ax.set_xlabel("vision tokens (FastV: equivalent)")
    ax.set_ylabel(unit + " per sample")
    ax.set_title("FLOPs (FlopCounterMode)")
    ax.margins(x=0.2, y=0.1)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    if timed:
        ax = axes[0][1]
        tx = [r["flops"]["equivalent_tokens"] for r in timed]
        med = [r["timing"]["ttft_ms"]["median"] for r in timed]
        lo = [m - r["timing"]["ttft_ms"]["p25"] for m, r in zip(med, timed)]
        hi = [r["timing"]["ttft_ms"]["p75"] - m for m, r in zip(med, timed)]
        ax.errorbar(tx, med, yerr=[lo, hi], fmt="o", capsize=3, label="TTFT median (p25-p75)")
        ax.scatter(tx, [r["timing"]["compress_ms"] for r in timed], marker="x", label="compressor time")
        _label_points(ax, [(r["label"], x, m) for r, x, m in zip(timed, tx, med)])
        ax.set_xlabel("vision tokens (FastV: equivalent)")
        ax.set_ylabel("ms")
        ax.set_title("time to first token")
        ax.margins(x=0.2, y=0.1)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120, metadata={"Software": WRITER})
    plt.close(fig)


def _no_cache_deprecation(record) -> bool:
    """Logging filter: drop transformers' `past_key_values` deprecation notice (FastV drives the layers with it)."""
    return "past_key_values" not in record.getMessage()


# ---- --answers: evaluation throughput and bf16 parity -----------------------------------------------------------
def run_answers(args: argparse.Namespace) -> int:
    from pathlib import Path

    import torch

    from ..efficiency.answers import eval_throughput, ttft_by_dtype
    from ..efficiency.timing import format_comparison
    from ..errors import CompactVLMError
    from ..evaluate.benchmarks import get_benchmark
    from ..model.checkpoint import load_pretrained
    from .demo import assets_dir

    if args.limit is not None and args.limit < 1:
        raise CompactVLMError(f"--limit must be >= 1, got {args.limit}", "leave it out to answer every question")
    src = Path(args.checkpoint_dir) if args.checkpoint_dir else assets_dir()
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    for r in rows:
        if not (src / r / "compactvlm.json").exists():
            raise CompactVLMError(f"checkpoint {src / r} is missing", "pass --checkpoint-dir with full-mlp2x/ and "
                                  "stf-k2e1/ folders, or --rows naming folders that exist there")
    reader = get_benchmark("sceneqa", args.answers, split=args.split)  # a bad folder fails before any model load
    items = reader.items()[: args.limit] if args.limit else reader.items()
    models = [(r, load_pretrained(src / r, progress=False)) for r in rows]
    print(f"answering {len(items)} SceneQA {args.split} questions ({args.answers}) with {', '.join(rows)}: "
          f"{args.repeats} interleaved round(s), batch {args.eval_batch_size}, {torch.get_num_threads()} thread(s)",
          flush=True)
    rep = eval_throughput(models, items, args.answers, batch_size=args.eval_batch_size, repeats=args.repeats,
                          dtype=args.dtype)
    for label, r in rep["models"].items():
        print(f"\n{label} ({r['vision_tokens']} vision tokens), {len(items)} questions")
        for n, q in r["questions_per_s"].items():
            sp = r["speedup_over_fp32_plain"].get(n)
            print(f"  {n:<18} {q:7.3f} questions/s  (wall {r['wall_s'][n]:.1f} s, CPU {r['cpu_s'][n]:.1f} s)"
                  + (f"  {sp['median']:.2f}x fp32-plain's speed" if sp else ""))
        for k, v in r["identical_answers_pct"].items():
            print(f"  identical answers, {k}: {v:.1f}%")
        if r["first_token_logits_max_abs_diff"] is None:
            print(f"  no {r['dtype_after']} arm: the default dtype here is float32 (no native bf16; --dtype bfloat16 "
                  "measures the emulated one)")
        else:
            print(f"  first-token logits, fp32 vs {r['dtype_after']}: max |diff| "
                  f"{r['first_token_logits_max_abs_diff']:.4g}, same argmax {r['first_token_argmax_identical_pct']:.1f}%;"
                  f" fp32 top-1 minus top-2 logit: median {r['fp32_margin_median']:.3f}, at the flipped questions "
                  + (", ".join(f"{v:.3f}" for v in r["fp32_margin_of_flipped_first_tokens"].values()) or "none"))
        for w in r["warnings"]:
            print(f"  warning: {w}")
    first = items[0]
    from ..data.images import load_image

    cmp = ttft_by_dtype(models[0][1], load_image(first.image_path), first.prompt, repeats=max(args.repeats, 3))
    rep["ttft_by_dtype"] = {"model": rows[0], **cmp.to_dict()}
    print()
    print(format_comparison(cmp, f"TTFT of {rows[0]} by dtype (encode + compress + prefill + first token)"))
    print(f"\nwrote {write_report(args.json, rep)}")
    return 0


def write_report(path: str, obj, indent: int = 1):
    """Write a bench report as JSON (folders created); returns the path."""
    import json
    from pathlib import Path

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps({"written_by": WRITER, **obj}, indent=indent, default=str))
    return p


# ---- --peer: transformers' LlavaForConditionalGeneration on the same modules ----------------------------------
def run_peer(args: argparse.Namespace) -> int:
    from pathlib import Path

    import numpy as np
    import torch
    from PIL import Image

    from ..efficiency.peer import hf_llava, peer_calls
    from ..efficiency.timing import compare, format_comparison
    from ..errors import CompactVLMError
    from ..model.checkpoint import load_pretrained
    from .demo import assets_dir

    src = (Path(args.checkpoint_dir) if args.checkpoint_dir else assets_dir()) / "full-mlp2x"
    if not (src / "compactvlm.json").exists():
        raise CompactVLMError(f"checkpoint {src} is missing", "pass --checkpoint-dir with a full-mlp2x/ folder")
    model = load_pretrained(src, progress=False)
    dtype = model.set_dtype(args.dtype)
    hf, image_id = hf_llava(model)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (224, 224, 3), dtype=np.uint8))
    calls, flops = [], {}
    for size in (224, 112):
        c, f = peer_calls(model, hf, image_id, image, args.question, size)
        n = f["tokens"]
        if f["ours_first_token"] != f["hf_first_token"]:
            print(f"note: at {n} tokens the first tokens differ (ours {f['ours_first_token']}, HF "
                  f"{f['hf_first_token']})")
        calls += [(f"ours@{n}", c["ours"]), (f"hf@{n}", c["hf"])]
        flops[n] = f
    hi, lo = sorted(flops, reverse=True)
    ideal = {f"ours@{lo}": flops[hi]["ours"] / flops[lo]["ours"], f"hf@{hi}": flops[hi]["ours"] / flops[hi]["hf"],
             f"hf@{lo}": flops[hi]["ours"] / flops[lo]["hf"]}
    print(f"timing ours vs transformers' LlavaForConditionalGeneration ({dtype}, {torch.get_num_threads()} "
          f"thread(s)): {args.repeats} interleaved rounds after {args.warmup} warm-up ...", flush=True)
    cmp = compare(calls, repeats=args.repeats, warmup=args.warmup, ideal=ideal, progress=True, desc="peer rounds")
    print()
    print(format_comparison(cmp, f"TTFT, {src.name}: compactvlm (ours) vs HF llava (hf) on the same modules"))
    out = {"checkpoint": str(src), "dtype": dtype, "threads": torch.get_num_threads(), "question": args.question,
           "flops": {str(k): v for k, v in flops.items()}, "comparison": cmp.to_dict(), "ours_over_hf": {},
           "measured_over_ideal_256_to_64": {}}
    print()
    for n in (hi, lo):
        r = cmp.pair(f"ours@{n}", f"hf@{n}")
        out["ours_over_hf"][n] = r
        print(f"{n} image tokens: our TTFT / HF's = {r['median']:.3f} (rounds p25-p75 {r['p25']:.3f}-{r['p75']:.3f}); "
              f"FLOPs ours {flops[n]['ours'] / 1e9:.1f} G, HF {flops[n]['hf'] / 1e9:.1f} G")
    for who in ("ours", "hf"):
        s = cmp.pair(f"{who}@{hi}", f"{who}@{lo}")
        ideal_x = flops[hi][who] / flops[lo][who]
        out["measured_over_ideal_256_to_64"][who] = {"speedup": s, "ideal": ideal_x, "ratio": s["median"] / ideal_x}
        print(f"{who}: {hi} -> {lo} tokens {s['median']:.2f}x faster (p25-p75 {s['p25']:.2f}-{s['p75']:.2f}), "
              f"FLOPs-ideal {ideal_x:.2f}x, measured/ideal {s['median'] / ideal_x:.2f}")
    print(f"\nwrote {write_report(args.json, out)}")
    return 0


# ---- the command ------------------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> int:
    import gc
    import logging
    import warnings

    import torch

    from ..efficiency.flops import FlopsCounter
    from ..efficiency.presets import BenchSpec, build_backbone, build_vlm, resolve_model
    from ..efficiency.timing import SPREAD_LIMIT, time_rows
    from ..errors import CompactVLMError
    from ..model.prompting import build_prompt
    from ..runtime import check_device, set_threads

    _check_args(args)
    set_threads(args.threads)  # the one place the bench fixes its threads (rows, --answers, --peer)
    if getattr(args, "answers", None):
        return run_answers(args)
    if getattr(args, "peer", False):
        return run_peer(args)
    warnings.filterwarnings("ignore", message=r".*past_key_values.*deprecated", category=FutureWarning)
    logging.getLogger("transformers.utils.generic").addFilter(_no_cache_deprecation)
    threads = torch.get_num_threads()
    preset = resolve_model(args.model)
    timing = not args.flops_only
    device = check_device(args.device) if timing else torch.device("meta")
    if args.dtype != "auto":
        dtype = args.dtype
    else:
        from ..model.build import resolve_dtype

        dtype = resolve_dtype("auto", device) if timing else "bfloat16"
    given = [r.strip() for r in args.compressor if r.strip()]
    texts = list(dict.fromkeys(given or default_rows(preset)))
    specs = [BenchSpec.parse(t) for t in texts]
    if REFERENCE not in texts:
        specs.insert(0, BenchSpec.parse(REFERENCE))
    else:
        specs.insert(0, specs.pop(texts.index(REFERENCE)))

    counter = FlopsCounter(preset, dtype)
    for spec in list(specs):  # every row is validated on meta (seconds) before any weight is built
        try:
            counter.meta_model(spec)
        except CompactVLMError as e:
            if given:
                raise CompactVLMError(f"row {spec.text!r}: {e.problem}", e.fix) from None
            specs.remove(spec)  # a default row this model cannot run (e.g. fastv k=2 on a 2-layer LLM)
            print(f"default row {spec.text} left out: {e.problem}", flush=True)

    backbone = None
    text_tokens = args.text_tokens
    if timing:
        weights = "random" if args.random_weights else "real"
        print(f"building {preset.name} ({weights} weights, {dtype}) on {device} ...", flush=True)
        backbone = build_backbone(preset, device, dtype, weights, progress=True)
        if backbone.tokenizer is not None:
            text_tokens = len(build_prompt(backbone.tokenizer, args.question, 0, backbone.system_prompt))

    results: list[dict] = []
    for spec in specs:
        f = counter.count(spec, text_tokens)
        res = {"label": spec.label, "spec": {"compressor": spec.compressor, "compressor_params": spec.compressor_params,
                                             "reduction": spec.reduction, "reduction_params": spec.reduction_params},
               "flops": f.to_dict(), "timing": None}
        red = counter.meta_model(spec).reduction
        if red is not None and red.in_llm:
            res["cost_note"] = red.cost_note()
        results.append(res)

    if timing:
        print(f"timing {len(specs)} rows, interleaved ({args.warmup} warm-up + {args.repeats} timed rounds) ...",
              flush=True)
        models = [(spec.label, build_vlm(backbone, spec)) for spec in specs]
        ideal = {r["label"]: results[0]["flops"]["total"] / r["flops"]["total"] for r in results[1:]}
        timings, cmp = time_rows(models, batch=args.batch, text_tokens=text_tokens, question=args.question,
                                 warmup=args.warmup, repeats=args.repeats, decode_tokens=args.decode_tokens,
                                 ideal=ideal, progress=True)
        for res, t in zip(results, timings):
            res["timing"] = t.to_dict()
        del models
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()

    ref = results[0]
    for r in results:
        ideal = ref["flops"]["total"] / r["flops"]["total"]
        q = {"flops_ideal_speedup": ideal,
             "llm_flops_ideal_speedup": ref["flops"]["llm_prefill"] / r["flops"]["llm_prefill"],
             "compressor_share_of_flops": r["flops"]["compressor"] / r["flops"]["total"]}
        if r["timing"]:
            t = r["timing"]
            s, c = cmp.speedup[r["label"]], cmp.cpu_speedup[r["label"]]
            # the median over rounds of the per-round ratio (reference and row timed back to back)
            q.update(ttft_speedup=s["median"], ttft_speedup_p25=s["p25"], ttft_speedup_p75=s["p75"],
                     ttft_speedup_min=s["min"], ttft_speedup_max=s["max"], ttft_cpu_speedup=c["median"],
                     measured_over_ideal=s["median"] / ideal,
                     compressor_share_of_ttft=t["compress_ms"] / t["ttft_ms"]["median"])
        r["ratios"] = q

    settings = {"model": args.model, "dtype": dtype, "text_tokens": text_tokens, "flops_per": "sample (batch 1)",
                "flop_counter": "torch.utils.flop_counter.FlopCounterMode on the meta device", "reference": ref["label"]}
    print(f"\n{preset.name}: {preset.description}")
    print(f"text tokens in the prompt: {text_tokens}; FLOPs with FlopCounterMode on the meta device (no weights)\n")
    print(flops_table(results, ref))
    if timing:
        llm = backbone.llm
        settings.update(device=str(device), weights=backbone.weights, batch=args.batch, threads=threads,
                        warmup=args.warmup, repeats=args.repeats, decode_tokens=args.decode_tokens,
                        attn_implementation=getattr(llm.config, "_attn_implementation", None),
                        torch=torch.__version__,
                        gpu=torch.cuda.get_device_name(device) if device.type == "cuda" else None)
        how = results[0]["timing"]["peak_memory_method"]
        print(f"\nTiming on {device}{' (' + settings['gpu'] + ')' if settings['gpu'] else ''}, {dtype}, "
              f"{backbone.weights} weights, batch {args.batch}, {threads} CPU threads, {args.repeats} interleaved "
              f"rounds after {args.warmup} warm-up (ms, medians; CPU ms: process CPU time, all threads); speedup: "
              f"median over rounds of {ref['label']}'s time / the row's, with its p25-p75; ideal versus "
              f"{ref['label']}; peak memory: {how}\n")
        print(timing_table(results, ref))
    lines = summary_lines(results, ref)
    if lines:
        print()
        print("\n".join(lines))
    if timing:
        from ..efficiency.timing import matmul_peak

        peak = matmul_peak(backbone.dtype, device)
        settings["matmul_peak"] = peak
        print(f"\n{peak['dtype']} matmul {peak['n']}^3 in this run: {peak['gflops_wall']:.0f} GFLOP/s (wall), "
              f"{peak['gflops_cpu']:.0f} GFLOP/s per CPU second")
        for r in results:
            t = r["timing"]
            rate = r["flops"]["llm_prefill"] * args.batch / (t["llm_ms"] / 1e3) / 1e9
            r["ratios"]["llm_gflops_per_s"] = rate
            r["ratios"]["llm_share_of_matmul_peak"] = rate / peak["gflops_wall"]
            print(f"{r['label']}: LLM prefill + first token {rate:.0f} GFLOP/s = "
                  f"{100 * rate / peak['gflops_wall']:.0f}% of that peak")
        settings["timing_warnings"] = cmp.warnings
        settings["cpu_share"] = cmp.cpu_share
        if cmp.warnings:
            print()
            print("\n".join(f"warning: {w}" for w in cmp.warnings))
        else:
            print(f"\nratios from {cmp.rounds} interleaved rounds, spread within {100 * SPREAD_LIMIT:.0f}% and "
                  "none above its FLOPs ideal")

    out = {"preset": preset.summary(), "settings": settings, "rows": results}
    path = write_report(args.json, out, indent=2)
    print(f"\nwrote {path}")
    if args.plot:
        where = (f"timing on {device}, {dtype}, batch {args.batch}" if timing else "FLOPs only (meta device)")
        plot(results, args.plot, f"{preset.name}: {where}")
        print(f"wrote {args.plot}")
    return 0

"""Timing: the one function every speed comparison goes through (``compare``), and the bench's rows.

``compare(calls)`` runs configurations of the same work (zero-argument calls on prepared inputs) in interleaved
rounds, ABC, BCA, CAB, ... (the starting configuration rotates), and records per call the wall time and the
process CPU time (``time.process_time``: all threads of this process). The ratio of two configurations is taken
per round (both ran back to back) and reported as the median over rounds with its spread; the CPU-time ratio
next to it barely moves when other processes compete for the cores. ``Comparison.warnings`` flags results not
to trust: a wide spread of the per-round ratios, a speedup above its FLOPs ideal (measured/ideal > 1), or a
process that got much less CPU than its threads asked for. ``compare_ttft`` applies it to whole models (demo,
study cost, serve, ``ask``, ``viz``: ``ttft_ms``); ``time_rows`` to the bench's rows.

How the bench's rows are timed:
- inside ``torch.inference_mode()``, on prepared inputs (one random pixel batch for every row and round; the
  prompt ids are built once), after ``warmup`` untimed rounds; ``repeats`` timed rounds give the median and the
  spread (quartiles, min, max);
- TTFT = encode + compress + LLM prefill + first token: ``encode_images`` (encoder, then the compressor or a
  reduction), ``merge``, the LLM over the whole prompt with ``logits_to_keep=1`` (only the last position's
  logits) filling a ``DynamicCache``, and the argmax of those logits. The encoder's share is read from forward
  hooks on the encoder, so one run gives the split encode / compress / LLM;
- a call's TTFT is ``time.perf_counter`` around it (on CUDA with ``torch.cuda.synchronize()`` before and after);
  the split inside it uses CUDA events on a GPU. The thread count is fixed by the entry point (``runtime.set_threads``);
- decode: greedy generation of ``1 + N`` and of 1 tokens from the same inputs (alternating, medians); the
  difference over N is the time of one decode step with the KV cache. FastV decodes with its own pruned cache
  (``FastV.generate``). tokens/s is per sequence; the batch makes ``batch`` times as many;
- peak memory, one extra run of the ``1 + N`` generation (``memory.peak_memory``; on CUDA the weights of the other
  rows' compressors, resident at the same time, are subtracted);
- KV-cache bytes: keys + values in the cache after the prefill (the whole batch).
Attention is whatever the model was built with (SDPA in the bench's backbones).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

import torch

from ..hf_compat import cache_kwargs
from ..model.prompting import IMAGE_TOKEN_ID
from .flops import text_split
from .memory import cache_bytes, exclusive_bytes, peak_memory


class Clock:
    """perf_counter on the CPU, CUDA events on a GPU."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def mark(self):
        if self.cuda:
            e = torch.cuda.Event(enable_timing=True)
            e.record()
            return e
        return time.perf_counter()

    def wait(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def ms(self, a, b) -> float:
        return float(a.elapsed_time(b)) if self.cuda else (b - a) * 1e3


def spread(xs: list[float]) -> dict[str, Any]:
    """Median, quartiles, min, max and the samples (ms)."""
    xs = sorted(xs)
    q = statistics.quantiles(xs, n=4, method="inclusive") if len(xs) > 1 else [xs[0]] * 3
    return {"median": statistics.median(xs), "p25": q[0], "p75": q[2], "min": xs[0], "max": xs[-1],
            "samples": [round(x, 4) for x in xs]}


@dataclass
class RowTiming:
    label: str
    batch: int
    vision_tokens: int
    prompt_tokens: int
    ttft_ms: dict[str, Any]  # wall time of the whole call
    cpu_ms: dict[str, Any]  # process CPU time of the same calls (all threads)
    encode_ms: float  # medians of the same runs
    compress_ms: float
    llm_ms: float  # merge + prefill + first token
    decode_ms_per_step: float | None
    decode_tokens_per_s: float | None  # per sequence
    peak_memory_bytes: int | None
    peak_memory_method: str
    kv_cache_bytes: int  # whole batch, after the prefill
    warmup: int
    repeats: int
    decode_tokens: int
    notes: list[str] = field(default_factory=list)

    @property
    def ttft(self) -> float:
        return float(self.ttft_ms["median"])

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["decode_batch_tokens_per_s"] = (None if self.decode_tokens_per_s is None
                                          else self.decode_tokens_per_s * self.batch)
        return d


# ---- the one timing function: interleaved rounds, wall and process CPU time, ratios with their spread --------
#: a speedup whose interquartile range over rounds is wider than this fraction of its median is unreliable
SPREAD_LIMIT = 0.10
#: below this share of the CPU it asked for (process CPU time / (wall time x threads)) the process was crowded out
CPU_SHARE_LIMIT = 0.6


@dataclass
class Call:
    """One timed call: wall ms, process CPU ms (all threads of this process) and what the call returned."""
    wall_ms: float
    cpu_ms: float
    value: Any = None


@dataclass
class Comparison:
    """Interleaved timing of several configurations of the same work.

    ``wall_ms`` / ``cpu_ms``: spread (median, quartiles, min, max) of each configuration's calls; ``speedup``:
    per round, the reference's wall time over the configuration's (both timed back to back in that round), then
    the median and spread over rounds; ``cpu_speedup`` the same from process CPU time, which other processes'
    load inflates far less than wall time. ``warnings`` says when the ratios cannot be trusted and what to do."""
    labels: list[str]
    reference: str
    rounds: int
    warmup: int
    threads: int
    wall_ms: dict[str, dict]
    cpu_ms: dict[str, dict]
    speedup: dict[str, dict]
    cpu_speedup: dict[str, dict]
    cpu_share: dict[str, float]
    ideal: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    values: dict[str, list] = field(default_factory=dict, repr=False)
    round_wall_ms: dict[str, list[float]] = field(default_factory=dict, repr=False)  # in round order

    def pair(self, a: str, b: str) -> dict[str, Any]:
        """Spread over rounds of ``a``'s wall time / ``b``'s wall time (both timed in the same round)."""
        return spread([x / max(y, 1e-9) for x, y in zip(self.round_wall_ms[a], self.round_wall_ms[b])])

    @property
    def reliable(self) -> bool:
        return not self.warnings

    def median_ms(self, label: str) -> float:
        return float(self.wall_ms[label]["median"])

    def ratio(self, label: str) -> float:
        """Median over rounds of reference time / ``label`` time (> 1: ``label`` is faster)."""
        return float(self.speedup[label]["median"])

    def measured_over_ideal(self, label: str) -> float | None:
        ideal = self.ideal.get(label)
        return None if not ideal else self.ratio(label) / ideal

    def describe(self, label: str) -> str:
        """One line: the speedup over rounds with its spread, CPU-time speedup, ideal and measured/ideal."""
        s, c = self.speedup[label], self.cpu_speedup[label]
        text = (f"{s['median']:.2f}x (rounds p25-p75 {s['p25']:.2f}-{s['p75']:.2f}, min-max {s['min']:.2f}-"
                f"{s['max']:.2f}; CPU time {c['median']:.2f}x)")
        if self.ideal.get(label):
            text += f", FLOPs-ideal {self.ideal[label]:.2f}x, measured/ideal {self.measured_over_ideal(label):.2f}"
        return text

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("values")
        d.pop("round_wall_ms")
        d["reliable"] = self.reliable
        d["measured_over_ideal"] = {k: self.measured_over_ideal(k) for k in self.ideal}
        return d


def _busy_hint(repeats: int) -> str:
    return f"machine busy: ratios unreliable; rerun with --repeats {max(2 * repeats, 10)} or on an idle machine"


def interleave(calls: Sequence[tuple[str, Callable[[], Any]]], repeats: int = 5, warmup: int = 1,
               device: torch.device | str | None = None, before: dict[str, Callable[[], Any]] | None = None,
               progress: bool = False, desc: str = "timing") -> dict[str, list[Call]]:
    """Run every call once per round, ``warmup`` untimed rounds then ``repeats`` timed ones; each round starts with
    the next configuration in turn (ABC, BCA, CAB, ...), so a change of load hits every configuration alike.
    ``before[label]`` runs untimed before each of that label's calls (e.g. swapping a compressor in). Returns the
    timed calls per label. On CUDA the device is synchronised before and after each call."""
    cuda = torch.device(device).type == "cuda" if device is not None else False
    labels = [lab for lab, _ in calls]
    if len(set(labels)) != len(labels):
        raise ValueError(f"labels must be unique, got {labels}")
    out: dict[str, list[Call]] = {lab: [] for lab in labels}
    from tqdm.auto import tqdm

    total = max(warmup, 0) + max(repeats, 1)
    with tqdm(total=total, desc=desc, unit="round", disable=not progress, leave=False) as bar:
        for r in range(total):
            timed = r >= warmup
            for label, fn in _rotated(list(calls), r):
                if before and label in before:
                    before[label]()
                if cuda:
                    torch.cuda.synchronize()
                w0, c0 = time.perf_counter(), time.process_time()
                value = fn()
                if cuda:
                    torch.cuda.synchronize()
                w1, c1 = time.perf_counter(), time.process_time()
                if timed:
                    out[label].append(Call((w1 - w0) * 1e3, (c1 - c0) * 1e3, value))
            bar.update()
    return out


def compare(calls: Sequence[tuple[str, Callable[[], Any]]], reference: str | None = None, repeats: int = 5,
            warmup: int = 1, ideal: dict[str, float] | None = None, device: torch.device | str | None = None,
            before: dict[str, Callable[[], Any]] | None = None, progress: bool = False, desc: str = "timing",
            threads: int | None = None, spread_limit: float = SPREAD_LIMIT) -> Comparison:
    """Time configurations of the same work interleaved (``interleave``) and compare them with ``reference``
    (default: the first). ``ideal[label]``: the FLOPs-ideal speedup of ``label`` over the reference; a measured
    speedup above it, or a wide spread of the per-round ratios, puts a warning in ``Comparison.warnings``. The
    one function every speed comparison of compactvlm goes through (bench, demo, study cost, serve)."""
    runs = interleave(calls, repeats, warmup, device, before, progress, desc)
    labels = list(runs)
    ref = reference or labels[0]
    if ref not in runs:
        raise ValueError(f"reference {ref!r} is not one of {labels}")
    threads = threads or torch.get_num_threads()
    n = len(runs[ref])
    wall = {k: spread([c.wall_ms for c in v]) for k, v in runs.items()}
    cpu = {k: spread([c.cpu_ms for c in v]) for k, v in runs.items()}
    speed = {k: spread([runs[ref][i].wall_ms / max(v[i].wall_ms, 1e-9) for i in range(n)]) for k, v in runs.items()}
    cspeed = {k: spread([runs[ref][i].cpu_ms / max(v[i].cpu_ms, 1e-9) for i in range(n)]) for k, v in runs.items()}
    share = {k: statistics.median(c.cpu_ms / max(c.wall_ms * threads, 1e-9) for c in v) for k, v in runs.items()}
    cmp = Comparison(labels, ref, n, warmup, threads, wall, cpu, speed, cspeed, share,
                     {k: float(v) for k, v in (ideal or {}).items() if k in runs and k != ref},
                     values={k: [c.value for c in v] for k, v in runs.items()},
                     round_wall_ms={k: [c.wall_ms for c in v] for k, v in runs.items()})
    hint = _busy_hint(repeats)
    if n < 3 and len(labels) > 1:
        cmp.warnings.append(f"only {n} timed round(s): no spread to judge the ratios by; rerun with --repeats 5 "
                            "or more")
    for k in labels:
        if k == ref:
            continue
        s = speed[k]
        if n >= 3 and (s["p75"] - s["p25"]) > spread_limit * s["median"]:
            cmp.warnings.append(f"{k}: the speedup over {ref} varies {s['p25']:.2f}-{s['p75']:.2f}x between rounds "
                                f"(p25-p75, more than {100 * spread_limit:.0f}% of its median): {hint}")
        moi = cmp.measured_over_ideal(k)
        # same work (ideal within 5% of 1, e.g. a peer pipeline): only a speedup whose lower quartile is above
        # the ideal is suspicious; otherwise the median above the ideal is
        same_work = moi is not None and abs(cmp.ideal[k] - 1) < 0.05
        if moi is not None and moi > 1 and (not same_work or s["p25"] > cmp.ideal[k]):
            cmp.warnings.append(f"{k}: measured {s['median']:.2f}x faster than {ref}, above its FLOPs-ideal "
                                f"{cmp.ideal[k]:.2f}x (measured/ideal {moi:.2f} > 1): {hint}")
    low = {k: v for k, v in share.items() if v < CPU_SHARE_LIMIT}
    if low and not cuda_device(device):
        worst = min(low, key=low.get)
        cmp.warnings.append(f"this process got only {100 * low[worst]:.0f}% of the CPU time its {threads} thread(s) "
                            f"asked for ({worst}; other processes compete): wall times are inflated and ratios "
                            f"unreliable; compare the CPU-time ratios, rerun with --repeats {max(2 * repeats, 10)} "
                            "or on an idle machine")
    return cmp


def cuda_device(device) -> bool:
    return device is not None and torch.device(device).type == "cuda"


def format_comparison(cmp: Comparison, title: str = "") -> str:
    """A small table (median wall ms, CPU ms, speedup over the reference with its spread) plus warnings."""
    lines = [title] if title else []
    lines.append(f"{cmp.rounds} interleaved rounds after {cmp.warmup} warm-up, {cmp.threads} thread(s); reference "
                 f"{cmp.reference}")
    w = max(len(k) for k in cmp.labels)
    lines.append(f"{'':<{w}}  {'wall ms':>9}  {'CPU ms':>9}  {'CPU share':>9}  speedup over {cmp.reference}")
    for k in cmp.labels:
        sp = "(reference)" if k == cmp.reference else cmp.describe(k)
        lines.append(f"{k:<{w}}  {cmp.wall_ms[k]['median']:>9.1f}  {cmp.cpu_ms[k]['median']:>9.1f}  "
                     f"{100 * cmp.cpu_share[k]:>8.0f}%  {sp}")
    lines += [f"warning: {x}" for x in cmp.warnings]
    return "\n".join(lines)


def matmul_peak(dtype: torch.dtype, device: torch.device | str = "cpu", n: int | None = None,
                repeats: int = 5) -> dict:
    """Dense (n x n) @ (n x n) matmul rate in ``dtype`` on ``device`` with the current threads: GFLOP/s per wall
    second and per process-CPU second (medians of ``repeats`` after warm-up): the peak the LLM's rate is compared
    with. ``n`` defaults to 2048 on a CPU and 8192 on a GPU: an H200 runs 2048^3 in bf16 at 100-250 TFLOP/s, far
    below the ~790 it reaches at 8192^3, so the smaller product made a 7B prefill look faster than "the peak"."""
    dev = torch.device(device)
    cuda = dev.type == "cuda"
    n = n or (8192 if cuda else 2048)
    a = torch.randn(n, n, device=dev).to(dtype)
    b = torch.randn(n, n, device=dev).to(dtype)
    with torch.inference_mode():
        cmp = compare([("mm", lambda: a @ b)], repeats=repeats, warmup=3 if cuda else 1, device=dev)
    flops = 2.0 * n ** 3
    return {"n": n, "dtype": str(dtype).replace("torch.", ""), "gflops_wall": flops / cmp.median_ms("mm") / 1e6,
            "gflops_cpu": flops / max(cmp.cpu_ms["mm"]["median"], 1e-9) / 1e6}


# ---- time to first token of whole models ----------------------------------------------------------------------
def ttft_call(model, ids: torch.Tensor, mask: torch.Tensor, pix: torch.Tensor, extra_state: dict | None = None):
    """A zero-argument call doing one encode + compress + LLM prefill (last position's logits) + first token."""
    def call():
        with torch.inference_mode():
            out = model.forward(ids, mask, pix, logits_to_keep=1, extra_state=extra_state)
            return out.logits[:, -1].argmax(dim=-1)
    return call


def ttft_inputs(model, images, question: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ids, mask, pixels) on the model's device for ``images`` (PIL list or a (B, 3, S, S) tensor), one prompt."""
    dev = next(model.llm.parameters()).device
    pix = images if isinstance(images, torch.Tensor) else model.processor(list(images))
    ids, mask = model.pad_left([model.prompt_ids(question)] * int(pix.shape[0]))
    return ids.to(dev), mask.to(dev), pix.to(dev)


def compare_ttft(models: Sequence[tuple[str, Any]], images, question: str, repeats: int = 5, warmup: int = 1,
                 ideal: dict[str, float] | None = None, extra_states: dict[str, dict | None] | None = None,
                 before: dict[str, Callable[[], Any]] | None = None, progress: bool = False,
                 desc: str = "TTFT") -> Comparison:
    """TTFT (encode + compress + prefill + first token) of several models on the same image(s) and question,
    interleaved (``compare``); the first model is the reference. ``before[label]`` prepares a model untimed
    (serve swaps compressors into one model)."""
    calls = []
    dev = None
    for label, model in models:
        if before and label in before:
            before[label]()
        ids, mask, pix = ttft_inputs(model, images, question)
        dev = pix.device
        calls.append((label, ttft_call(model, ids, mask, pix, (extra_states or {}).get(label))))
    return compare(calls, repeats=repeats, warmup=warmup, ideal=ideal, device=dev, before=before,
                   progress=progress, desc=desc)


def ttft_ms(model, images, question: str, repeats: int = 3, warmup: int = 1,
            extra_state: dict | None = None) -> float:
    """Median wall ms of encode + compress + LLM prefill + first token of one model (``compare_ttft``)."""
    cmp = compare_ttft([("model", model)], images, question, repeats=repeats, warmup=warmup,
                       extra_states={"model": extra_state})
    return cmp.median_ms("model")


# ---- inputs -----------------------------------------------------------------------------------------------
def prompt_batch(model, batch: int, text_tokens: int, question: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T) ids with the model's vision positions and an all-ones mask: the real chat prompt when the model
    has a tokenizer, else ``text_tokens`` random text ids around the image."""
    m = model.num_image_tokens()
    if model.tokenizer is not None:
        ids = model.prompt_ids(question)
    else:
        pre, post = text_split(text_tokens)
        vocab = int(model.llm.config.vocab_size)
        text = torch.randint(0, vocab, (pre + post,), generator=torch.Generator().manual_seed(0)).tolist()
        ids = text[:pre] + [IMAGE_TOKEN_ID] * m + text[pre:]
    ids_t = torch.tensor([ids] * batch, dtype=torch.long)
    return ids_t, torch.ones_like(ids_t)


def _new_cache(llm):
    from transformers import DynamicCache

    return DynamicCache(config=llm.config)


def _in_llm(model) -> bool:
    return model.reduction is not None and model.reduction.in_llm


def prefill(model, ids: torch.Tensor, mask: torch.Tensor, tokens: torch.Tensor, cache):
    """Merge + LLM prefill over the prompt, last position's logits only, filling ``cache``."""
    embeds = model.merge(ids, tokens)
    if _in_llm(model):
        return model.reduction.llm_forward(model.llm, embeds, mask, ids == IMAGE_TOKEN_ID, logits_to_keep=1,
                                           past_key_values=cache)
    return model.llm(inputs_embeds=embeds, attention_mask=mask, **cache_kwargs(model.llm, cache), use_cache=True,
                     logits_to_keep=1)


def ttft_once(model, ids, mask, pix, clock: Clock) -> tuple[dict[str, float], Any]:
    """One timed encode + compress + prefill + first token; ({ttft, encode, compress, llm} ms, cache)."""
    marks: dict[str, Any] = {}

    def pre_hook(_m, _a):
        marks.setdefault("enc0", clock.mark())

    def post_hook(_m, _a, _o):
        marks["enc1"] = clock.mark()

    h1 = model.encoder.register_forward_pre_hook(pre_hook)
    h2 = model.encoder.register_forward_hook(post_hook)
    try:
        clock.wait()
        t0 = clock.mark()
        tokens = model.encode_images(pix)
        t1 = clock.mark()
        cache = _new_cache(model.llm)
        out = prefill(model, ids, mask, tokens, cache)
        out.logits[:, -1].argmax(dim=-1)  # the first token
        t2 = clock.mark()
        clock.wait()
    finally:
        h1.remove()
        h2.remove()
    total = clock.ms(t0, t2)
    enc = clock.ms(marks["enc0"], marks["enc1"]) if "enc1" in marks else 0.0
    vision = clock.ms(t0, t1)
    return {"ttft": total, "encode": enc, "compress": max(vision - enc, 0.0), "llm": clock.ms(t1, t2)}, cache


def generate_once(model, ids, mask, pix, new_tokens: int) -> torch.Tensor:
    """Greedy generation of exactly ``new_tokens`` tokens (no early stop) with the KV cache."""
    tokens = model.encode_images(pix)
    if _in_llm(model):
        embeds = model.merge(ids, tokens)
        return model.reduction.generate(model.llm, embeds, mask, ids == IMAGE_TOKEN_ID, max_new_tokens=new_tokens,
                                        eos_token_id=-1)
    cache = _new_cache(model.llm)
    out = prefill(model, ids, mask, tokens, cache)
    tok = out.logits[:, -1].argmax(dim=-1)  # (B,)
    ones = torch.ones_like(mask[:, :1])
    for _ in range(new_tokens - 1):
        mask = torch.cat([mask, ones], dim=1)
        out = model.llm(input_ids=tok[:, None], attention_mask=mask, **cache_kwargs(model.llm, cache),
                        use_cache=True, logits_to_keep=1)
        tok = out.logits[:, -1].argmax(dim=-1)
    return tok


# ---- rows -----------------------------------------------------------------------------------------------
@dataclass
class _Row:
    label: str
    model: Any
    ids: torch.Tensor
    mask: torch.Tensor
    runs: list = field(default_factory=list)
    kv: int = 0
    short: list = field(default_factory=list)
    long: list = field(default_factory=list)


def _rotated(rows: list, r: int) -> list:
    """Round ``r``'s order: each row starts a round in turn, so slow drifts of the machine hit all rows alike."""
    k = r % len(rows)
    return rows[k:] + rows[:k]


def time_rows(models: list[tuple[str, Any]], batch: int = 1, text_tokens: int = 40,
              question: str = "Describe the image.", warmup: int = 2, repeats: int = 5, decode_tokens: int = 16,
              measure_memory: bool = True, seed: int = 0, ideal: dict[str, float] | None = None,
              progress: bool = False) -> tuple[list[RowTiming], Comparison]:
    """Time several CompactVLMs (one per row) on one device, interleaved: every round runs each row once
    (``compare``; the first row is the reference, ``ideal`` its FLOPs-ideal speedups). Returns the rows and the
    TTFT comparison (per-round ratios with their spread, CPU time, warnings).

    The models may share their encoder and LLM (one backbone). See the module docstring for what is timed."""
    first = models[0][1]
    dev = next(first.llm.parameters()).device
    dtype = next(first.encoder.parameters()).dtype
    gen = torch.Generator().manual_seed(seed)
    clock = Clock(dev)
    s = first.processor.size
    rows = []
    for label, model in models:
        ids, mask = prompt_batch(model, batch, text_tokens, question)
        model.check_context([ids.shape[1]], max(decode_tokens, 1))
        rows.append(_Row(label, model, ids.to(dev), mask.to(dev)))

    def pixels() -> torch.Tensor:
        return torch.randn(batch, 3, s, s, generator=gen).to(dev, dtype)

    def timed_gen(row: _Row, n: int) -> float:
        pix = pixels()
        clock.wait()
        a = clock.mark()
        generate_once(row.model, row.ids, row.mask, pix, n)
        b = clock.mark()
        clock.wait()
        return clock.ms(a, b)

    memory: dict[str, tuple[int | None, str]] = {}
    pix0 = pixels()  # the same inputs for every row and round

    def ttft_call_of(row: _Row):
        def call():
            res, cache = ttft_once(row.model, row.ids, row.mask, pix0, clock)
            kv = cache_bytes(cache)
            del cache
            return res, kv
        return call

    with torch.inference_mode():
        cmp = compare([(row.label, ttft_call_of(row)) for row in rows], repeats=max(repeats, 1), warmup=warmup,
                      ideal=ideal, device=dev, progress=progress, desc="TTFT rounds")
        for row in rows:
            row.runs = [v[0] for v in cmp.values[row.label]]
            row.kv = cmp.values[row.label][-1][1]
        if decode_tokens > 0:
            for row in rows:
                timed_gen(row, 1 + decode_tokens)  # warm-up of the decode path
            from tqdm.auto import tqdm

            for r in tqdm(range(max(3, repeats // 2)), desc="decode rounds", unit="round", disable=not progress,
                          leave=False):
                for row in _rotated(rows, r):
                    row.short.append(timed_gen(row, 1))
                    row.long.append(timed_gen(row, 1 + decode_tokens))
        if measure_memory:
            for row in rows:
                others = [m for lab, m in models if m is not row.model]
                pix = pixels()
                peak, how = peak_memory(row.model, lambda: generate_once(row.model, row.ids, row.mask, pix,
                                                                         1 + max(decode_tokens, 0)), dev)
                if peak is not None and dev.type == "cuda":  # other rows' compressors are resident too
                    peak -= exclusive_bytes(others, row.model)
                memory[row.label] = (peak, how)

    out = []
    for row in rows:
        notes: list[str] = []
        step_ms = None
        if decode_tokens > 0:
            diff = statistics.median(row.long) - statistics.median(row.short)
            if diff > 0:
                step_ms = diff / decode_tokens
            else:
                notes.append("decode time below the noise of the prefill; not reported")
        med = {k: statistics.median(r[k] for r in row.runs) for k in ("encode", "compress", "llm")}
        mem, how = memory.get(row.label, (None, "not measured"))
        out.append(RowTiming(
            label=row.label, batch=batch, vision_tokens=row.model.num_image_tokens(),
            prompt_tokens=int(row.ids.shape[1]), ttft_ms=cmp.wall_ms[row.label], cpu_ms=cmp.cpu_ms[row.label],
            encode_ms=med["encode"], compress_ms=med["compress"], llm_ms=med["llm"], decode_ms_per_step=step_ms,
            decode_tokens_per_s=None if step_ms is None else 1e3 / step_ms, peak_memory_bytes=mem,
            peak_memory_method=how, kv_cache_bytes=row.kv, warmup=warmup, repeats=repeats,
            decode_tokens=decode_tokens, notes=notes))
    return out, cmp


def time_row(model, label: str, **kwargs: Any) -> RowTiming:
    """Time one CompactVLM (``time_rows`` with one row)."""
    return time_rows([(label, model)], **kwargs)[0][0]

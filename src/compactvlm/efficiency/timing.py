"""Time to first token, decode speed, peak memory and KV-cache size of one benchmark row.

How the timings are taken:
- inside ``torch.inference_mode()``, on prepared inputs (a fresh random pixel batch per run, made before the
  clock starts; the prompt ids are built once), after ``warmup`` untimed runs; ``repeats`` timed runs give the
  median and the spread (quartiles, min, max). Rows are interleaved (``time_rows``: every round runs each row
  once, the starting row rotating), so a machine that slows down or speeds up during the run biases no row;
- TTFT = encode + compress + LLM prefill + first token: ``encode_images`` (encoder, then the compressor or a
  reduction), ``merge``, the LLM over the whole prompt with ``logits_to_keep=1`` (only the last position's
  logits) filling a ``DynamicCache``, and the argmax of those logits. The encoder's share is read from forward
  hooks on the encoder, so one run gives the split encode / compress / LLM;
- on CUDA the clock is CUDA events (``elapsed_time``) with ``torch.cuda.synchronize()`` before each run and
  after it; on the CPU ``time.perf_counter`` (the thread count is fixed by the caller, ``torch.set_num_threads``);
- decode: greedy generation of ``1 + N`` and of 1 tokens from the same inputs (alternating, medians); the
  difference over N is the time of one decode step with the KV cache. FastV decodes with its own pruned cache
  (``FastV.generate``). tokens/s is per sequence; the batch makes ``batch`` times as many;
- peak memory, one extra run of the ``1 + N`` generation: on CUDA ``torch.cuda.max_memory_allocated`` (weights
  included; the weights of the other rows' compressors, resident at the same time, are subtracted); on the CPU the weights' bytes plus the peak of the tensor allocations the profiler records during
  the run (``profile_memory=True``);
- KV-cache bytes: keys + values in the cache after the prefill (the whole batch).
Attention is whatever the model was built with (SDPA in the bench's backbones).
"""

from __future__ import annotations

import contextlib
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import torch

from ..model.prompting import IMAGE_TOKEN_ID
from .flops import cache_bytes, text_split


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
    ttft_ms: dict[str, Any]
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
    return model.reduction is not None and bool(getattr(model.reduction, "in_llm", False))


def prefill(model, ids: torch.Tensor, mask: torch.Tensor, tokens: torch.Tensor, cache):
    """Merge + LLM prefill over the prompt, last position's logits only, filling ``cache``."""
    embeds = model.merge(ids, tokens)
    if _in_llm(model):
        return model.reduction.llm_forward(model.llm, embeds, mask, ids == IMAGE_TOKEN_ID, logits_to_keep=1,
                                           past_key_values=cache)
    return model.llm(inputs_embeds=embeds, attention_mask=mask, cache=cache, use_cache=True, logits_to_keep=1)


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
        out = model.llm(input_ids=tok[:, None], attention_mask=mask, cache=cache, use_cache=True, logits_to_keep=1)
        tok = out.logits[:, -1].argmax(dim=-1)
    return tok


def weight_bytes(model) -> int:
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        if t.device.type == "meta" or t.data_ptr() in seen:
            continue
        seen.add(t.data_ptr())
        total += t.numel() * t.element_size()
    return total


def exclusive_bytes(others: list, model) -> int:
    """Bytes of the weights of ``others`` that ``model`` does not share."""
    mine = {t.data_ptr() for t in list(model.parameters()) + list(model.buffers())}
    seen, total = set(mine), 0
    for m in others:
        for t in list(m.parameters()) + list(m.buffers()):
            if t.device.type == "meta" or t.data_ptr() in seen:
                continue
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total


@contextlib.contextmanager
def quiet_stderr_fd():
    """Silence file descriptor 2 (the profiler's C++ start/stop lines) for the duration."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def peak_memory(model, fn: Callable[[], Any], device: torch.device) -> tuple[int | None, str]:
    """Peak bytes while ``fn`` runs (weights included) and how they were measured."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return int(torch.cuda.max_memory_allocated(device)), "cuda max_memory_allocated"
    from torch.profiler import ProfilerActivity, profile

    with quiet_stderr_fd(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    cur = top = 0
    for e in events:
        cur += e.nbytes()
        top = max(top, cur)
    return weight_bytes(model) + int(top), "weights + peak of profiled CPU allocations"


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
              measure_memory: bool = True, seed: int = 0) -> list[RowTiming]:
    """Time several CompactVLMs (one per row) on one device, interleaved: every round runs each row once.

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
    with torch.inference_mode():
        for r in range(max(warmup, 0)):
            for row in _rotated(rows, r):
                ttft_once(row.model, row.ids, row.mask, pixels(), clock)
        for r in range(max(repeats, 1)):
            for row in _rotated(rows, r):
                res, cache = ttft_once(row.model, row.ids, row.mask, pixels(), clock)
                row.runs.append(res)
                row.kv = cache_bytes(cache)
                del cache
        if decode_tokens > 0:
            for row in rows:
                timed_gen(row, 1 + decode_tokens)  # warm-up of the decode path
            for r in range(max(3, repeats // 2)):
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
            prompt_tokens=int(row.ids.shape[1]), ttft_ms=spread([r["ttft"] for r in row.runs]),
            encode_ms=med["encode"], compress_ms=med["compress"], llm_ms=med["llm"], decode_ms_per_step=step_ms,
            decode_tokens_per_s=None if step_ms is None else 1e3 / step_ms, peak_memory_bytes=mem,
            peak_memory_method=how, kv_cache_bytes=row.kv, warmup=warmup, repeats=repeats,
            decode_tokens=decode_tokens, notes=notes))
    return out


def time_row(model, label: str, **kwargs: Any) -> RowTiming:
    """Time one CompactVLM (``time_rows`` with one row)."""
    return time_rows([(label, model)], **kwargs)[0]

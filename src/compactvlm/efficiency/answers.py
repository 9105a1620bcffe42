"""Evaluation throughput and bf16 answer parity on a SceneQA split (``compactvlm bench --answers DIR``).

For each model (the packaged full-token and STF k=2 checkpoints by default) three ways of answering the same
questions are timed with ``timing.compare`` (interleaved rounds; one call answers every question, in the
harness's batches):

- ``fp32-plain``: what evaluation did before: float32 weights, ``CompactVLM.generate`` per batch (one encode
  and one full prefill per question, left padding, decoding until every sequence of the batch ends);
- ``fp32-shared``: float32, ``evaluate.answer.Answerer`` (one encode + one vision-prefix prefill per image,
  batches by prompt length, early stop for closed-form families);
- ``<auto>-shared``: the same in the default inference dtype (bfloat16 where the hardware runs it fast; left out
  where that is float32, which would repeat ``fp32-shared``);
- ``fp32-shared-cached``: fp32-shared with the encoder's blocks of every image already cached (what a blind
  control's pass, or another checkpoint with the same frozen encoder, costs); not for models whose features
  cannot be cached.

Parity: the share of identical answers between the ways, and the largest absolute difference of the
first-token logits (float32 vs the default dtype, both on the shared path).
"""

from __future__ import annotations

import copy
from typing import Any, Sequence

import torch

from ..evaluate.answer import Answerer
from ..model.build import resolve_dtype
from ..model.features import ImageFeatureCache
from .timing import compare, compare_ttft


def _answer_all(fn, items: Sequence, batch_size: int) -> list[str]:
    out: list[str] = []
    for i in range(0, len(items), batch_size):
        out += list(fn(items[i: i + batch_size]))
    return out


def identical(a: Sequence[str], b: Sequence[str]) -> float:
    return 100.0 * sum(x == y for x, y in zip(a, b)) / max(len(a), 1)


def eval_throughput(models: Sequence[tuple[str, Any]], items: Sequence, data_dir: str | None, batch_size: int = 8,
                    max_new_tokens: int = 12, repeats: int = 1, dtype: str = "auto", progress: bool = True) -> dict:
    """Per model: questions/s of fp32-plain, fp32-shared and <dtype>-shared answering (interleaved rounds),
    answer identity between them, and the first-token logit difference fp32 vs <dtype>."""
    report: dict[str, Any] = {"questions": len(items), "batch_size": batch_size, "max_new_tokens": max_new_tokens,
                              "threads": torch.get_num_threads(), "models": {}}
    for label, model in models:
        model.set_dtype("float32")
        low_name = resolve_dtype(dtype, next(model.llm.parameters()).device)
        # every timed round encodes its images, as a first evaluation pass does; the cached arm reads the encoder's
        # blocks from a cache filled beforehand, as a blind control's pass or another checkpoint of the row does
        plain = Answerer(model, data_dir, max_new_tokens, share_prefix=False)
        shared = Answerer(model, data_dir, max_new_tokens, record_logits=True, features=False)
        cached = Answerer(model, data_dir, max_new_tokens, features=ImageFeatureCache())
        names = ["fp32-plain", "fp32-shared"]
        fns = [plain, shared]
        low, low_logits = None, {}
        if low_name != "float32":  # auto is float32 where bf16 is not native: that arm would repeat fp32-shared
            low = copy.deepcopy(model)
            low.set_dtype(low_name)
            shared_low = Answerer(low, data_dir, max_new_tokens, record_logits=True, features=False)
            low_logits = shared_low.first_logits
            names.append(f"{low_name}-shared")
            fns.append(shared_low)
        if cached.features is not None:  # check_cacheable: blocks alone decide the tokens
            _answer_all(cached, items, batch_size)  # fills the cache (untimed)
            names.append("fp32-shared-cached")
            fns.append(cached)
        calls = [(n, (lambda f=f: _answer_all(f, items, batch_size))) for n, f in zip(names, fns)]
        cmp = compare(calls, repeats=repeats, warmup=0, progress=progress, desc=f"{label}: answering rounds")
        ans = {n: cmp.values[n][-1] for n in names}
        low_arm = f"{low_name}-shared"
        vs_low = ({f"{low_arm} vs fp32-shared": identical(ans[low_arm], ans[names[1]]),
                   f"{low_arm} vs fp32-plain": identical(ans[low_arm], ans[names[0]])} if low_arm in ans else {})
        keys = [k for k in shared.first_logits if k in low_logits]  # none when that arm did not run
        diffs = [float((shared.first_logits[k] - low_logits[k]).abs().max()) for k in keys]
        flips = [k for k in keys if int(shared.first_logits[k].argmax()) != int(low_logits[k].argmax())]

        def margin(k):  # fp32's top-1 minus top-2 first-token logit: how close the question was to a tie
            top = shared.first_logits[k].topk(2).values
            return float(top[0] - top[1])
        qps = {n: len(items) / (cmp.wall_ms[n]["median"] / 1e3) for n in names}
        vs_plain = {n: cmp.speedup[n] for n in names[1:]}  # per round: fp32-plain's time / this one's
        report["models"][label] = {
            "vision_tokens": model.num_image_tokens(), "dtype_after": low_name,
            "questions_per_s": qps, "wall_s": {n: cmp.wall_ms[n]["median"] / 1e3 for n in names},
            "cpu_s": {n: cmp.cpu_ms[n]["median"] / 1e3 for n in names},
            "speedup_over_fp32_plain": vs_plain,
            "identical_answers_pct": {"fp32-shared vs fp32-plain": identical(ans[names[1]], ans[names[0]]),
                                      **vs_low,
                                      **({"fp32-shared-cached vs fp32-shared": identical(ans["fp32-shared-cached"],
                                                                                         ans[names[1]])}
                                         if "fp32-shared-cached" in ans else {})},
            "first_token_logits_max_abs_diff": max(diffs) if diffs else None,
            "first_token_argmax_identical_pct": 100.0 * (len(keys) - len(flips)) / len(keys) if keys else None,
            "fp32_margin_of_flipped_first_tokens": {k: margin(k) for k in flips},
            "fp32_margin_median": float(torch.tensor([margin(k) for k in keys]).median()) if keys else None,
            "rounds": cmp.rounds, "warnings": cmp.warnings,
            "answers": {n: dict(zip([it.key for it in items], ans[n])) for n in names},
        }
        del low
    return report


def ttft_by_dtype(model, image, question: str, dtypes: Sequence[str] = ("float32", "auto"), repeats: int = 5,
                  progress: bool = True):
    """TTFT of the same model in each dtype, interleaved (``compare_ttft``); the first dtype is the reference."""
    copies = []
    for d in dtypes:
        m = copy.deepcopy(model)
        name = m.set_dtype(d)
        if name not in dict(copies):  # auto may resolve to float32 (no fast bf16 here)
            copies.append((name, m))
    return compare_ttft(copies, [image], question, repeats=repeats, warmup=1, progress=progress,
                        desc="TTFT by dtype")

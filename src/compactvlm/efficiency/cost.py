"""The cost of one answer: FLOPs (encoder + compressor vs LLM, ``torch.utils.flop_counter``) and time-to-first-token
through ``efficiency.timing`` (the one timing path). Used by the study's rows and ``compactvlm demo``."""

from __future__ import annotations


def measure_cost(model, image, question: str, repeats: int, extra_state: dict | None = None) -> dict:
    """TTFT (median ms, with min/max and process CPU ms) and FLOPs of one batch-1 forward: encode + compress +
    prefill + first-token logits (``logits_to_keep=1``); FLOPs split into vision (encoder + compressor) and LLM.
    The time comes from ``efficiency.timing.compare_ttft``, the one timing path; to compare rows' speed, time
    them together with it (interleaved), as ``compactvlm demo`` and ``bench`` do."""
    import torch

    from ..efficiency.flops import flop_counter
    from ..efficiency.timing import compare_ttft

    dev = next(model.llm.parameters()).device
    ids, mask = model.pad_left([model.prompt_ids(question)])
    ids, mask, pix = ids.to(dev), mask.to(dev), model.processor([image]).to(dev)
    with torch.inference_mode():
        with flop_counter() as fc:
            model.forward(ids, mask, pix, logits_to_keep=1, extra_state=extra_state)
        total = fc.get_total_flops()
        with flop_counter() as fv:
            model.encode_images(pix, extra_state)
        vision = fv.get_total_flops()
    wall = cpu = {"median": None, "min": None, "max": None}
    if repeats > 0:  # repeats 0: FLOPs only (callers that time several models together, interleaved)
        cmp = compare_ttft([("row", model)], pix, question, repeats=repeats, warmup=1,
                           extra_states={"row": extra_state})
        wall, cpu = cmp.wall_ms["row"], cmp.cpu_ms["row"]
    return {"ttft_ms": wall["median"], "ttft_ms_min": wall["min"], "ttft_ms_max": wall["max"],
            "ttft_cpu_ms": cpu["median"], "dtype": str(next(model.llm.parameters()).dtype).replace("torch.", ""),
            "prompt_tokens": int(ids.shape[1]), "flops_total": int(total), "flops_vision": int(vision),
            "flops_llm": int(total - vision), "threads": torch.get_num_threads()}

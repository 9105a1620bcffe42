"""A fully fine-tuned LLM as a LoRA adapter: the truncated SVD of each linear layer's weight change.

Stage 2 of the recipe (docs/recipe.md) trains the whole LLM, as LLaVA-1.5 does; a folder holding the whole LLM is
545 MB in fp32, too large to ship. For each target linear layer the change ``W_tuned - W_base`` (out, in) is
replaced by its best rank-r approximation (Eckart-Young): ``B = U_r sqrt(S_r)`` (out, r), ``A = sqrt(S_r) Vh_r``
(r, in), with ``lora_alpha = r`` so that peft's scaling is 1 and ``W_base + B @ A`` is the approximation. Weights
outside the targets (embeddings, norms) keep the base model's values; :func:`lora_from_finetune` reports how much of
the squared weight change is kept, cut from the targets' tails, and dropped per kind, so a user can judge (and must
evaluate) the result. Used by ``scripts/extract_lora.py``.
"""

from __future__ import annotations

import torch

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _kind(name: str) -> str:
    return "embeddings" if "embed" in name or "lm_head" in name else "norms" if "norm" in name else "other"


@torch.no_grad()
def lora_from_finetune(tuned_llm: torch.nn.Module, base_llm: torch.nn.Module, rank: int,
                       targets: tuple[str, ...] = TARGETS):
    """Wrap ``base_llm`` with peft LoRA adapters (r = alpha = ``rank``) that approximate ``tuned_llm``'s change on
    the ``targets`` linear layers. Returns (peft model, report); the report gives shares of the total squared
    weight change: ``kept``, ``cut`` (the targets' singular values beyond the rank) and ``dropped`` per kind."""
    from peft import LoraConfig, get_peft_model

    t_sd, b_sd = tuned_llm.state_dict(), base_llm.state_dict()
    if set(t_sd) != set(b_sd):
        raise ValueError("the tuned and base LLMs have different weights: not the same architecture")
    factors: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    kept = cut = total = 0.0
    dropped: dict[str, float] = {}
    for name, w in t_sd.items():
        delta = w.float() - b_sd[name].float()
        d2 = float(delta.pow(2).sum())
        total += d2
        parts = name.split(".")
        if len(parts) >= 2 and parts[-1] == "weight" and parts[-2] in targets and delta.dim() == 2:
            u, s, vh = torch.linalg.svd(delta, full_matrices=False)  # delta (out, in) = U diag(S) Vh
            r = min(rank, s.numel())
            root = s[:r].sqrt()
            b = torch.zeros(delta.shape[0], rank)
            a = torch.zeros(rank, delta.shape[1])
            b[:, :r], a[:r] = u[:, :r] * root, root[:, None] * vh[:r]  # B (out, rank), A (rank, in)
            factors[".".join(parts[:-1])] = (b, a)
            k2 = float(s[:r].pow(2).sum())
            kept, cut = kept + k2, cut + d2 - k2
        elif d2 > 0:
            dropped[_kind(name)] = dropped.get(_kind(name), 0.0) + d2
    if not factors:
        raise ValueError(f"no linear layer named one of {targets} in the LLM")
    model = get_peft_model(base_llm, LoraConfig(r=rank, lora_alpha=rank, lora_dropout=0.0,
                                                target_modules=list(targets), bias="none"))
    done = 0
    for mod_name, module in model.named_modules():
        key = mod_name.removeprefix("base_model.model.")
        if key in factors and hasattr(module, "lora_A"):
            b, a = factors[key]
            ref = module.lora_A["default"].weight
            module.lora_A["default"].weight.copy_(a.to(ref.dtype))
            module.lora_B["default"].weight.copy_(b.to(ref.dtype))
            done += 1
    if done != len(factors):
        raise ValueError(f"placed {done} of {len(factors)} adapters: module names did not match")
    share = (lambda x: x / total) if total else (lambda x: 0.0)
    report = {"rank": rank, "layers": done, "kept": share(kept), "cut": share(cut),
              "dropped": {k: share(v) for k, v in sorted(dropped.items())}}
    return model, report

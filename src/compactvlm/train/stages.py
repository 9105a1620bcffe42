"""Stages as configuration: which parameters train, how (full or LoRA), and at which learning rate.

Every parameter of the CompactVLM is matched against the prefixes of ``stage.modules`` (``encoder``,
``compressor``, ``compressor.grouping``, ``llm``, ...; the longest prefix ending at a ``.`` boundary wins):

- ``frozen``: ``requires_grad=False``;
- ``full``: trained, in a parameter group with the prefix's learning rate (default ``optim.lr``);
- ``lora`` (only ``llm``): the LLM is wrapped by peft (``get_peft_model``) with ``stage.lora``; only the
  adapter matrices train.

Parameters no prefix covers are frozen. A prefix that names no parameter is an error (typo guard).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..errors import CompactVLMError
from ..model.adapters import is_peft
from .config import LoraConfig, ModuleSpec, StageConfig


@dataclass
class GroupSummary:
    prefix: str
    mode: str
    lr: float | None
    trainable: int
    total: int


def match_prefix(name: str, prefixes) -> str | None:
    """The longest prefix ``p`` with ``name == p`` or ``name.startswith(p + '.')``."""
    best = None
    for p in prefixes:
        if (name == p or name.startswith(p + ".")) and (best is None or len(p) > len(best)):
            best = p
    return best


def add_lora(model: nn.Module, lora: LoraConfig) -> None:
    """Wrap ``model.llm`` with peft LoRA adapters (in place)."""
    from peft import LoraConfig as PeftLoraConfig, get_peft_model

    if is_peft(model.llm):
        raise CompactVLMError("the LLM already has LoRA adapters", "merge them first (load_pretrained merges)")
    names = {n.rsplit(".", 1)[-1] for n, _ in model.llm.named_modules()}
    unknown = [t for t in lora.target_modules if t not in names]
    if unknown:
        raise CompactVLMError(f"stage.lora.target_modules {unknown} are not modules of the LLM",
                              "use names of its linear layers, e.g. q_proj, k_proj, v_proj, o_proj, up_proj")
    pcfg = PeftLoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                          target_modules=list(lora.target_modules), task_type="CAUSAL_LM")
    model.llm = get_peft_model(model.llm, pcfg)


def apply_stage(model: nn.Module, stage: StageConfig, base_lr: float) -> tuple[list[dict], list[GroupSummary]]:
    """Set ``requires_grad`` per the stage and return (optimizer param groups, summary rows).

    Each group carries ``name`` (its prefix) and ``lr``; group order follows ``stage.modules``.
    """
    specs: dict[str, ModuleSpec] = stage.specs()
    names = [n for n, _ in model.named_parameters()]
    for prefix in specs:
        if not any(n == prefix or n.startswith(prefix + ".") for n in names):
            tops = sorted({n.split(".")[0] for n in names})
            raise CompactVLMError(
                f"stage.modules prefix {prefix!r} matches no parameter of the model",
                f"use a module path such as {', '.join(tops)} (or a sub-module, e.g. compressor.grouping)",
            )
    if any(s.mode == "lora" for s in specs.values()):
        add_lora(model, stage.lora)
    groups: dict[str, list[nn.Parameter]] = {p: [] for p in specs}
    totals = {p: 0 for p in specs}
    for name, param in model.named_parameters():
        prefix = match_prefix(name, specs)
        if prefix is None:
            param.requires_grad_(False)
            continue
        mode = specs[prefix].mode
        train = mode == "full" or (mode == "lora" and "lora_" in name)
        param.requires_grad_(train)
        totals[prefix] += param.numel()
        if train:
            groups[prefix].append(param)
    out, rows = [], []
    for prefix, spec in specs.items():
        lr = spec.lr if spec.lr is not None else base_lr
        n_train = sum(p.numel() for p in groups[prefix])
        rows.append(GroupSummary(prefix, spec.mode, lr if n_train else None, n_train, totals[prefix]))
        if groups[prefix]:
            out.append({"params": groups[prefix], "lr": lr, "name": prefix})
    if not out:
        raise CompactVLMError("the stage trains no parameter (every module is frozen)",
                              "set e.g. stage.modules.compressor=full")
    return out, rows


def trainable_names(model: nn.Module) -> list[str]:
    return [n for n, p in model.named_parameters() if p.requires_grad]


def format_summary(rows: list[GroupSummary]) -> str:
    lines = [f"{'module':<28} {'mode':<7} {'lr':>9} {'trainable':>14} {'of':>14}"]
    for r in rows:
        lr = f"{r.lr:.1e}" if r.lr else "-"
        lines.append(f"{r.prefix:<28} {r.mode:<7} {lr:>9} {r.trainable:>14,} {r.total:>14,}")
    return "\n".join(lines)

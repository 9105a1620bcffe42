"""FLOPs of one benchmark row, counted with ``torch.utils.flop_counter.FlopCounterMode`` on the ``meta`` device.

No hand formulas and no weights: the encoder, compressor and LLM are built from their configs on ``meta``
(``presets.build_backbone(weights="meta")``) and run on empty tensors, so a 7B model is counted in seconds.
FlopCounterMode counts matmuls, convolutions and (SDPA) attention, 2 FLOPs per multiply-add; element-wise ops,
norms and softmax are not counted. Every figure is per sample (batch 1; FLOPs are linear in the batch).

Split of the time-to-first-token work:
- ``encoder``: the vision encoder's forward (only the blocks the compressor reads: LLaVA's -2 runs 23 of 24);
- ``compressor``: everything else in ``CompactVLM.encode_images`` (the compressor, or a reduction + the
  compressor's projection; VisionZip's extra q/k projection counts here);
- ``llm_prefill``: the LLM over the whole prompt (text + vision tokens) with ``logits_to_keep=1``, i.e.
  prefill + the first token's logits; FastV runs its own pruned prefill (layers 1..K on all tokens);
- ``llm_vision_only``: the same LLM prefill over the vision tokens alone (no text), the figure papers quote
  (LLaVA-1.5-7B: 7.63 TFLOPs at 576 tokens, 1.88 at 144).
``kv_cache_bytes`` is measured from the ``DynamicCache`` the meta prefill fills (per sample, model dtype).

Data-dependent methods (VisionZip's grouping, mask-based object tokens) cannot run on ``meta``; their vision
stage is then counted on a random-weight CPU copy of the encoder (the LLM stays on ``meta``).
FastV's pruning (top-k of attention scores) is made shape-only on ``meta`` by keeping the first ``budget``
vision tokens: which tokens are kept does not change the count.
"""

from __future__ import annotations

import contextlib
import copy
import weakref
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from ..errors import CompactVLMError
from ..hf_compat import cache_kwargs
from .memory import available_bytes, cache_bytes
from .presets import Backbone, BenchSpec, Preset, build_backbone, build_vlm

META = torch.device("meta")


class _GlobalOnly:
    """Stands in for FlopCounterMode's ModuleTracker: every FLOP goes to the global total only."""

    parents = ("Global",)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class TotalFlopCounter(FlopCounterMode):
    """``FlopCounterMode`` keeping only the global total. Its per-module ModuleTracker installs backward hooks that
    make ``torch.autograd.grad`` inside the counted region fail (MaskInversion optimises inside the forward)."""

    def __init__(self):
        super().__init__(display=False)
        self.mod_tracker = _GlobalOnly()


@contextlib.contextmanager
def flop_counter():
    """Count the FLOPs of a block (2 per multiply-add): ``with flop_counter() as fc: ...; fc.get_total_flops()``.
    SDPA is forced to its math path, made of matmuls FlopCounterMode counts (CPU's fused flash kernel is not)."""
    with TotalFlopCounter() as fc, sdpa_kernel(SDPBackend.MATH):
        yield fc


@dataclass
class RowFlops:
    label: str
    vision_tokens: int  # vision tokens placed in the prompt
    equivalent_tokens: float  # vision tokens of a plain model with the same LLM cost (FastV < vision_tokens)
    text_tokens: int
    encoder: int
    compressor: int
    llm_prefill: int  # whole prompt, logits_to_keep=1
    llm_vision_only: int  # vision tokens alone
    kv_cache_bytes: int  # per sample, after the prompt's prefill
    vision_counted_on: str  # "meta" | "cpu" (data-dependent vision stage)

    @property
    def total(self) -> int:
        """FLOPs up to the first token: encoder + compressor + LLM prefill."""
        return self.encoder + self.compressor + self.llm_prefill

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "total": self.total}


def text_split(text_tokens: int) -> tuple[int, int]:
    """Text tokens before and after the image in a synthetic prompt (placement does not change FLOPs)."""
    pre = text_tokens // 2
    return pre, text_tokens - pre


def _new_cache(llm):
    from transformers import DynamicCache

    return DynamicCache(config=llm.config)


def _count(fn) -> tuple[int, Any]:
    with flop_counter() as fc:
        out = fn()
    return int(fc.get_total_flops()), out


def vision_flops(model, batch: int = 1) -> tuple[int, int, torch.Tensor]:
    """(encoder FLOPs, compressor FLOPs, vision tokens (B, M, D)) of ``model.encode_images`` on its device."""
    enc = model.encoder
    p = next(enc.parameters())
    s = model.processor.size
    if p.device.type == "meta":
        pix = torch.empty(batch, 3, s, s, device=META, dtype=p.dtype)
    else:
        pix = torch.randn(batch, 3, s, s, generator=torch.Generator().manual_seed(0)).to(p.device, p.dtype)
    spans: list[list[int]] = []
    # the math SDPA path is made of matmuls FlopCounterMode counts (CPU's fused flash kernel is not counted)
    with flop_counter() as fc:
        h1 = enc.register_forward_pre_hook(lambda m, a: spans.append([fc.get_total_flops(), fc.get_total_flops()]))
        h2 = enc.register_forward_hook(lambda m, a, o: spans[-1].__setitem__(1, fc.get_total_flops()))
        try:
            with torch.inference_mode():
                tokens = model.encode_images(pix)
        finally:
            h1.remove()
            h2.remove()
        total = fc.get_total_flops()
    enc_flops = int(sum(b - a for a, b in spans))
    return enc_flops, int(total - enc_flops), tokens


def llm_prefill_flops(model, tokens: torch.Tensor, text_tokens: int, llm=None) -> tuple[int, int, int]:
    """(prefill FLOPs of text + vision tokens, prefill FLOPs of the vision tokens alone, KV-cache bytes).

    ``llm``: the LLM to run (default ``model.llm``; a meta copy of it for a model with real weights)."""
    llm = model.llm if llm is None else llm
    dtype = next(llm.parameters()).dtype
    b, m, d = tokens.shape
    tokens = tokens.to(META, dtype)
    pre, post = text_split(text_tokens)
    embeds = torch.cat([torch.empty(b, pre, d, device=META, dtype=dtype), tokens,
                        torch.empty(b, post, d, device=META, dtype=dtype)], dim=1)  # (B, T, D)
    image_mask = torch.zeros(b, pre + m + post, dtype=torch.bool)
    image_mask[:, pre:pre + m] = True
    red = model.reduction

    def prefill(x: torch.Tensor, mask: torch.Tensor):
        cache = _new_cache(llm)

        def run():
            with torch.inference_mode():
                if red is not None and red.in_llm:
                    return red.llm_forward(llm, x, None, mask.to(META), logits_to_keep=1, past_key_values=cache)
                return llm(inputs_embeds=x, **cache_kwargs(llm, cache), use_cache=True, logits_to_keep=1)

        flops, _ = _count(run)
        return flops, cache_bytes(cache)

    full, kv = prefill(embeds, image_mask)
    vis, _ = prefill(tokens, torch.ones(b, m, dtype=torch.bool))
    return full, vis, kv


_META_LLMS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def meta_llm(llm):
    """A weightless copy of ``llm`` on the meta device (same config, SDPA), cached per LLM."""
    if llm not in _META_LLMS:
        from transformers import AutoModelForCausalLM

        cfg = copy.deepcopy(llm.config)
        with torch.device(META):
            _META_LLMS[llm] = AutoModelForCausalLM.from_config(cfg, dtype=next(llm.parameters()).dtype,
                                                               attn_implementation="sdpa").eval()
    return _META_LLMS[llm]


def prefill_flops(model, question: str | None = None, text_tokens: int = 0) -> int:
    """LLM prefill FLOPs (``logits_to_keep=1``) of a CompactVLM's prompt with its vision tokens, counted on a
    meta copy of its LLM: the prompt built from ``question`` when the model has a tokenizer, else
    ``text_tokens`` text tokens around the image. FastV-style reductions count their pruned prefill."""
    m = model.num_image_tokens()
    if question is not None and model.tokenizer is not None:
        text_tokens = len(model.prompt_ids(question)) - m
    llm = meta_llm(model.llm)
    tokens = torch.empty(1, m, model.llm_dim, device=META, dtype=next(llm.parameters()).dtype)
    return llm_prefill_flops(model, tokens, int(text_tokens), llm=llm)[0]


class FlopsCounter:
    """Counts rows of one preset; the meta backbone (and a CPU vision fallback) is built once."""

    def __init__(self, preset: Preset, dtype: str = "float32", backbone: Backbone | None = None):
        self.preset = preset
        self.dtype = dtype
        self.meta = backbone or build_backbone(preset, weights="meta", dtype=dtype)
        self._cpu: Backbone | None = None
        self._models: dict[str, Any] = {}

    def meta_model(self, spec: BenchSpec):
        """The row's CompactVLM on meta (validates compressor, options and budget); built once per row."""
        if spec.text not in self._models:
            self._models[spec.text] = build_vlm(self.meta, spec)
        return self._models[spec.text]

    def _cpu_backbone(self) -> Backbone:
        """Random-weight float32 CPU encoder (for data-dependent vision stages) + the meta LLM."""
        if self._cpu is None:
            from ..encoders.hf import HFVisionEncoder
            from .presets import _vision_class

            vcfg = copy.deepcopy(self.preset.vision_config)
            vcfg._attn_implementation = "sdpa"
            with torch.device(META):
                need = sum(p.numel() * 4 for p in _vision_class(vcfg)._from_config(vcfg).parameters())
            have = available_bytes(torch.device("cpu"))
            if have is not None and need > 0.5 * have:
                raise CompactVLMError(
                    f"counting this row needs its data-dependent vision stage on the CPU ({need / 2**30:.1f} GiB "
                    f"of random encoder weights), but only {have / 2**30:.1f} GiB are free",
                    "drop the row (visionzip / objects) or run on a machine with more memory")
            vision = _vision_class(vcfg)._from_config(vcfg, dtype=torch.float32, attn_implementation="sdpa").eval()
            p = self.preset
            enc = HFVisionEncoder(vision, image_size=p.image_size, image_mean=p.image_mean, image_std=p.image_std)
            self._cpu = Backbone(enc, self.meta.llm, None, self.meta.processor, torch.device("cpu"), torch.float32,
                                 "random", self.meta.system_prompt)
        return self._cpu

    def count(self, spec: BenchSpec, text_tokens: int) -> RowFlops:
        model = self.meta_model(spec)
        where = "meta"
        try:
            enc_f, comp_f, tokens = vision_flops(model)
        except (NotImplementedError, RuntimeError):  # data-dependent op on meta: count that stage on the CPU
            where = "cpu"
            cpu_model = build_vlm(self._cpu_backbone(), spec)
            enc_f, comp_f, tokens = vision_flops(cpu_model)
        full, vis, kv = llm_prefill_flops(model, tokens, text_tokens)
        grid = model.grid
        m = model.num_image_tokens()
        equiv = float(model.reduction.equivalent_tokens(grid)) if model.reduction is not None else float(m)
        return RowFlops(spec.label, m, equiv, int(text_tokens), enc_f, comp_f, full, vis, kv, where)


def count_rows(preset: Preset, rows: list[str], text_tokens: int = 0, dtype: str = "float32") -> list[RowFlops]:
    """FLOPs of benchmark rows (``COMPRESSOR[:k=v][+REDUCTION[:k=v]]``) of one preset."""
    counter = FlopsCounter(preset, dtype)
    return [counter.count(BenchSpec.parse(r), text_tokens) for r in rows]

"""CompactVLM: vision encoder -> compressor -> LLM, LLaVA style.

    feats  = encoder(pixels, layers=compressor.feature_layers(), extra_tokens=compressor.extra_tokens())
    tokens = compressor(feats)                       # (B, M, D_llm), M = compressor.num_output_tokens(grid)
    embeds = merge(llm.embed(text ids), tokens)      # the M <image> positions, count checked
    llm(inputs_embeds=embeds)

A test-time ``reduction`` (random drop, VisionZip, ...) may stand between encoder and LLM; it then declares the
token count instead of the compressor.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from torch import nn

from ..compressors.base import Compressor
from ..data.images import ImageProcessor
from ..encoders.hf import HFVisionEncoder
from ..errors import CompactVLMError
from .prompting import IGNORE_INDEX, IMAGE_TOKEN_ID, build_prompt


@dataclass
class GenerationResult:
    texts: list[str]
    num_image_tokens: int
    prompt_tokens: list[int]
    timings_ms: dict[str, float] = field(default_factory=dict)


class CompactVLM(nn.Module):
    def __init__(self, encoder: HFVisionEncoder, compressor: Compressor, llm: nn.Module, tokenizer,
                 processor: ImageProcessor | None = None, system_prompt: str | None = None):
        super().__init__()
        self.encoder = encoder
        self.compressor = compressor
        self.llm = llm
        self.tokenizer = tokenizer
        self.processor = processor or ImageProcessor(encoder.info.image_size, encoder.image_mean, encoder.image_std)
        self.system_prompt = system_prompt
        self.reduction: nn.Module | None = None
        self.config_dict: dict[str, Any] = {}
        if tokenizer is not None and tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token

    # ---- folders -------------------------------------------------------------------------------------
    def save_pretrained(self, out_dir, embed: bool = True, **kwargs):
        """One self-contained folder (config, safetensors weights, encoder/, llm/, tokenizer/, image processor);
        ``embed=False`` references the encoder/LLM by name instead (see ``model.checkpoint.save_pretrained``)."""
        from .checkpoint import save_pretrained

        return save_pretrained(self, out_dir, embed=embed, **kwargs)

    @classmethod
    def from_pretrained(cls, path, **kwargs) -> "CompactVLM":
        """Load a compact folder (``model.checkpoint.load_pretrained``). LLaVA-HF / original LLaVA / LLaVA-STF
        folders load with ``compactvlm.interop.load_model`` (the model layer does not import the interop layer)."""
        from pathlib import Path

        from .checkpoint import CONFIG_NAME, load_pretrained
        from .shipped import resolve_checkpoint

        path = resolve_checkpoint(path)  # a folder, or a shipped short name (demo:stf-k2e1)
        if not (Path(path) / CONFIG_NAME).is_file():
            raise CompactVLMError(f"{path} is not a compactvlm folder (no {CONFIG_NAME})",
                                  "load llava-hf / LLaVA folders with compactvlm.interop.load_model(path), or convert "
                                  "them once: compactvlm convert --from llava-hf SRC --out DIR")
        return load_pretrained(path, **kwargs)

    # ---- token counts -------------------------------------------------------------------------------
    @property
    def grid(self) -> tuple[int, int]:
        s = self.processor.size // self.encoder.info.patch_size
        return (s, s)

    def num_image_tokens(self, grid: tuple[int, int] | None = None) -> int:
        """The one place the number of vision tokens reaching the LLM is read from."""
        grid = grid or self.grid
        if self.reduction is not None:
            return self.reduction.num_output_tokens(grid)
        return self.compressor.num_output_tokens(grid)

    @property
    def llm_dim(self) -> int:
        return self.llm.get_input_embeddings().embedding_dim

    @property
    def dtype(self) -> torch.dtype:
        return next(self.llm.parameters()).dtype

    def set_dtype(self, dtype: str = "auto") -> str:
        """Cast encoder, compressor, reduction and LLM for inference: ``auto`` is bfloat16 where the device runs
        it fast (``model.build.bf16_is_fast``: CUDA, CPUs with AMX/AVX512-BF16), else float32. Returns the name."""
        from .build import resolve_dtype

        name = resolve_dtype(dtype, next(self.llm.parameters()).device)
        dt = getattr(torch, name)
        for part in (self.encoder, self.compressor, self.llm, self.reduction):
            if part is not None:
                part.to(dt)
        self.config_dict["dtype"] = name
        return name

    def set_budget(self, budget: int | None, reduce: str | None = None, **reduce_params) -> None:
        """The test-time token budget, the one library call CLI, study, serve, bench and the lmms-eval plugin use:
        with ``reduce`` a training-free reduction (``registry.REDUCTIONS``) at ``budget`` (its own options in
        ``reduce_params``, e.g. FastV's ``k``); without, the compressor's own budget (``Compressor.set_budget``,
        which refuses for compressors that have none). ``reduce=None, budget=None`` restores the trained model."""
        if reduce:
            from ..registry import REDUCTIONS

            self.reduction = REDUCTIONS.create(reduce, budget=budget, model=self, **reduce_params)
            return
        if reduce_params:
            raise CompactVLMError(f"options {sorted(reduce_params)} need a reduction", "pass reduce=NAME with them")
        self.reduction = None
        if budget is None and not self.compressor.has_budget:
            return
        self.compressor.set_budget(budget)

    # ---- vision side ----------------------------------------------------------------------------------
    def encoder_features(self, pixel_values: torch.Tensor, extra_state: dict | None = None):
        """The encoder features the compressor / reduction read: their blocks, the compressor's extra tokens
        (with its attention mode) and ``extra_state`` (pixels, the encoder, anything the caller adds)."""
        comp = self.compressor
        layers = self.feature_layers()
        # a reduction inside the encoder (tome) merges tokens between its blocks while it runs
        with self.reduction.encoder_context(self.encoder) if self.reduction is not None else contextlib.nullcontext():
            feats = self.encoder(pixel_values, layers=layers, extra_tokens=comp.extra_tokens(),
                                 extra_attention=comp.extra_attention)
        feats.extra_state.update(pixel_values=pixel_values, encoder=self.encoder)
        if extra_state:
            feats.extra_state.update(extra_state)
        return feats

    def feature_layers(self) -> list[int]:
        """The encoder blocks the compressor reads, and the reduction's besides them."""
        layers = list(self.compressor.feature_layers())
        if self.reduction is not None:
            layers = sorted(set(layers) | set(self.reduction.feature_layers()))
        return layers

    def tokens_from_features(self, feats) -> torch.Tensor:
        """Encoder features -> vision tokens (B, M, D_llm): the reduction's when one is set, else the compressor's."""
        comp = self.compressor
        if self.reduction is not None:
            return self.reduction(feats, comp)
        return comp.check_output(comp(feats), feats)

    def encode_images(self, pixel_values: torch.Tensor, extra_state: dict | None = None) -> torch.Tensor:
        """pixels (B, 3, S, S) -> vision tokens (B, M, D_llm)."""
        return self.tokens_from_features(self.encoder_features(pixel_values, extra_state))

    # ---- merge ----------------------------------------------------------------------------------------
    def merge(self, input_ids: torch.Tensor, image_tokens: torch.Tensor | None) -> torch.Tensor:
        """Embed text ids and write the image tokens into the placeholder positions (count checked)."""
        is_img = input_ids == IMAGE_TOKEN_ID  # (B, T)
        embeds = self.llm.get_input_embeddings()(input_ids.clamp(min=0))  # (B, T, D)
        n_pos = int(is_img.sum())
        if image_tokens is None:
            if n_pos:
                raise CompactVLMError(f"the prompt has {n_pos} image positions but no image was given", "pass an image")
            return embeds
        b, m, d = image_tokens.shape
        per_row = is_img.sum(dim=1)
        if n_pos != b * m or bool((per_row != m).any()):
            raise CompactVLMError(
                f"image positions in the prompt ({per_row.tolist()} per sample) do not match the {m} tokens per "
                f"image the compressor produced for {b} image(s)",
                "build prompts with the model's num_image_tokens() (one <image> per sample)",
            )
        return embeds.masked_scatter(is_img.unsqueeze(-1), image_tokens.to(embeds.dtype).reshape(-1, d))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                pixel_values: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, logits_to_keep: int | torch.Tensor = 0,
                extra_state: dict | None = None, **kwargs):
        image_tokens = self.encode_images(pixel_values, extra_state) if pixel_values is not None else None
        embeds = self.merge(input_ids, image_tokens)
        if image_tokens is not None and self.reduction is not None and self.reduction.in_llm:  # FastV: prunes inside the LLM
            return self.reduction.llm_forward(self.llm, embeds, attention_mask, input_ids == IMAGE_TOKEN_ID,
                                              position_ids=position_ids, labels=labels,
                                              logits_to_keep=logits_to_keep, **kwargs)
        return self.llm(inputs_embeds=embeds, attention_mask=attention_mask, position_ids=position_ids,
                        labels=labels, logits_to_keep=logits_to_keep, **kwargs)

    # ---- prompts and generation ----------------------------------------------------------------------
    def prompt_ids(self, question: str, with_image: bool = True) -> list[int]:
        return build_prompt(self.tokenizer, question, self.num_image_tokens() if with_image else 0,
                            self.system_prompt, with_image=with_image)

    def pad_left(self, seqs: Sequence[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-pad for generation: (B, T) ids and attention mask."""
        t = max(len(s) for s in seqs)
        pad = self.tokenizer.pad_token_id
        ids = torch.full((len(seqs), t), pad, dtype=torch.long)
        mask = torch.zeros((len(seqs), t), dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, t - len(s):] = torch.tensor(s, dtype=torch.long)
            mask[i, t - len(s):] = 1
        return ids, mask

    def check_context(self, lengths: Sequence[int], max_new_tokens: int) -> None:
        limit = getattr(self.llm.config, "max_position_embeddings", None)
        if limit and max(lengths) + max_new_tokens > limit:
            raise CompactVLMError(
                f"prompt of {max(lengths)} tokens + {max_new_tokens} new tokens exceeds the LLM context of {limit}",
                "shorten the question, lower --max-new-tokens, or use a compressor with fewer vision tokens",
            )

    @torch.inference_mode()
    def generate(self, images: Sequence | None, questions: Sequence[str], max_new_tokens: int = 32,
                 do_sample: bool = False, extra_state: dict | None = None, **gen_kwargs) -> GenerationResult:
        """Answer one question per image (batched, greedy by default)."""
        dev = next(self.llm.parameters()).device
        timings: dict[str, float] = {}
        with_image = images is not None
        if with_image and len(images) != len(questions):
            raise CompactVLMError(f"{len(images)} images but {len(questions)} questions", "give one question per image")
        seqs = [self.prompt_ids(q, with_image=with_image) for q in questions]
        self.check_context([len(s) for s in seqs], max_new_tokens)
        ids, mask = self.pad_left(seqs)
        ids, mask = ids.to(dev), mask.to(dev)
        t0 = time.perf_counter()
        image_tokens = None
        if with_image:
            pix = images if isinstance(images, torch.Tensor) else self.processor(images)
            image_tokens = self.encode_images(pix.to(dev), extra_state)
        t1 = time.perf_counter()
        embeds = self.merge(ids, image_tokens)
        if with_image and self.reduction is not None and self.reduction.in_llm:  # FastV: its own prefill + pruned KV cache
            out = self.reduction.generate(self.llm, embeds, mask, ids == IMAGE_TOKEN_ID, max_new_tokens=max_new_tokens,
                                          do_sample=do_sample, pad_token_id=self.tokenizer.pad_token_id, **gen_kwargs)
        else:
            out = self.llm.generate(inputs_embeds=embeds, attention_mask=mask, max_new_tokens=max_new_tokens,
                                    do_sample=do_sample, pad_token_id=self.tokenizer.pad_token_id, **gen_kwargs)
        t2 = time.perf_counter()
        texts = self.tokenizer.batch_decode(out, skip_special_tokens=True)
        timings.update(vision_ms=(t1 - t0) * 1e3, generate_ms=(t2 - t1) * 1e3)
        return GenerationResult([t.strip() for t in texts], self.num_image_tokens() if with_image else 0,
                                [len(s) for s in seqs], timings)


def collate_labels(seqs: Sequence[tuple[list[int], list[int]]], pad_id: int,
                   pad_to_multiple_of: int | None = None) -> dict[str, torch.Tensor]:
    """Right-pad (input_ids, labels) pairs for training: ids, attention mask, labels (IGNORE on padding). With
    ``pad_to_multiple_of`` the length is rounded up to a multiple of it."""
    t = max(len(s[0]) for s in seqs)
    if pad_to_multiple_of and pad_to_multiple_of > 1:
        t = -(-t // pad_to_multiple_of) * pad_to_multiple_of
    ids = torch.full((len(seqs), t), pad_id, dtype=torch.long)
    labels = torch.full((len(seqs), t), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(seqs), t), dtype=torch.long)
    for i, (s, l) in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        labels[i, : len(l)] = torch.tensor(l)
        mask[i, : len(s)] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}

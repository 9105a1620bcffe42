"""The model's answering function for the evaluation harness (``answer_fn(list[EvalItem]) -> list[str]``).

Greedy answers, computed with as little repeated work as the prompts allow:

- **one encode per image**: questions of the same image in a batch share one encoder + compressor pass, and the
  frozen encoder's blocks of each image are kept (``model.features.ImageFeatureCache``: in memory, optionally on
  disk) so that a blind control's pass over the same images, or another checkpoint with the same encoder, runs
  only the compressor (or a reduction that reads only the blocks) on them (not for compressors that add tokens
  inside the encoder or read the image, nor for reductions that need more: ``check_cacheable``);
- **one vision-prefix prefill per image**: the prompt is ``[system/user header] <image tokens> [question,
  assistant header]``; everything up to the last image token (the prefix) is identical for every question of an
  image, so its KV cache is computed once and each question continues from a copy of it;
- **prompts batched by length**: a batch's questions are sorted by suffix length and continue together from
  their images' prefixes; a shorter suffix is padded on its left, between prefix and question (masked keys,
  positions counting real tokens only, as ``generate`` does for a left-padded prompt), so the batch prefills
  its suffixes in one LLM call and decodes in one loop;
- **decoding stops at the answer's end**: a sequence is done at an end-of-turn token; for closed-form families
  (yes/no, counting, multiple choice: ``CLOSED_FORM``) also at the first line break, and its text ends there. A
  batch stops as soon as all its sequences are done.

FastV-style reductions (pruning inside the LLM), models without a tokenizer and ``share_prefix=False`` take the
plain path: ``CompactVLM.generate`` on the batch (left padding, one encode per question). The test
``test_answer.py`` checks that both paths give the same answers.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from ..hf_compat import cache_kwargs
from ..model.features import ImageFeatureCache, check_cacheable, encode_from_features
from ..model.prompting import IMAGE_TOKEN_ID

#: families (SceneQA categories, benchmark categories) whose answer is one word, number or option letter
CLOSED_FORM = frozenset({"existence", "mme", "multiple_choice", "counting", "pope", "adversarial", "popular",
                         "random", "scienceqa", "mmbench"})


def _eos_ids(llm, tokenizer) -> set[int]:
    """The ids ``generate`` stops at: the LLM's generation config, else the tokenizer's end-of-sequence."""
    cfg = getattr(llm, "generation_config", None)
    eos = getattr(cfg, "eos_token_id", None) if cfg is not None else None
    if eos is None:
        eos = tokenizer.eos_token_id
    return {int(i) for i in (eos if isinstance(eos, (list, tuple)) else [eos]) if i is not None}


def _newline_ids(tokenizer) -> set[int]:
    """Vocabulary ids whose text contains a line break (the end of a one-line answer)."""
    vocab = tokenizer.get_vocab()
    out = set()
    for piece, i in vocab.items():
        text = tokenizer.convert_tokens_to_string([piece])
        if "\n" in text:
            out.add(i)
    return out


class Answerer:
    """``answer_fn`` for ``evaluate.harness.evaluate`` (see the module docstring)."""

    def __init__(self, model, data_dir: str | None = None, max_new_tokens: int = 12, share_prefix: bool = True,
                 stop_at_answer: bool = True, closed_form: Callable[[Any], bool] | None = None,
                 record_logits: bool = False, features: ImageFeatureCache | None | bool = True):
        """``features``: the encoder-feature cache of the shared path (True: a new in-memory one; an
        ``ImageFeatureCache`` to share one, e.g. on disk; False/None: encode every call)."""
        self.model = model
        #: question key -> first-token logits (float32, CPU) when ``record_logits`` (parity checks)
        self.first_logits: dict[str, torch.Tensor] | None = {} if record_logits else None
        self.data_dir = data_dir
        self.max_new_tokens = max_new_tokens
        self.stop_at_answer = stop_at_answer
        self.closed_form = closed_form or (lambda it: it.category in CLOSED_FORM or bool(it.meta.get("options")))
        self.wants_masks = model.compressor.wants_given_masks
        in_llm = model.reduction is not None and model.reduction.in_llm
        self.share_prefix = share_prefix and model.tokenizer is not None and not in_llm
        if features is True:
            features = ImageFeatureCache()
        self.features = features if features and check_cacheable(model, training=False) is None else None
        if model.tokenizer is not None:
            self.eos = _eos_ids(model.llm, model.tokenizer)
            self.newlines = _newline_ids(model.tokenizer) if stop_at_answer else set()

    # ---- inputs ---------------------------------------------------------------------------------------------
    def _extra(self, items) -> dict | None:
        if not self.wants_masks:
            return None
        from ..data.sceneqa.masks import object_masks

        size = (self.model.processor.size, self.model.processor.size)
        return {"masks": [torch.from_numpy(object_masks(self.data_dir, it.meta.get("image") or it.image_path,
                                                        size=size)[0]) for it in items]}

    def _image(self, it):
        """The item's image; benchmark images only from inside the data folder (the image-root rule), except
        the blind control's blank image, which the harness writes into the run's own folder."""
        from ..data.images import load_image

        root = None if it.meta.get("control") == "blank" else self.data_dir
        return load_image(Path.cwd() / it.image_path, root=root)

    def __call__(self, items: Sequence) -> list[str]:
        items = list(items)
        if not self.share_prefix:
            images = [self._image(it) for it in items]
            return self.model.generate(images, [it.prompt for it in items], max_new_tokens=self.max_new_tokens,
                                       extra_state=self._extra(items)).texts
        return self._shared(items)

    # ---- the shared-prefix path ----------------------------------------------------------------------------
    @torch.inference_mode()
    def _shared(self, items: list) -> list[str]:
        m = self.model
        dev = next(m.llm.parameters()).device
        seqs = [m.prompt_ids(it.prompt) for it in items]
        m.check_context([len(s) for s in seqs], self.max_new_tokens)
        # prefix = up to the last image position; one group per (image, prefix)
        groups: dict[tuple, int] = {}
        first_item: list = []
        split = []
        for it, s in zip(items, seqs):
            cut = max(i for i, t in enumerate(s) if t == IMAGE_TOKEN_ID) + 1
            key = (it.image_path, tuple(s[:cut]))
            if key not in groups:
                groups[key] = len(groups)
                first_item.append(it)
            split.append((groups[key], s[cut:]))
        prefixes = list(groups)
        pixels = m.processor([self._image(it) for it in first_item]).to(dev)  # (U, 3, S, S)
        if self.features is not None:  # encoder blocks from the cache where this image was encoded before
            tokens = encode_from_features(m, self.features.hidden(m, pixels), self._extra(first_item))  # (U, M, D)
        else:
            tokens = m.encode_images(pixels, self._extra(first_item))  # (U, M, D), one encode per image
        # prefill each prefix once; prefixes of equal length go through the LLM together
        caches: dict[int, tuple[Any, int]] = {}  # group -> (cache of its prefix batch, row in it)
        by_len: dict[int, list[int]] = defaultdict(list)
        for g, key in enumerate(prefixes):
            by_len[len(key[1])].append(g)
        for _, gs in by_len.items():
            ids = torch.tensor([list(prefixes[g][1]) for g in gs], dtype=torch.long, device=dev)  # (U', P)
            cache = self._new_cache()
            m.llm(inputs_embeds=m.merge(ids, tokens[gs]), attention_mask=torch.ones_like(ids),
                  **cache_kwargs(m.llm, cache), use_cache=True, logits_to_keep=1)
            for row, g in enumerate(gs):
                caches[g] = (cache, row)
        # questions grouped by prefix length (one group in practice: every prompt has the same header), sorted by
        # suffix length; a batch pads its shorter suffixes on their left, between prefix and question (masked)
        answers: list[str | None] = [None] * len(items)
        batches: dict[int, list[int]] = defaultdict(list)
        for i, (g, suffix) in enumerate(split):
            batches[len(prefixes[g][1])].append(i)
        for _, idx in sorted(batches.items()):
            idx = sorted(idx, key=lambda i: len(split[i][1]))
            texts = self._decode_batch([split[i] for i in idx], caches, [items[i] for i in idx], dev)
            for i, t in zip(idx, texts):
                answers[i] = t
        return [a if a is not None else "" for a in answers]

    def _new_cache(self):
        from transformers import DynamicCache

        return DynamicCache(config=self.model.llm.config)

    def _decode_batch(self, rows: list[tuple[int, list[int]]], caches: dict, items: list, dev) -> list[str]:
        """Greedy decoding of a batch of questions, each from a copy of its image's prefix cache."""
        llm, tok = self.model.llm, self.model.tokenizer
        cache = self._new_cache()
        sources = [caches[g] for g, _ in rows]
        layers = sources[0][0].layers
        for li in range(len(layers)):
            k = torch.cat([c.layers[li].keys[r: r + 1] for c, r in sources])  # (B, H_kv, P, d)
            v = torch.cat([c.layers[li].values[r: r + 1] for c, r in sources])
            cache.update(k, v, li)
        b, p = len(rows), int(layers[0].keys.shape[-2])
        s = max(len(x) for _, x in rows)
        pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        ids = torch.full((b, s), pad, dtype=torch.long, device=dev)  # (B, S), suffixes left-padded
        mask = torch.ones((b, p + s), dtype=torch.long, device=dev)  # (B, P + S), 0 on the padding
        for i, (_, x) in enumerate(rows):
            ids[i, s - len(x):] = torch.tensor(x, dtype=torch.long)
            mask[i, p: p + s - len(x)] = 0
        # positions count real tokens only, as generate's do for a left-padded prompt: P, P+1, ... after the pads
        pos = (p + mask[:, p:].cumsum(dim=1) - 1).clamp(min=p)  # (B, S)
        out = llm(input_ids=ids, attention_mask=mask, position_ids=pos, **cache_kwargs(llm, cache), use_cache=True,
                  logits_to_keep=1)
        last = pos[:, -1:]  # (B, 1)
        if self.first_logits is not None:
            for it, row in zip(items, out.logits[:, -1].float().cpu()):
                self.first_logits[it.key] = row
        closed = [self.stop_at_answer and self.closed_form(it) for it in items]
        generated: list[list[int]] = [[] for _ in range(b)]
        done = [False] * b
        nxt = out.logits[:, -1].argmax(dim=-1)  # (B,)
        for step in range(self.max_new_tokens):
            for i, t in enumerate(nxt.tolist()):
                if done[i]:
                    continue
                generated[i].append(t)
                if t in self.eos:
                    done[i] = True
                elif closed[i] and t in self.newlines and tok.decode(generated[i]).strip():
                    done[i] = True  # a line break after some text: the one-line answer is complete
            if all(done) or step == self.max_new_tokens - 1:
                break
            mask = torch.cat([mask, mask.new_ones((b, 1))], dim=1)
            last = last + 1
            out = llm(input_ids=nxt[:, None], attention_mask=mask, position_ids=last, **cache_kwargs(llm, cache),
                      use_cache=True, logits_to_keep=1)
            nxt = out.logits[:, -1].argmax(dim=-1)
        texts = tok.batch_decode(generated, skip_special_tokens=True)
        return [t.strip().split("\n")[0].strip() if c else t.strip() for t, c in zip(texts, closed)]


def make_answer_fn(model, data_dir: str | None = None, max_new_tokens: int = 12, share_prefix: bool = True,
                   stop_at_answer: bool = True, features: ImageFeatureCache | None | bool = True) -> Answerer:
    """EvalItems -> answers with ``model`` (greedy, shared encode + vision-prefix prefill per image, batches by
    prompt length, stops at the answer's end); supplies SceneQA's object masks to mask sources that want them."""
    return Answerer(model, data_dir, max_new_tokens, share_prefix=share_prefix, stop_at_answer=stop_at_answer,
                    features=features)

"""The training objective: next-token cross-entropy on answer tokens only, computed where labels are.

``TrainingModel`` wraps a ``CompactVLM`` so that one ``forward`` (the call DDP/FSDP/DeepSpeed wrap) does
encode -> compress -> merge -> LLM -> loss and returns ``(loss_sum, n_label_tokens)``. The trainer divides by
the label-token count of the whole global batch, so the loss is the token mean over the global batch
whatever the micro-batch split or the number of processes.

``logits="labels"`` runs the LLM's decoder for hidden states and applies the lm-head only at the positions
that predict a label (LLaVA's answers are a small part of each sequence, and the lm-head is ~20% of
SmolLM2's FLOPs at full length); ``logits="all"`` is the plain HF path (lm-head at every position), kept for
checking and for LLMs whose logits need model-specific post-processing.

``FeatureCache`` keeps the frozen encoder's features of each sample after their first use, so later epochs and
validation passes run only compressor + LLM. It is valid only when the encoder is frozen, the compressor adds no
tokens to the encoder (VisToG) and does not read the image itself (``cacheable_features = False`` on the
compressor class opts out); ``check_cacheable`` says why not.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# shared with evaluation (evaluate.answer): the model layer holds them
from ..model.features import FeatureStore, check_cacheable, encode_from_features, store_tag  # noqa: F401
from ..model.prompting import IGNORE_INDEX
from .stages import is_peft


class TrainingModel(nn.Module):
    def __init__(self, vlm: nn.Module, logits: str = "labels", objective: str = "lm", background: float = 0.1,
                 place: bool | str = False):
        super().__init__()
        self.vlm = vlm
        self.logits = logits
        self.objective = objective  # "lm" (answers / captions) or "grounding" (train.grounding; no LLM pass)
        self.background = float(background)
        self.place = place  # grounding targets also carry the object's place (train.grounding.object_vector)
        self._vectors = None

    def _base_llm(self) -> nn.Module:
        llm = self.vlm.llm
        return llm.get_base_model() if is_peft(llm) else llm

    def image_tokens(self, pixel_values: torch.Tensor | None, features: dict[int, torch.Tensor] | None,
                     extra_state: dict | None = None):
        if features is not None:
            return encode_from_features(self.vlm, features, extra_state)
        if pixel_values is not None:
            return self.vlm.encode_images(pixel_values, extra_state)
        return None

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor,
                position_ids: torch.Tensor | None = None, pixel_values: torch.Tensor | None = None,
                features: dict[int, torch.Tensor] | None = None,
                extra_state: dict | None = None, objects: list | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        # extra_state: per-sample inputs of the compressor besides the image, e.g. {"masks": [...]} (given masks)
        if self.objective == "grounding":
            return self.grounding(self.image_tokens(pixel_values, features, extra_state), objects)
        embeds = self.vlm.merge(input_ids, self.image_tokens(pixel_values, features, extra_state))  # (B, T, D)
        target = labels[:, 1:]  # (B, T-1): the label of position t is predicted at t-1
        keep = target != IGNORE_INDEX  # (B, T-1)
        if self.logits == "labels":
            base = self._base_llm()
            hidden = base.get_decoder()(inputs_embeds=embeds, attention_mask=attention_mask,
                                        position_ids=position_ids, use_cache=False).last_hidden_state  # (B, T, D)
            logits = base.get_output_embeddings()(hidden[:, :-1][keep])  # (N, V)
        else:
            out = self.vlm.llm(inputs_embeds=embeds, attention_mask=attention_mask, position_ids=position_ids,
                               use_cache=False)
            logits = out.logits[:, :-1][keep]  # (N, V)
        loss_sum = F.cross_entropy(logits.float(), target[keep], reduction="sum")
        return loss_sum, keep.sum()

    def grounding(self, tokens: torch.Tensor, objects: list | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss sum, count) of the grounding objective for the vision tokens ``(B, M, D)`` of one batch."""
        from ..errors import CompactVLMError
        from .grounding import WordVectors, grounding_loss

        if objects is None:
            raise CompactVLMError("the grounding objective needs each sample's objects",
                                  "train on a SceneQA build (its *_scenes.jsonl) with objective=grounding")
        if self._vectors is None:
            self._vectors = WordVectors(self.vlm.tokenizer, self._base_llm().get_input_embeddings())
        comp = self.vlm.compressor
        return grounding_loss(tokens, objects, self._vectors, comp.token_windows(self.vlm.grid), self.background,
                              self.place)


class FeatureCache:
    """Encoder features per sample index (CPU tensors), filled on first use.

    Features are copied into preallocated blocks of ``CHUNK`` samples (one large allocation per block) instead of
    one small tensor per sample: thousands of small long-lived tensors interleaved with each step's large transient
    activations fragment the C heap, and a process caching 5,800 DINOv2-S images grew by ~2.9 MB per image instead
    of the 0.4 MB the features take."""

    CHUNK = 256

    def __init__(self, layers: list[int], store: FeatureStore | None = None):
        self.layers = sorted(layers)
        self.store = store  # optional: features on disk, shared across runs (train.feature_cache_dir)
        self.slot: dict[int, int] = {}  # sample index -> row in the blocks
        self.blocks: dict[int, list[torch.Tensor]] = {}  # layer -> blocks of (CHUNK, S, C)

    def __len__(self) -> int:
        return len(self.slot)

    def __contains__(self, i: int) -> bool:
        return i in self.slot

    def nbytes(self) -> int:
        return sum(b.numel() * b.element_size() for bs in self.blocks.values() for b in bs)

    def _put(self, i: int, feats: dict[int, torch.Tensor]) -> None:
        row = len(self.slot)
        k, r = divmod(row, self.CHUNK)
        for l, t in feats.items():
            bs = self.blocks.setdefault(l, [])
            if k == len(bs):
                bs.append(torch.empty((self.CHUNK, *t.shape), dtype=t.dtype))  # (CHUNK, S, C)
            bs[k][r].copy_(t)
        self.slot[i] = row

    def _get(self, i: int, l: int) -> torch.Tensor:
        k, r = divmod(self.slot[i], self.CHUNK)
        return self.blocks[l][k][r]

    @torch.no_grad()
    def features(self, vlm: nn.Module, index: torch.Tensor, pixel_values: torch.Tensor,
                 device: torch.device) -> dict[int, torch.Tensor]:
        idx = [int(i) for i in index]
        missing = [j for j, i in enumerate(idx) if i not in self.slot]
        keys = {}
        if missing and self.store is not None:
            keys = {j: self.store.key(pixel_values[j]) for j in missing}
            for j in list(missing):
                got = self.store.get(keys[j], self.layers) if idx[j] not in self.slot else None
                if got is not None:
                    self._put(idx[j], got)
            missing = [j for j in missing if idx[j] not in self.slot]
        if missing:
            enc = vlm.encoder
            feats = enc(pixel_values[missing].to(device), layers=self.layers)  # only the images not yet cached
            for n, j in enumerate(missing):
                if idx[j] not in self.slot:
                    one = {l: feats.hidden[l][n].detach().cpu() for l in feats.hidden}
                    self._put(idx[j], one)
                    if self.store is not None:
                        self.store.put(keys[j], one)
        return {l: torch.stack([self._get(i, l) for i in idx]).to(device) for l in self.blocks}  # (B, S, C)

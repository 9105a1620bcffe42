"""The training objective: next-token cross-entropy on answer tokens only, computed where labels are.

``TrainingModel`` wraps a ``CompactVLM`` so that one ``forward`` (the call DDP/FSDP/DeepSpeed wrap) does
encode -> compress -> merge -> LLM -> loss and returns ``(loss_sum, n_label_tokens)``. The trainer divides by
the label-token count of the whole global batch, so the loss is the token mean over the global batch
whatever the micro-batch split or the number of processes.

``logits="labels"`` runs the LLM's decoder for hidden states and applies the lm-head only at the positions
that predict a label (LLaVA's answers are a small part of each sequence, and the lm-head is ~20% of
SmolLM2's FLOPs at full length); ``logits="all"`` is the plain HF path (lm-head at every position), kept for
checking and for LLMs whose logits need model-specific post-processing.

``FeatureCache`` (``model.features``) keeps the frozen encoder's features of each sample after their first use, so later epochs and
validation passes run only compressor + LLM. It is valid only when the encoder is frozen, the compressor adds no
tokens to the encoder that the image tokens attend to (isolated ones, VisToG's, run beside the cached blocks) and does
not read the image itself (``cacheable_features = False`` on the compressor class opts out); ``check_cacheable`` says
why not.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# shared with evaluation (evaluate.answer): the model layer holds them
from ..model.features import (  # noqa: F401
    FeatureCache, FeatureStore, cached_layers, check_cacheable, encode_from_features, store_tag)
from ..model.prompting import IGNORE_INDEX
from ..model.adapters import base_llm


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
        return base_llm(self.vlm.llm)

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



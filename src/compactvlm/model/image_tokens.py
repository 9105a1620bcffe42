"""Where the image goes in ``input_ids``: the conventions of compactvlm, LLaVA and llava-hf, and the mapping.

- compactvlm: every vision token has its own position holding ``IMAGE_TOKEN_ID`` (-200, LLaVA's
  ``IMAGE_TOKEN_INDEX``): a prompt for one image has ``model.num_image_tokens()`` of them in a row
  (``model.prompt_ids`` builds such prompts). -200 is outside every vocabulary, so no text token can be taken
  for an image position.
- LLaVA (the original code, ``tokenizer_image_token``): one -200 per image; the model expands it.
- llava-hf (``LlavaForConditionalGeneration``): the id ``image_token_index`` of config.json (``<image>``, e.g.
  32000 for llava-1.5-7b-hf), once per vision token (processors of transformers >= 4.47) or once per image
  (older ones).

:func:`to_compact_ids` turns any of these into compactvlm's form: the model's image token id becomes -200, and
an image given by a single position is widened to ``num_image_tokens`` positions (the attention mask widened
with it, labels with -100). Models read from llava-hf / LLaVA folders (and compact folders converted from them)
do this on every ``forward`` call (:func:`accept_image_token`), so ids made by those code bases work as they are.
"""

from __future__ import annotations

import torch

from ..errors import CompactVLMError
from .prompting import IGNORE_INDEX, IMAGE_TOKEN_ID

_FORWARD_ARGS = ("input_ids", "attention_mask", "pixel_values", "labels", "position_ids", "logits_to_keep",
                 "extra_state")  # CompactVLM.forward's parameters, in order


def to_compact_ids(input_ids: torch.Tensor, num_image_tokens: int, image_token_index: int | None = None,
                   attention_mask: torch.Tensor | None = None, labels: torch.Tensor | None = None):
    """(input_ids, attention_mask, labels) with compactvlm's image positions (see the module docstring)."""
    ids = input_ids
    if image_token_index is not None and image_token_index != IMAGE_TOKEN_ID:
        ids = ids.masked_fill(ids == image_token_index, IMAGE_TOKEN_ID)
    is_img = ids == IMAGE_TOKEN_ID  # (B, T)
    if num_image_tokens <= 1 or not bool(is_img.any()):
        return ids, attention_mask, labels
    starts = is_img.clone()
    starts[:, 1:] &= ~is_img[:, :-1]  # first position of each run of image positions
    runs = starts.sum(dim=1)  # (B,) images per row
    if bool((is_img.sum(dim=1) == runs * num_image_tokens).all()):
        return ids, attention_mask, labels  # already one position per vision token
    if bool((is_img.sum(dim=1) != runs).any()) or bool((runs != runs[0]).any()):
        raise CompactVLMError(
            f"image positions per sample {is_img.sum(dim=1).tolist()} fit neither one position per image nor "
            f"{num_image_tokens} per image",
            "mark each image once (LLaVA) or with num_image_tokens() positions (llava-hf processors, compactvlm)")
    # widen each single image position to num_image_tokens positions; every row grows by the same amount
    reps = torch.where(is_img, torch.full_like(ids, num_image_tokens), torch.ones_like(ids))  # (B, T)
    new_ids = torch.stack([row.repeat_interleave(r) for row, r in zip(ids, reps)])  # (B, T')
    new_mask = None if attention_mask is None else torch.stack(
        [row.repeat_interleave(r) for row, r in zip(attention_mask, reps)])
    new_labels = None
    if labels is not None:
        lab = labels.masked_fill(is_img, IGNORE_INDEX)
        new_labels = torch.stack([row.repeat_interleave(r) for row, r in zip(lab, reps)])
    return new_ids, new_mask, new_labels


def accept_image_token(model, image_token_index: int | None):
    """Let ``model`` take ``input_ids`` in the llava-hf / LLaVA forms (a forward pre-hook maps them with
    :func:`to_compact_ids`); ``image_token_index`` is recorded as ``model.image_token_index``. Returns model."""
    model.image_token_index = image_token_index
    if getattr(model, "_image_token_hook", None) is not None:
        model._image_token_hook.remove()

    def hook(module, args, kwargs):
        kwargs = dict(kwargs)
        for name, value in zip(_FORWARD_ARGS, args):
            kwargs[name] = value
        if kwargs.get("input_ids") is None:
            return None
        ids, mask, labels = to_compact_ids(kwargs["input_ids"], module.num_image_tokens(), module.image_token_index,
                                           kwargs.get("attention_mask"), kwargs.get("labels"))
        kwargs.update(input_ids=ids, attention_mask=mask, labels=labels)
        return (), kwargs

    model._image_token_hook = model.register_forward_pre_hook(hook, with_kwargs=True)
    return model

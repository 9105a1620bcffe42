"""A peer baseline for the bench: transformers' own ``LlavaForConditionalGeneration`` running the same vision
tower, projector and LLM modules as a full-token (``mlp2x_gelu``) CompactVLM (the modules are shared, not copied:
same weights, same dtype), timed interleaved with ours at equal image tokens (``compactvlm bench --peer``).

Equal tokens at two counts: 256 at 224 px (16 x 16 patches of DINOv2-S/14) and 64 at 112 px (8 x 8 patches; both
pipelines interpolate the position embeddings alike). HF's TTFT is ``LlavaForConditionalGeneration(input_ids,
pixel_values, logits_to_keep=1)`` + the argmax; it runs the vision tower's last block too (it asks for all hidden
states and picks layer -2), which compactvlm skips, so HF does slightly more work (its FLOPs are counted).
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from ..errors import CompactVLMError
from ..model.prompting import IMAGE_TOKEN_ID


def hf_llava(model):
    """``LlavaForConditionalGeneration`` around ``model``'s encoder, projector and LLM (shared modules)."""
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    comp = model.compressor
    if comp.registry_name != "mlp2x_gelu" or model.reduction is not None:
        raise CompactVLMError(f"the HF-llava peer needs the full-token mlp2x_gelu model, not "
                              f"{comp.registry_name}", "use the full-mlp2x checkpoint")
    vision = model.encoder.model
    if getattr(vision.config, "num_register_tokens", 0):
        raise CompactVLMError("the HF-llava peer drops only the CLS token; this encoder has registers",
                              "use DINOv2 without registers or CLIP")
    image_id = int(model.llm.config.vocab_size) - 1  # an id the prompts never use (checked by the caller)
    layers = len(model.encoder.blocks)
    cfg = LlavaConfig(vision_config=vision.config.to_dict(), text_config=model.llm.config.to_dict(),
                      image_token_index=image_id, vision_feature_layer=comp.layer if comp.layer < 0 else
                      comp.layer - layers - 1, vision_feature_select_strategy="default",
                      projector_hidden_act="gelu", multimodal_projector_bias=True)
    with torch.device("meta"):
        hf = LlavaForConditionalGeneration(cfg)
    hf.model.vision_tower = vision
    hf.model.language_model = model.llm.model
    hf.lm_head = model.llm.lm_head
    proj = hf.model.multi_modal_projector
    proj.linear_1, proj.linear_2 = comp.proj.linear_1, comp.proj.linear_2
    hf.config.text_config._attn_implementation = model.llm.config._attn_implementation
    hf.eval()
    for name, t in list(hf.named_parameters()) + list(hf.named_buffers()):
        if t.device.type == "meta":
            raise CompactVLMError(f"HF-llava peer: {name} was not taken from the model", "report this as a bug")
    return hf, image_id


def at_image_size(model, size: int):
    """A shallow copy of ``model`` reading ``size``-px images (same modules; fewer patches, fewer tokens)."""
    from ..data.images import ImageProcessor

    m = copy.copy(model)  # the copy shares the modules; only its (plain attribute) processor differs
    p = model.processor
    m.processor = ImageProcessor(size, p.mean, p.std, p.aspect)
    return m


def peer_calls(model, hf, image_id: int, image, question: str, size: int) -> tuple[dict, dict]:
    """({ours, hf}: zero-argument TTFT calls, {ours, hf}: FLOPs) at ``size`` px, same pixels and prompt."""
    from .flops import flop_counter
    from .timing import ttft_call, ttft_inputs

    ours = at_image_size(model, size)
    ids, mask, pix = ttft_inputs(ours, [image], question)
    if bool((ids == image_id).any()):
        raise CompactVLMError(f"the prompt uses token {image_id}, the peer's image token", "ask another question")
    hf_ids = ids.masked_fill(ids == IMAGE_TOKEN_ID, image_id)
    pix = pix.to(ours.encoder.dtype)

    def hf_call():
        with torch.inference_mode():
            out = hf(input_ids=hf_ids, attention_mask=mask, pixel_values=pix, logits_to_keep=1)
            return out.logits[:, -1].argmax(dim=-1)

    calls = {"ours": ttft_call(ours, ids, mask, pix), "hf": hf_call}
    flops: dict[str, Any] = {}
    for k, fn in calls.items():
        with flop_counter() as fc:
            first = fn()
        flops[k] = int(fc.get_total_flops())
        flops[f"{k}_first_token"] = int(first.item())
    flops["tokens"] = ours.num_image_tokens()
    return calls, flops

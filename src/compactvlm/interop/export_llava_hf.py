"""CompactVLM -> transformers' LLaVA layout (``LlavaForConditionalGeneration`` + ``LlavaProcessor`` files).

What llava-hf can represent: one feature layer of a transformers vision model, its first token dropped
(``vision_feature_select_strategy: default``, the CLS token) or none dropped (``full``), then
``Linear -> activation -> Linear`` applied to every patch token, the result written over the ``<image>``
positions of the prompt. Of compactvlm's compressors only ``mlp2x_gelu`` is that (with a CLIP, DINOv2 or other
transformers vision tower without register tokens). Every other compressor either changes the number of tokens
(pooling, merging, STF's space-to-depth, VisToG's grouping, object tokens, Q-Former queries, random drop) or reads
several layers through layers of its own, which LlavaForConditionalGeneration has no place for; they are refused,
as are models carrying a test-time reduction (``--reduce``) or LoRA adapters not merged into the LLM.

Written files (``out``): ``config.json`` (LlavaConfig: the encoder's config as ``vision_config``, the LLM's as
``text_config``, ``vision_feature_layer`` = the compressor's ``layer``, ``image_token_index``), the weights
(``model.safetensors``, transformers' own save), the tokenizer (with ``<image>``), ``preprocessor_config.json``
(an image processor that makes the image square as the model's processor does: LlavaImageProcessor with
``do_pad`` for ``pad``, CLIPImageProcessor with a centre crop for ``crop`` or a whole-image resize for ``resize``; where
torchvision is installed transformers runs its torchvision backend, whose bicubic resize can differ from PIL's in
the last bits) and
``processor_config.json`` (LlavaProcessor: ``<image>`` in a prompt expands to one position per vision token).

Image token: the model's own ``image_token_index`` when it has one (converted from llava-hf), else the tokenizer's
``<image>`` token, else ``<image>`` is added to the tokenizer; when its id lies past the LLM's embedding table the
table (and an untied LM head) grows by one zero row, so logits gain one entry (0) and every other one is
unchanged. Prompts: the tokenizer keeps the model's chat template over plain-text contents; write
``<image>\\n`` before the question (as compactvlm does), then call the processor on that text and the image.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from ..errors import CompactVLMError
from ..model.adapters import is_peft

REPRESENTABLE = ("mlp2x_gelu",)
IMAGE_TOKEN = "<image>"


def check_exportable(model) -> None:
    """Raise a CompactVLMError saying why ``model`` has no llava-hf form (None when it has one)."""
    comp = model.compressor
    name = getattr(comp, "registry_name", type(comp).__name__)
    if name not in REPRESENTABLE:
        raise CompactVLMError(
            f"compressor {name!r} has no llava-hf form: LlavaForConditionalGeneration only projects each patch token "
            "of one vision layer with Linear -> activation -> Linear, and this compressor changes the number of "
            "tokens or mixes layers through modules of its own",
            "export models with the full-token mlp2x_gelu compressor; keep other methods as compact folders")
    if model.reduction is not None:
        raise CompactVLMError("the model carries a test-time reduction (--reduce), which llava-hf cannot run",
                              "export the model without --reduce / --budget")
    if is_peft(model.llm):
        raise CompactVLMError("the LLM still carries LoRA adapters",
                              "merge them first (model.llm = model.llm.merge_and_unload()), then export")
    if model.encoder.num_prefix not in (0, 1):
        raise CompactVLMError(
            f"the vision tower puts {model.encoder.num_prefix} tokens (CLS + registers) before the patches; llava-hf "
            "drops at most one (vision_feature_select_strategy 'default')",
            "export models whose encoder has no register tokens")
    act = comp.proj.act
    if type(act) is not torch.nn.GELU or getattr(act, "approximate", "none") != "none":
        raise CompactVLMError("the projector's activation is not the exact GELU llava-hf's 'gelu' is",
                              "export mlp2x_gelu models as trained by compactvlm")


def _image_token(model, tokenizer) -> tuple[object, int]:
    """(tokenizer with the image token, its id)."""
    index = getattr(model, "image_token_index", None)
    if tokenizer is None:
        raise CompactVLMError("the model has no tokenizer, which a llava-hf folder needs",
                              "convert its source again with --tokenizer DIR, then export")
    tok = copy.deepcopy(tokenizer)
    vocab = tok.get_vocab()
    if index is not None and index >= 0 and tok.convert_ids_to_tokens(index) == IMAGE_TOKEN:
        return tok, int(index)
    if IMAGE_TOKEN not in vocab:
        tok.add_tokens([IMAGE_TOKEN], special_tokens=True)
    return tok, int(tok.convert_tokens_to_ids(IMAGE_TOKEN))


def to_llava_hf(model):
    """(LlavaForConditionalGeneration holding ``model``'s weights, tokenizer with ``<image>``, image token id)."""
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    check_exportable(model)
    tok, image_id = _image_token(model, model.tokenizer)
    enc, comp, llm = model.encoder, model.compressor, model.llm
    text_config = copy.deepcopy(llm.config)
    rows = llm.get_input_embeddings().weight.shape[0]
    tied = bool(getattr(text_config, "tie_word_embeddings", False))
    vocab = max(rows, image_id + 1)
    text_config.vocab_size = vocab
    first = comp.proj.linear_1
    cfg = LlavaConfig(vision_config=copy.deepcopy(enc.model.config), text_config=text_config,
                      image_token_index=image_id, projector_hidden_act="gelu",
                      vision_feature_select_strategy="default" if enc.num_prefix == 1 else "full",
                      vision_feature_layer=int(comp.layer), multimodal_projector_bias=first.bias is not None,
                      tie_word_embeddings=tied)
    dtype = next(llm.parameters()).dtype
    hf = LlavaForConditionalGeneration(cfg).to(dtype).eval()
    inner = hf.model
    inner.vision_tower.load_state_dict(enc.model.state_dict())
    inner.multi_modal_projector.linear_1.load_state_dict(comp.proj.linear_1.state_dict())
    inner.multi_modal_projector.linear_2.load_state_dict(comp.proj.linear_2.state_dict())
    body = {k[len("model."):]: v for k, v in llm.state_dict().items() if k.startswith("model.")}
    head = llm.get_output_embeddings().weight
    with torch.no_grad():
        if vocab > rows:  # the image token's row: never read (its positions are overwritten); zero output row
            pad = torch.zeros(vocab - rows, body["embed_tokens.weight"].shape[1], dtype=dtype)
            body["embed_tokens.weight"] = torch.cat([body["embed_tokens.weight"], pad])
            head = torch.cat([head, pad])
        inner.language_model.load_state_dict(body)
        if tied:
            hf.tie_weights()
        else:
            hf.lm_head.weight.copy_(head)
    return hf, tok, image_id


def image_processor(model):
    """A transformers image processor doing what compactvlm's ImageProcessor does: the image made square by the
    processor's ``aspect`` (pad: LlavaImageProcessor's ``do_pad`` with the mean colour; crop: CLIP's
    shortest-edge resize + centre crop; resize: a bicubic resize of the whole image), then /255, mean/std."""
    from transformers import CLIPImageProcessor, LlavaImageProcessor

    p = model.processor
    side = int(p.size)
    common = dict(do_resize=True, resample=3, do_rescale=True, rescale_factor=1 / 255, do_normalize=True,
                  image_mean=list(p.mean), image_std=list(p.std), do_convert_rgb=True)
    aspect = getattr(p, "aspect", "resize")
    if aspect == "pad":
        return LlavaImageProcessor(do_pad=True, size={"height": side, "width": side}, do_center_crop=False, **common)
    if aspect == "crop":
        return CLIPImageProcessor(size={"shortest_edge": side}, do_center_crop=True,
                                  crop_size={"height": side, "width": side}, **common)
    return CLIPImageProcessor(size={"height": side, "width": side}, do_center_crop=False, **common)


def export(model, out) -> Path:
    """Write ``model`` as a llava-hf folder ``out`` (which must not exist yet); returns its path."""
    from transformers import LlavaProcessor

    out = Path(out)
    if out.exists():
        raise CompactVLMError(f"{out} already exists", "export into a new folder (nothing is overwritten)")
    hf, tok, _ = to_llava_hf(model)
    proc = LlavaProcessor(image_processor=image_processor(model), tokenizer=tok,
                          patch_size=int(model.encoder.info.patch_size), image_token=IMAGE_TOKEN,
                          vision_feature_select_strategy=hf.config.vision_feature_select_strategy,
                          num_additional_image_tokens=int(model.encoder.num_prefix))
    tmp = out.with_name(f".{out.name}.partial")
    if tmp.exists():
        raise CompactVLMError(f"{tmp} exists (an interrupted export?)", "remove it, then export again")
    try:
        hf.save_pretrained(tmp, safe_serialization=True)
        proc.save_pretrained(tmp)
        tmp.rename(out)
    except BaseException:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out

"""transformers' LLaVA layout (``llava-hf/llava-1.5-7b-hf``) -> CompactVLM with the ``mlp2x_gelu`` compressor.

Source folder: ``config.json`` (``model_type: llava``, ``vision_config`` a CLIP vision config,
``text_config``, ``vision_feature_layer``, ``vision_feature_select_strategy``, ``projector_hidden_act``),
``model*.safetensors`` (or ``pytorch_model*.bin``), ``preprocessor_config.json``, tokenizer files (optional:
without them, and without ``tokenizer=``, the model is read with a warning and no tokenizer).

Image token: ``image_token_index`` (``image_token_id``) of config.json is accepted in ``input_ids`` in place of
compactvlm's -200 (``interop.image_tokens``), as a llava-hf processor writes it (one per vision token) or once
per image.

Weight names, three spellings (the hub's, transformers >= 4.52's in-memory one, and transformers 5's save):
    language_model.model.X  | model.language_model.X         -> LLM  model.X
    language_model.lm_head.weight | lm_head.weight           -> LLM  lm_head.weight
    vision_tower.vision_model.X | model.vision_tower.(vision_model.)X | vision_tower.X -> CLIP vision model
    multi_modal_projector.linear_{1,2}.* | model.multi_modal_projector.linear_{1,2}.*  -> compressor proj.linear_{1,2}.*

Mapping: ``vision_feature_layer`` -> ``mlp2x_gelu(layer=...)``; ``vision_feature_select_strategy: default``
(CLS dropped) is what compactvlm does; ``full`` (CLS kept), a list of feature layers, a projector activation
other than ``gelu`` or a projector without bias are refused. Image processor: mean/std from
``preprocessor_config.json``, size = ``vision_config.image_size``; the image-to-square mode follows the
processor's settings (``encoders.preprocessing.aspect_of_hf_processor``): ``do_pad`` -> pad, a shortest-edge resize
with centre crop (llava-1.5-7b-hf's CLIPImageProcessor) -> crop, else resize.
Chat template: LLaVA-1.5's (``common.LLAVA_V1_TEMPLATE``), the format the model was trained with.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import CompactVLMError
from . import common
from ..model.image_tokens import accept_image_token

LAYOUT = "llava-hf"


def split_keys(sd: dict) -> tuple[dict, dict, dict]:
    """(vision, projector, llm) state dicts from a LlavaForConditionalGeneration state dict (any spelling)."""
    vision, proj, llm, other = {}, {}, {}, []
    for k, v in sd.items():
        if k == "lm_head.weight" or k == "language_model.lm_head.weight":
            llm["lm_head.weight"] = v
        elif k.startswith("language_model.model."):
            llm["model." + k[len("language_model.model."):]] = v
        elif k.startswith("model.language_model."):
            llm["model." + k[len("model.language_model."):]] = v
        elif k.startswith(("vision_tower.", "model.vision_tower.")):
            vision[k.split("vision_tower.", 1)[1]] = v
        elif k.startswith(("multi_modal_projector.", "model.multi_modal_projector.")):
            proj[k.split("multi_modal_projector.", 1)[1]] = v
        else:
            other.append(k)
    if other:
        raise CompactVLMError(f"unexpected weights for the llava-hf layout: {other[:5]}",
                              "is this a LlavaForConditionalGeneration checkpoint? (--from llava-hf)")
    return vision, proj, llm


def read(src, dtype: str | None = None, vision_tower: str | None = None, tokenizer=None, **_):
    """The llava-hf folder ``src`` as an in-memory CompactVLM (``dtype`` None: float32)."""
    from transformers import AutoConfig

    src = Path(src)
    raw = common.read_json(src / "config.json")
    if raw.get("model_type") != "llava":
        raise CompactVLMError(f"{src} is a {raw.get('model_type')!r} checkpoint, not transformers' LLaVA ('llava')",
                              "use --from llava for original LLaVA folders (mm_vision_tower in config.json)")
    dtype = common.dtype_name(dtype)
    cfg = AutoConfig.from_pretrained(str(src), trust_remote_code=False)
    vcfg = cfg.vision_config
    if vcfg.model_type not in ("clip_vision_model", "clip"):
        raise CompactVLMError(f"{src} has a {vcfg.model_type!r} vision tower; this converter handles CLIP",
                              "convert LLaVA-1.5-style checkpoints (CLIP ViT vision tower)")
    layer = cfg.vision_feature_layer
    if not isinstance(layer, int):
        raise CompactVLMError(f"vision_feature_layer={layer!r}: several feature layers are not supported",
                              "use a checkpoint with one vision_feature_layer (LLaVA-1.5: -2)")
    if cfg.vision_feature_select_strategy != "default":
        raise CompactVLMError(f"vision_feature_select_strategy={cfg.vision_feature_select_strategy!r} keeps the CLS "
                              "token, which compactvlm's mlp2x_gelu drops", "use a 'default'-strategy checkpoint")
    if getattr(cfg, "projector_hidden_act", "gelu") != "gelu" or not getattr(cfg, "multimodal_projector_bias", True):
        raise CompactVLMError("only LLaVA-1.5's projector (Linear + bias, exact GELU, Linear + bias) converts",
                              "use a checkpoint with projector_hidden_act='gelu'")
    files = common.weight_files(src)
    if not files:
        raise CompactVLMError(f"no weight files in {src}", "download model*.safetensors too")
    vision_sd, proj_sd, llm_sd = split_keys(common.read_weights(files))
    source = f"{src} ({LAYOUT})"

    vision = common.build_vision(vcfg, vision_sd, source)
    llm = common.build_llm(cfg.text_config, llm_sd, dtype, source)
    comp_sd = {"proj." + k: v for k, v in proj_sd.items()}
    tok = common.pick_tokenizer(tokenizer, [src], source)
    mean, std = common.processor_stats(src)
    from ..encoders.preprocessing import aspect_of_hf_processor, read_preprocessor_config

    aspect = aspect_of_hf_processor(read_preprocessor_config(src))
    model = common.assemble(vision, int(vcfg.image_size), mean, std, "mlp2x_gelu", {"layer": int(layer)},
                            comp_sd, llm, tok, dtype, source, names=(str(src), str(src)), aspect=aspect)
    index = raw.get("image_token_index", raw.get("image_token_id"))
    return accept_image_token(model, int(index) if index is not None else None)


def stored_dtype(src) -> str:
    return common.source_dtype(common.read_json(Path(src) / "config.json"))

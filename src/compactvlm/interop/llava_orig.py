"""The original LLaVA layout (haotian-liu/LLaVA, LLaVA-1.5) -> CompactVLM with the ``mlp2x_gelu`` compressor.

Source folder ``SRC`` (what LLaVA's training scripts write):
- ``config.json``: the LLM's config (``model_type`` ``llava`` / ``llava_llama``, Llama fields) plus LLaVA's
  ``mm_vision_tower`` (a CLIP name or folder), ``mm_projector_type`` (``mlp2x_gelu``),
  ``mm_vision_select_layer`` (-2), ``mm_vision_select_feature`` (``patch``: CLS dropped), ``mm_hidden_size``,
  ``mm_patch_merge_type`` (``flat``), ``mm_use_im_start_end`` (false), ``image_aspect_ratio``;
- the LLM weights: ``pytorch_model-*.bin`` shards (+ ``pytorch_model.bin.index.json``) or ``*.safetensors``,
  HF Llama keys ``model.*`` / ``lm_head.weight`` (old ``rotary_emb.inv_freq`` buffers are dropped);
- the projector: ``model.mm_projector.0.weight/bias`` (Linear C -> D) and ``model.mm_projector.2.weight/bias``
  (Linear D -> D; index 1 is the GELU), inside the LLM shards (finetuned model) or in ``mm_projector.bin``
  (pretraining stage; ``projector=`` names another file). A projector-only folder takes its LLM from
  ``model_base=`` (LLaVA's ``--model-base``, e.g. a Vicuna folder);
- tokenizer files (``tokenizer=`` / ``--tokenizer`` when given, else in ``SRC``, else in ``model_base``; with none,
  the model is read without a tokenizer and a warning).
Image positions: LLaVA's ``input_ids`` hold -200 once per image (``tokenizer_image_token``); that, and config.json's
``image_token_index`` or the tokenizer's ``<image>`` token when there is one, are accepted (``interop.image_tokens``).
Vision-tower weights saved in the shards (``model.vision_tower.vision_tower.*``) are used when present; the
tower's config (and, otherwise, its weights) come from ``mm_vision_tower`` when that is a local folder, or from
``vision_tower=`` (a local CLIP folder; nothing is downloaded).

``.bin`` files are read with ``torch.load(weights_only=True)`` only (see ``common``).
Mapping: ``mm_projector.0`` -> ``proj.linear_1``, ``mm_projector.2`` -> ``proj.linear_2``,
``mm_vision_select_layer`` -> ``layer``. Refused: ``cls_patch`` features, ``mm_use_im_start_end``,
anyres / spatial patch merging (LLaVA-NeXT), projector types other than ``mlp2x_gelu``.
Image to square as LLaVA's ``process_images``: ``image_aspect_ratio: pad`` (LLaVA-1.5) -> the ``pad`` mode
(``expand2square`` with the mean colour, then the CLIP processor), anything else -> ``crop`` (the CLIP processor's
shortest-edge resize + centre crop); see ``common.llava_aspect``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..errors import CompactVLMError
from . import common
from ..model.image_tokens import accept_image_token

LAYOUT = "llava"
REQUIRED = ("mm_vision_tower", "mm_projector_type", "mm_vision_select_layer")
#: config keys of LLaVA's wrapper (not the LLM's), dropped when building the LLM config
WRAPPER_KEYS = {"image_aspect_ratio", "image_grid_pinpoints", "tune_mm_mlp_adapter", "freeze_mm_mlp_adapter",
                "use_mm_proj", "unfreeze_mm_vision_tower", "tokenizer_model_max_length", "tokenizer_padding_side",
                "s2", "s2_scales", "_name_or_path", "architectures", "model_type", "transformers_version",
                "max_length"}
BASES = {"llava": "llama", "llava_llama": "llama", "llava_mistral": "mistral", "llama": "llama"}


@dataclass
class LlavaParts:
    raw: dict
    llm_config: object
    llm_sd: dict
    projector: dict  # keys from "mm_projector...", e.g. "mm_projector.0.weight", "mm_projector_crosslayer.2.bias"
    projector_from: str
    tower_dir: Path
    tower_sd: dict = field(default_factory=dict)
    tokenizer_dir: Path | None = None


def _norm_projector_keys(sd: dict) -> dict:
    """``model.mm_projector.0.weight`` / ``base_model.model.model.mm_projector...`` -> ``mm_projector.0.weight``."""
    return {k[k.index("mm_projector"):]: v for k, v in sd.items() if "mm_projector" in k}


def llm_config(raw: dict, src: Path):
    from transformers import CONFIG_MAPPING

    base = BASES.get(raw.get("model_type"))
    if base is None:
        raise CompactVLMError(f"{src}/config.json has model_type {raw.get('model_type')!r}",
                              "this converter handles LLaVA on Llama/Vicuna (model_type llava or llava_llama)")
    d = {k: v for k, v in raw.items() if not k.startswith("mm_") and k not in WRAPPER_KEYS}
    return CONFIG_MAPPING[base](**d)


def tower_folder(raw: dict, src: Path, vision_tower=None) -> Path:
    name = vision_tower or raw.get("mm_vision_tower") or raw.get("vision_tower")
    for cand in (Path(str(name)), Path(src) / str(name)):
        if cand.is_dir() and (cand / "config.json").exists():
            return cand
    raise CompactVLMError(
        f"the vision tower {name!r} ({'--vision-tower' if vision_tower else 'mm_vision_tower in ' + str(src / 'config.json')}) "
        "is not a local folder with a config.json",
        "download that CLIP model (e.g. openai/clip-vit-large-patch14-336) and pass --vision-tower DIR "
        "(vision_tower= in Python)")


def read_parts(src, projector=None, vision_tower=None, model_base=None) -> LlavaParts:
    src = Path(src)
    raw = common.read_json(src / "config.json")
    missing = [k for k in REQUIRED if k not in raw]
    if missing:
        raise CompactVLMError(f"{src}/config.json lacks LLaVA's {', '.join(missing)}",
                              "pass the folder LLaVA's training wrote (its config.json has the mm_* fields)")
    if raw.get("mm_vision_select_feature", "patch") != "patch":
        raise CompactVLMError(f"mm_vision_select_feature={raw['mm_vision_select_feature']!r} keeps the CLS token",
                              "only 'patch' features (LLaVA-1.5's default) convert")
    if raw.get("mm_use_im_start_end"):
        raise CompactVLMError("mm_use_im_start_end=true (image start/end tokens) is not supported",
                              "convert a LLaVA-1.5 checkpoint (mm_use_im_start_end false)")
    if raw.get("mm_patch_merge_type", "flat") != "flat" or raw.get("image_aspect_ratio") == "anyres":
        raise CompactVLMError("anyres / spatial patch merging (LLaVA-NeXT) is not supported",
                              "convert a LLaVA-1.5 checkpoint (mm_patch_merge_type flat)")
    files = common.weight_files(src)
    llm_files = [f for f in files if "mm_projector" not in f.name]
    sd = common.read_weights(llm_files)
    proj = _norm_projector_keys(sd)
    tower_sd = common.sub(sd, "model.vision_tower.vision_tower.")
    llm_sd = {k: v for k, v in sd.items() if (k.startswith("model.") or k.startswith("lm_head."))
              and "mm_projector" not in k and not k.startswith("model.vision_tower.")}
    tok_dir = src
    if not llm_sd:
        if model_base is None:
            raise CompactVLMError(f"{src} holds no LLM weights (a projector-only pretraining folder?)",
                                  "pass the base LLM folder with --model-base DIR (model_base= in Python)")
        base = Path(model_base)
        base_sd = common.read_weights(common.weight_files(base))
        llm_sd = {k: v for k, v in base_sd.items() if k.startswith(("model.", "lm_head."))
                  and "mm_projector" not in k and not k.startswith("model.vision_tower.")}
        if not llm_sd:
            raise CompactVLMError(f"no LLM weights in --model-base {base}", "pass a HF Llama/Vicuna folder")
        if not any((src / n).exists() for n in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")):
            tok_dir = base
    if projector is not None:
        ppath = Path(projector)
        proj, proj_from = _norm_projector_keys(_read_any(ppath)), str(ppath)
    elif proj:
        proj_from = f"{src} (LLM weight files)"
    elif (src / "mm_projector.bin").exists() or (src / "mm_projector.safetensors").exists():
        ppath = src / ("mm_projector.safetensors" if (src / "mm_projector.safetensors").exists() else "mm_projector.bin")
        proj, proj_from = _norm_projector_keys(_read_any(ppath)), str(ppath)
    else:
        raise CompactVLMError(f"no projector weights (mm_projector.*) in {src}",
                              "pass the pretraining stage's mm_projector.bin with --projector FILE")
    if not proj:
        raise CompactVLMError(f"{proj_from} holds no mm_projector.* weights", "pass LLaVA's mm_projector.bin")
    return LlavaParts(raw, llm_config(raw, src), llm_sd, proj, proj_from, tower_folder(raw, src, vision_tower),
                      tower_sd, tok_dir)


def _read_any(path: Path) -> dict:
    if not path.exists():
        raise CompactVLMError(f"projector file {path} not found", "check the --projector path")
    return common.read_weights([path])


def vision_and_llm(parts: LlavaParts, dtype: str, source: str, tokenizer=None, model_base=None):
    """(vision model, image size, mean, std, llm, tokenizer) of an original-LLaVA-style checkpoint."""
    from ..model.build import load_vision_model

    vision, _, _ = load_vision_model(str(parts.tower_dir))
    if vision.config.model_type not in ("clip_vision_model", "clip"):
        raise CompactVLMError(f"vision tower {parts.tower_dir} is a {vision.config.model_type!r} model",
                              "LLaVA-1.5 uses a CLIP ViT; pass its folder with --vision-tower")
    if parts.tower_sd:  # weights the LLaVA checkpoint itself carries win over the tower folder's
        common.load_exact(vision, common.fit_prefix(parts.tower_sd, vision.state_dict(), "vision_model."),
                          "vision tower", source)
    mean, std = common.processor_stats(parts.tower_dir)
    llm = common.build_llm(parts.llm_config, parts.llm_sd, dtype, source)
    tok = common.pick_tokenizer(tokenizer, [parts.tokenizer_dir, model_base], source)
    return vision.eval(), int(vision.config.image_size), mean, std, llm, tok


def read(src, dtype: str | None = None, projector=None, vision_tower=None, model_base=None, tokenizer=None, **_):
    """The original-LLaVA folder ``src`` as an in-memory CompactVLM (``dtype`` None: float32)."""
    src = Path(src)
    dtype = common.dtype_name(dtype)
    parts = read_parts(src, projector, vision_tower, model_base)
    if any(k.startswith("mm_projector_crosslayer.") for k in parts.projector):
        raise CompactVLMError(f"{src} holds LLaVA-STF's mm_projector_crosslayer weights", "use --from llava-stf")
    ptype = parts.raw["mm_projector_type"]
    if ptype != "mlp2x_gelu":
        raise CompactVLMError(f"mm_projector_type={ptype!r} is not supported",
                              "convert a LLaVA-1.5 checkpoint (mm_projector_type mlp2x_gelu)")
    source = f"{src} ({LAYOUT})"
    vision, size, mean, std, llm, tok = vision_and_llm(parts, dtype, source, tokenizer, model_base)
    p = parts.projector
    extra = sorted(set(p) - {f"mm_projector.{i}.{w}" for i in (0, 2) for w in ("weight", "bias")})
    if extra:
        raise CompactVLMError(f"unexpected projector weights {extra[:4]} in {parts.projector_from}",
                              "mlp2x_gelu has mm_projector.0 and mm_projector.2 only")
    comp_sd = {f"proj.linear_{j}.{w}": p[f"mm_projector.{i}.{w}"]
               for i, j in ((0, 1), (2, 2)) for w in ("weight", "bias") if f"mm_projector.{i}.{w}" in p}
    model = common.assemble(vision, size, mean, std, "mlp2x_gelu", {"layer": int(parts.raw["mm_vision_select_layer"])},
                            comp_sd, llm, tok, dtype, source, names=(str(parts.tower_dir), str(src)),
                            aspect=common.llava_aspect(parts.raw))
    return accept_image_token(model, llava_image_token(parts.raw, tok))


def llava_image_token(raw: dict, tokenizer) -> int | None:
    """The id an original-LLaVA folder may use for ``<image>`` besides LLaVA's -200: config.json's
    ``image_token_index``, else the tokenizer's ``<image>`` token when it has one."""
    if raw.get("image_token_index") is not None:
        return int(raw["image_token_index"])
    if tokenizer is not None and "<image>" in tokenizer.get_vocab():
        return int(tokenizer.convert_tokens_to_ids("<image>"))
    return None


def stored_dtype(src) -> str:
    return common.source_dtype(common.read_json(Path(src) / "config.json"))

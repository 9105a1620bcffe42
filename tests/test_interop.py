"""Interop: tiny checkpoints written in the llava-hf, original-LLaVA and LLaVA-STF layouts (key names, config
fields, dtype) convert to compact folders whose logits equal an independent reference implementation of each
source model; compact folders save / reload self-contained and identical."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from compactvlm.errors import CompactVLMError
from compactvlm.model.prompting import IMAGE_TOKEN_ID
from compactvlm.testing import random_images, tiny_tokenizer, tiny_vlm


def _clip_cfg(layers=3, hidden=32, image=32, patch=4):
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
                            intermediate_size=hidden * 2, patch_size=patch, image_size=image, projection_dim=hidden)


def _llama_dims(vocab, hidden=48):
    return dict(vocab_size=vocab, hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, rms_norm_eps=1e-5,
                bos_token_id=1, eos_token_id=2, pad_token_id=3, tie_word_embeddings=False)


def _save_shards(sd: dict, folder: Path, fmt: str) -> None:
    """Two shards + index, as HF / LLaVA write them (safetensors or torch pickles)."""
    keys = sorted(sd)
    half = len(keys) // 2
    ext, index = (".safetensors", "model.safetensors.index.json") if fmt == "st" else (".bin", "pytorch_model.bin.index.json")
    stem = "model" if fmt == "st" else "pytorch_model"
    wmap = {}
    for i, part in enumerate((keys[:half], keys[half:]), start=1):
        name = f"{stem}-{i:05d}-of-00002{ext}"
        chunk = {k: sd[k].contiguous() for k in part}
        if fmt == "st":
            save_file(chunk, str(folder / name), metadata={"format": "pt"})
        else:
            torch.save(chunk, folder / name)
        wmap.update({k: name for k in part})
    total = sum(v.numel() * v.element_size() for v in sd.values())
    (folder / index).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": wmap}, indent=2))


def _rand_(module: nn.Module, seed: int) -> nn.Module:
    """Non-trivial values everywhere (biases and norms included), so a wrong mapping cannot pass."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            is_norm = "norm" in name and name.endswith("weight")
            p.copy_(torch.randn(p.shape, generator=g) * (0.1 if is_norm else 0.2) + (1.0 if is_norm else 0.0))
    return module


def _merge_and_run(llm, ids, image_tokens):
    emb = llm.get_input_embeddings()(ids.clamp(min=0))
    emb = emb.masked_scatter((ids == IMAGE_TOKEN_ID).unsqueeze(-1), image_tokens.reshape(-1, emb.shape[-1]))
    return llm(inputs_embeds=emb, attention_mask=torch.ones_like(ids)).logits


def _cli(*argv) -> int:
    from compactvlm.cli import main

    return main(list(argv))


def _rewrite_manifest(folder: Path) -> None:
    try:
        from compactvlm.model.manifest import write_manifest
    except ImportError:
        return
    if (folder / "manifest.json").exists():
        write_manifest(folder)


# ---------------------------------------------------------------------------------------------------------------
# llava-hf (transformers' LlavaForConditionalGeneration, hub layout of llava-hf/llava-1.5-7b-hf)


def make_llava_hf(folder: Path, seed: int = 0) -> int:
    """A tiny llava-hf folder in the hub's layout: legacy key names, float16, two safetensors shards + index,
    hub-style config.json, tokenizer with <image>, CLIP preprocessor config. Returns the image token id."""
    from transformers import LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    folder.mkdir(parents=True)
    tok = tiny_tokenizer()
    tok.add_tokens(["<image>"], special_tokens=True)
    img_id = tok.convert_tokens_to_ids("<image>")
    vocab = len(tok)
    torch.manual_seed(seed)
    cfg = LlavaConfig(vision_config=_clip_cfg(), text_config=LlamaConfig(**_llama_dims(vocab)), image_token_index=img_id,
                      vision_feature_layer=-2, vision_feature_select_strategy="default", projector_hidden_act="gelu")
    hf = _rand_(LlavaForConditionalGeneration(cfg), seed)
    sd = {}
    for k, v in hf.state_dict().items():  # transformers' in-memory names -> the hub checkpoint's names
        if k.startswith("model.language_model."):
            k = "language_model.model." + k[len("model.language_model."):]
        elif k == "lm_head.weight":
            k = "language_model.lm_head.weight"
        elif k.startswith("model.vision_tower."):
            rest = k[len("model.vision_tower."):]
            k = "vision_tower." + (rest if rest.startswith("vision_model.") else "vision_model." + rest)
        elif k.startswith("model.multi_modal_projector."):
            k = k[len("model."):]
        sd[k] = v.to(torch.float16)
    assert "language_model.model.embed_tokens.weight" in sd and "multi_modal_projector.linear_1.weight" in sd
    assert "vision_tower.vision_model.encoder.layers.0.self_attn.q_proj.weight" in sd
    _save_shards(sd, folder, "st")
    vc = {"hidden_size": 32, "image_size": 32, "intermediate_size": 64, "model_type": "clip_vision_model",
          "num_attention_heads": 2, "num_hidden_layers": 3, "patch_size": 4, "projection_dim": 32}
    tc = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "torch_dtype": "float16",
          **{k: v for k, v in _llama_dims(vocab).items() if k != "tie_word_embeddings"}}
    (folder / "config.json").write_text(json.dumps({
        "architectures": ["LlavaForConditionalGeneration"], "ignore_index": -100, "image_token_index": img_id,
        "model_type": "llava", "pad_token_id": 3, "projector_hidden_act": "gelu", "text_config": tc,
        "tie_word_embeddings": False, "torch_dtype": "float16", "transformers_version": "4.36.0.dev0",
        "vision_config": vc, "vision_feature_layer": -2, "vision_feature_select_strategy": "default",
        "vocab_size": vocab}, indent=2))
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "crop_size": {"height": 32, "width": 32}, "do_center_crop": True, "do_convert_rgb": True,
        "do_normalize": True, "do_rescale": True, "do_resize": True, "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_processor_type": "CLIPImageProcessor", "image_std": [0.26862954, 0.26130258, 0.27577711],
        "processor_class": "LlavaProcessor", "resample": 3, "rescale_factor": 0.00392156862745098,
        "size": {"shortest_edge": 32}}, indent=2))
    tok.save_pretrained(folder)
    return img_id


def test_llava_hf_convert_logits_equal(tmp_path):
    from transformers import LlavaForConditionalGeneration

    from compactvlm.interop import detect_layout, load_model
    from compactvlm.model.checkpoint import load_pretrained

    src, out = tmp_path / "llava-1.5-tiny-hf", tmp_path / "compact"
    img_id = make_llava_hf(src)
    ref, info = LlavaForConditionalGeneration.from_pretrained(src, dtype=torch.float32, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]  # transformers reads our tiny layout as its own
    ref.eval()

    assert detect_layout(src) == "llava-hf"
    assert _cli("convert", "--from", "llava-hf", str(src), "--out", str(out)) == 0
    meta = json.loads((out / "compactvlm.json").read_text())
    assert meta["model"]["compressor"] == "mlp2x_gelu" and meta["model"]["compressor_params"] == {"layer": -2}
    assert meta["model"]["dtype"] == "float16" and meta["converted_from"]["layout"] == "llava-hf"
    assert all(t.dtype == torch.float16 for t in load_file(str(out / "compressor.safetensors")).values())
    for name in ("encoder/config.json", "llm/config.json", "tokenizer", "preprocessor_config.json"):
        assert (out / name).exists(), name

    ours = load_pretrained(out, dtype="float32", progress=False)
    direct = load_model(src)  # the layout read directly, no conversion folder
    ids = torch.tensor([ours.prompt_ids("what is in the image ?")])
    assert int((ids == IMAGE_TOKEN_ID).sum()) == 64
    pix = ours.processor(random_images(1))
    assert ours.processor.mean == pytest.approx((0.48145466, 0.4578275, 0.40821073))
    with torch.no_grad():
        want = ref(input_ids=ids.masked_fill(ids == IMAGE_TOKEN_ID, img_id), attention_mask=torch.ones_like(ids),
                   pixel_values=pix).logits
        got = ours(ids, torch.ones_like(ids), pix).logits
        got_direct = direct(ids, torch.ones_like(ids), pix).logits
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    torch.testing.assert_close(got_direct, want, atol=1e-5, rtol=0)
    assert want.abs().max() > 0.1  # not a degenerate all-zero model


def test_llava_v1_chat_template(tmp_path):
    from compactvlm.interop.common import LLAVA_V1_SYSTEM, LLAVA_V1_TEMPLATE

    tok = tiny_tokenizer()
    tok.chat_template = LLAVA_V1_TEMPLATE
    msgs = [{"role": "user", "content": "<image>\nwhat ?"}]
    assert tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True) == (
        f"<|im_start|>{LLAVA_V1_SYSTEM} USER: <image>\nwhat ? ASSISTANT:")
    two = msgs + [{"role": "assistant", "content": "red"}, {"role": "user", "content": "why ?"}]
    assert tok.apply_chat_template(two, tokenize=False, add_generation_prompt=True).endswith(
        " USER: <image>\nwhat ? ASSISTANT: red<|im_end|>USER: why ? ASSISTANT:")
    sys = [{"role": "system", "content": "Be brief."}] + msgs
    assert tok.apply_chat_template(sys, tokenize=False, add_generation_prompt=True).startswith("<|im_start|>Be brief. USER:")


# ---------------------------------------------------------------------------------------------------------------
# original LLaVA (haotian-liu/LLaVA): LLM folder with mm_* config fields, .bin shards, mm_projector.bin


def make_clip_tower(folder: Path, layers: int, hidden: int, image: int, seed: int, full_clip: bool) -> None:
    """A local CLIP folder: the full CLIPModel layout (like openai/clip-vit-large-patch14-336) or vision-only."""
    from transformers import CLIPConfig, CLIPModel, CLIPVisionModel

    torch.manual_seed(seed)
    vcfg = _clip_cfg(layers=layers, hidden=hidden, image=image).to_dict()
    if full_clip:
        cfg = CLIPConfig(vision_config=vcfg, text_config={"hidden_size": 16, "num_hidden_layers": 1,
                                                           "num_attention_heads": 2, "intermediate_size": 32,
                                                           "vocab_size": 64, "projection_dim": hidden},
                         projection_dim=hidden)
        model = CLIPModel(cfg)
    else:
        model = CLIPVisionModel(_clip_cfg(layers=layers, hidden=hidden, image=image))
    _rand_(model, seed).save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "crop_size": image, "do_center_crop": True, "do_normalize": True, "do_resize": True,
        "feature_extractor_type": "CLIPFeatureExtractor", "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711], "resample": 3, "size": image}))


def _llava_config(vocab, hidden, mm_hidden, tower, dtype, model_type="llava", **extra) -> dict:
    d = _llama_dims(vocab, hidden)
    return {"_name_or_path": "./checkpoints/vicuna-7b-v1-5", "architectures": ["LlavaLlamaForCausalLM"],
            "model_type": model_type, "hidden_act": "silu", "initializer_range": 0.02, "max_length": 4096,
            "pretraining_tp": 1, "rope_scaling": None, "use_cache": True, "torch_dtype": dtype,
            "transformers_version": "4.31.0", **d,
            "freeze_mm_mlp_adapter": False, "image_aspect_ratio": "pad", "mm_hidden_size": mm_hidden,
            "mm_patch_merge_type": "flat", "mm_projector_lr": None, "mm_projector_type": "mlp2x_gelu",
            "mm_use_im_patch_token": False, "mm_use_im_start_end": False, "mm_vision_select_feature": "patch",
            "mm_vision_select_layer": -2, "mm_vision_tower": tower, "tune_mm_mlp_adapter": False,
            "tokenizer_model_max_length": 2048, "tokenizer_padding_side": "right", "use_mm_proj": True, **extra}


def _tiny_llm_sd(vocab, hidden, seed, dtype, inv_freq=True):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    llm = _rand_(LlamaForCausalLM(LlamaConfig(**_llama_dims(vocab, hidden))), seed)
    sd = {k: v.to(dtype) for k, v in llm.state_dict().items()}
    if inv_freq:  # transformers 4.31 saved the rotary buffers; LLaVA-1.5's shards carry them
        head = hidden // 4
        for i in range(2):
            sd[f"model.layers.{i}.self_attn.rotary_emb.inv_freq"] = 1.0 / (10000 ** (torch.arange(0, head, 2).float() / head))
    return sd


def _reference_llm(folder_sd: dict, vocab, hidden):
    from transformers import LlamaConfig, LlamaForCausalLM

    llm = LlamaForCausalLM(LlamaConfig(**_llama_dims(vocab, hidden)))
    llm.load_state_dict({k: v.float() for k, v in folder_sd.items() if k.startswith(("model.layers", "model.embed", "model.norm", "lm_head"))
                         and "rotary_emb" not in k})
    return llm.eval()


def _mlp(sd, prefix):
    """LLaVA's nn.Sequential(Linear, GELU, Linear) with the checkpoint's weights under ``prefix``."""
    w0, w2 = sd[prefix + "0.weight"].float(), sd[prefix + "2.weight"].float()
    m = nn.Sequential(nn.Linear(w0.shape[1], w0.shape[0]), nn.GELU(), nn.Linear(w2.shape[1], w2.shape[0]))
    m.load_state_dict({k[len(prefix):]: v.float() for k, v in sd.items() if k.startswith(prefix)})
    return m.eval()


def make_llava_orig(root: Path, seed: int = 0):
    src, tower = root / "llava-v1.5-tiny", root / "clip-vit-tiny-336"
    src.mkdir(parents=True)
    make_clip_tower(tower, layers=3, hidden=32, image=32, seed=seed + 1, full_clip=True)
    tok = tiny_tokenizer()
    vocab, hidden = len(tok), 48
    sd = _tiny_llm_sd(vocab, hidden, seed, torch.float16)
    _save_shards(sd, src, "bin")
    g = torch.Generator().manual_seed(seed + 2)
    proj = {"model.mm_projector.0.weight": torch.randn(hidden, 32, generator=g) * 0.2,
            "model.mm_projector.0.bias": torch.randn(hidden, generator=g) * 0.2,
            "model.mm_projector.2.weight": torch.randn(hidden, hidden, generator=g) * 0.2,
            "model.mm_projector.2.bias": torch.randn(hidden, generator=g) * 0.2}
    proj = {k: v.half() for k, v in proj.items()}
    torch.save(proj, src / "mm_projector.bin")
    (src / "config.json").write_text(json.dumps(_llava_config(vocab, hidden, 32, "openai/clip-vit-large-patch14-336",
                                                              "float16"), indent=2))
    tok.save_pretrained(src)
    return src, tower, sd, proj, vocab, hidden


def test_llava_orig_convert_logits_equal(tmp_path):
    from transformers import CLIPVisionModel

    from compactvlm.interop import convert, detect_layout, load_model
    from compactvlm.model.checkpoint import load_pretrained

    src, tower, sd, proj, vocab, hidden = make_llava_orig(tmp_path)
    assert detect_layout(src) == "llava"
    with pytest.raises(CompactVLMError, match="vision tower 'openai/clip-vit-large-patch14-336'.*not a local folder"):
        convert("llava", src, tmp_path / "x")
    out = convert("llava", src, tmp_path / "compact", vision_tower=tower)
    meta = json.loads((out / "compactvlm.json").read_text())
    assert meta["model"]["compressor_params"] == {"layer": -2} and meta["model"]["dtype"] == "float16"
    ours = load_pretrained(out, dtype="float32", progress=False)
    direct = load_model(src, vision_tower=tower)

    # reference: the original LLaVA forward written out (CLIP hidden_states[-2] without CLS -> MLP -> Llama).
    # The (float32) tower folder is cast to the checkpoint's float16 by the default conversion, as LLaVA itself
    # runs it (model.to(float16)); the direct read keeps float32.
    clip32 = CLIPVisionModel.from_pretrained(tower, dtype=torch.float32).eval()
    clip16 = CLIPVisionModel.from_pretrained(tower, dtype=torch.float32).half().float().eval()
    mlp = _mlp(proj, "model.mm_projector.")
    llm = _reference_llm(sd, vocab, hidden)
    ids = torch.tensor([ours.prompt_ids("how many red circle are there ?")])
    pix = ours.processor(random_images(1, seed=2))
    with torch.no_grad():
        want = {n: _merge_and_run(llm, ids, mlp(c(pix, output_hidden_states=True).hidden_states[-2][:, 1:]))
                for n, c in (("16", clip16), ("32", clip32))}
        got = ours(ids, torch.ones_like(ids), pix).logits
        got_direct = direct(ids, torch.ones_like(ids), pix).logits
    torch.testing.assert_close(got, want["16"], atol=1e-5, rtol=0)
    torch.testing.assert_close(got_direct, want["32"], atol=1e-5, rtol=0)
    # the LLaVA prompt format came along
    text = ours.tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert " USER: hi ASSISTANT:" in text


def test_llava_orig_projector_only_folder_with_model_base(tmp_path):
    """The pretraining stage's folder (config.json + mm_projector.bin, no LLM weights) + LLaVA's --model-base."""
    from compactvlm.interop import read

    src, tower, sd, proj, vocab, hidden = make_llava_orig(tmp_path)
    base = tmp_path / "vicuna-tiny"
    base.mkdir()
    for f in src.glob("pytorch_model*"):
        shutil.move(str(f), base / f.name)
    with pytest.raises(CompactVLMError, match="(?s)no LLM weights.*--model-base"):
        read("llava", src, vision_tower=tower)
    a = read("llava", src, vision_tower=tower, model_base=base)
    assert torch.equal(a.compressor.proj.linear_1.weight, proj["model.mm_projector.0.weight"].float())
    assert torch.equal(a.llm.lm_head.weight, sd["lm_head.weight"].float())


def test_pickle_weights_are_read_without_running_code(tmp_path):
    """mm_projector.bin is a torch pickle: it is read with weights_only=True, so an object that would run code
    on unpickling is refused (and the code does not run)."""
    from compactvlm.interop import read

    src, tower, *_ = make_llava_orig(tmp_path)
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"model.mm_projector.0.weight": Evil()}, src / "evil.bin")
    with pytest.raises(CompactVLMError, match="weights_only=True"):
        read("llava", src, vision_tower=tower, projector=src / "evil.bin")
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------------------------
# LLaVA-STF: cross-layer MLP over blocks -2, 21, 18, ..., 3, then 2x2 space-to-depth (unfold), then MLP


def stf_space_to_depth_reference(x: torch.Tensor) -> torch.Tensor:
    """LLaVA-STF's parameter-free 2x2 space-to-depth, literally: view as a square map, unfold rows then
    columns (window axes appended after the channel axis), flatten each window."""
    b, n, c = x.shape
    h = w = int(n ** 0.5)
    x = x.view(b, h, w, c).unfold(1, 2, 2).unfold(2, 2, 2)  # (B, H/2, W/2, C, 2, 2)
    return x.contiguous().view(b, h // 2, w // 2, 4 * c).view(b, -1, 4 * c)


def test_stf_space_to_depth_order_is_channel_major_and_permutation_matches():
    from compactvlm.compressors.concat import space_to_depth
    from compactvlm.interop.llava_stf import stf_columns_to_ours

    h = w = 4
    c = 3
    # token (r, s) channel ch holds the number 100*r + 10*s + ch
    x = torch.tensor([[[100 * r + 10 * s + ch for ch in range(c)] for r in range(h) for s in range(w)]],
                     dtype=torch.float32)
    theirs = stf_space_to_depth_reference(x)
    ours = space_to_depth(x, (h, w), 2)
    assert theirs.shape == ours.shape == (1, 4, 4 * c)
    for win, (r0, s0) in enumerate([(0, 0), (0, 2), (2, 0), (2, 2)]):  # windows row-major in both
        for i in range(2):
            for j in range(2):
                for ch in range(c):
                    v = 100 * (r0 + i) + 10 * (s0 + j) + ch
                    assert theirs[0, win, ch * 4 + i * 2 + j] == v  # the fact: channel-major
                    assert ours[0, win, (i * 2 + j) * c + ch] == v
    wt = torch.randn(5, 4 * c, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ours, theirs = ours.double(), theirs.double()
    torch.testing.assert_close(ours @ stf_columns_to_ours(wt, c).T, theirs @ wt.T)
    assert not torch.allclose(ours @ wt.T, theirs @ wt.T)  # without the permutation they differ


def make_llava_stf(root: Path, seed: int = 0):
    """A tiny LLaVA-STF folder: bfloat16 safetensors shards with LLM + projector + vision-tower keys, config with
    the mm_* fields (mm_vision_tower a local folder, as the fork's scripts pass it), tokenizer; a 24-block CLIP."""
    src, tower = root / "llava-stf-tiny", root / "clip-24"
    src.mkdir(parents=True)
    c, d, image = 16, 32, 16
    make_clip_tower(tower, layers=24, hidden=c, image=image, seed=seed + 1, full_clip=False)
    tok = tiny_tokenizer()
    vocab = len(tok)
    sd = _tiny_llm_sd(vocab, d, seed, torch.bfloat16, inv_freq=False)
    g = torch.Generator().manual_seed(seed + 2)
    shapes = {"model.mm_projector_crosslayer.0": (4 * c, 8 * c), "model.mm_projector_crosslayer.2": (c, 4 * c),
              "model.mm_projector.0": (16 * c, 4 * c), "model.mm_projector.2": (d, 16 * c)}
    proj = {}
    for k, (o, i) in shapes.items():
        proj[k + ".weight"] = (torch.randn(o, i, generator=g) / i ** 0.5).to(torch.bfloat16)
        proj[k + ".bias"] = (torch.randn(o, generator=g) * 0.1).to(torch.bfloat16)
    tower_sd = load_file(str(tower / "model.safetensors"))
    tower_keys = {"model.vision_tower.vision_tower." + (k if k.startswith("vision_model.") else "vision_model." + k):
                  v.to(torch.bfloat16) for k, v in tower_sd.items()}
    _save_shards({**sd, **proj, **tower_keys}, src, "st")
    (src / "config.json").write_text(json.dumps(_llava_config(vocab, d, c, str(tower), "bfloat16",
                                                              model_type="llava_llama"), indent=2))
    tok.save_pretrained(src)
    return src, tower, sd, proj, tower_keys, vocab, d


def test_llava_stf_convert_logits_equal(tmp_path):
    from transformers import CLIPVisionModel

    from compactvlm.interop import convert, detect_layout, read
    from compactvlm.model.checkpoint import load_pretrained

    src, tower, sd, proj, tower_keys, vocab, d = make_llava_stf(tmp_path)
    assert detect_layout(src) == "llava-stf"
    with pytest.raises(CompactVLMError, match="(?s)mm_projector_crosslayer.*--from llava-stf"):
        read("llava", src)
    out = convert("llava-stf", src, tmp_path / "compact")
    meta = json.loads((out / "compactvlm.json").read_text())["model"]
    assert meta["compressor"] == "stf" and meta["dtype"] == "bfloat16"
    assert meta["compressor_params"]["mbtf_layers"] == [-2, 21, 18, 15, 12, 9, 6, 3]
    assert meta["compressor_params"]["learned_fuse"] is False and meta["compressor_params"]["act_last"] is False
    ours = load_pretrained(out, dtype="float32", progress=False)
    assert ours.num_image_tokens() == 4  # 4x4 grid -> 2x2 windows

    # reference: LLaVA-STF's encode_images written out, on the checkpoint's own (bfloat16) weights
    clip = CLIPVisionModel.from_pretrained(tower, dtype=torch.float32).eval()
    own = clip.state_dict()
    vt = {k[len("model.vision_tower.vision_tower."):]: v.float() for k, v in tower_keys.items()}
    if not any(k.startswith("vision_model.") for k in own):  # transformers 5 spells CLIPVisionModel keys without it
        vt = {k[len("vision_model."):]: v for k, v in vt.items()}
    clip.load_state_dict(vt, strict=True)  # the weights the STF checkpoint carries (bfloat16)
    cross, mlp = _mlp(proj, "model.mm_projector_crosslayer."), _mlp(proj, "model.mm_projector.")
    llm = _reference_llm(sd, vocab, d)
    ids = torch.tensor([ours.prompt_ids("what colour is the square ?")])
    pix = ours.processor(random_images(1, size=16, seed=5))

    def reference(s2d):
        hs = clip(pix, output_hidden_states=True).hidden_states
        x = torch.cat([hs[-2], hs[21], hs[18], hs[15], hs[12], hs[9], hs[6], hs[3]], dim=-1)[:, 1:]
        return _merge_and_run(llm, ids, mlp(s2d(cross(x))))

    with torch.no_grad():
        want = reference(stf_space_to_depth_reference)
        got = ours(ids, torch.ones_like(ids), pix).logits
        # a converter that got the space-to-depth order wrong (token-major on the released weights) would differ
        from compactvlm.compressors.concat import space_to_depth

        wrong = reference(lambda x: space_to_depth(x, (4, 4), 2))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    assert (wrong - want).abs().max() > 1e-3


# ---------------------------------------------------------------------------------------------------------------
# compact folders: save_pretrained / from_pretrained


def test_compact_save_reload_self_contained_identical(tmp_path, monkeypatch):
    from compactvlm.data.images import ImageProcessor
    from compactvlm.model.vlm import CompactVLM

    model = tiny_vlm("stf", k=2, E=1, seed=3)
    model.processor = ImageProcessor(32, (0.5, 0.4, 0.3), (0.2, 0.25, 0.3))  # non-default: must survive
    model.tokenizer.chat_template = model.tokenizer.chat_template + "{# saved #}"
    d = model.save_pretrained(tmp_path / "saved")
    for name in ("compactvlm.json", "compressor.safetensors", "tokenizer/tokenizer.json", "preprocessor_config.json",
                 "encoder/config.json", "encoder/model.safetensors", "llm/config.json", "llm/model.safetensors"):
        assert (d / name).exists(), name
    assert not list(d.rglob("*.bin"))  # safetensors only
    cfg = json.loads((d / "compactvlm.json").read_text())["model"]
    assert cfg["encoder"] == "encoder" and cfg["llm"] == "llm" and cfg["compressor_params"] == {"k": 2, "E": 1}
    pp = json.loads((d / "preprocessor_config.json").read_text())
    assert pp["image_mean"] == [0.5, 0.4, 0.3] and pp["size"] == {"height": 32, "width": 32}

    moved = tmp_path / "elsewhere" / "copy"  # no training config, other location, other working directory
    shutil.copytree(d, moved)
    shutil.rmtree(d)
    monkeypatch.chdir(tmp_path / "elsewhere")
    back = CompactVLM.from_pretrained("copy")
    assert back.processor.mean == (0.5, 0.4, 0.3) and back.processor.std == (0.2, 0.25, 0.3)
    assert back.tokenizer.chat_template.endswith("{# saved #}")
    assert back.tokenizer.get_vocab() == model.tokenizer.get_vocab()

    imgs = random_images(2, seed=9)
    qs = ["what is in the image ?", "how many blue square are there ?"]
    a = model.generate(imgs, qs, max_new_tokens=6).texts
    b = back.generate(imgs, qs, max_new_tokens=6).texts
    assert a == b and any(a)
    ids = torch.tensor([model.prompt_ids(qs[0])])
    with torch.no_grad():
        la = model(ids, torch.ones_like(ids), model.processor(imgs[:1])).logits
        lb = back(ids, torch.ones_like(ids), back.processor(imgs[:1])).logits
    assert torch.equal(la, lb)


def test_compact_folder_refuses_compressor_config_not_matching_weights(tmp_path):
    from compactvlm.model.checkpoint import load_pretrained

    d = tiny_vlm("stf", k=2, E=1, seed=4).save_pretrained(tmp_path / "m")
    meta = json.loads((d / "compactvlm.json").read_text())
    meta["model"]["compressor_params"]["k"] = 4  # the config now describes another compressor than the weights
    (d / "compactvlm.json").write_text(json.dumps(meta))
    _rewrite_manifest(d)  # a consistently written but wrong folder, not a damaged one
    with pytest.raises(CompactVLMError, match=r"(?s)do not match compressor 'stf'.*shape mismatch.*conv1"):
        load_pretrained(d, progress=False)


def test_convert_cli_errors(tmp_path):
    from compactvlm.interop import detect_layout

    assert _cli("convert", "--from", "llava-hf", str(tmp_path / "missing"), "--out", str(tmp_path / "o")) == 2
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(CompactVLMError, match="neither a compactvlm"):
        detect_layout(tmp_path / "plain")
    assert _cli("convert", "--from", "llava-hf", str(tmp_path / "plain"), "--out", str(tmp_path / "o")) == 2


def test_ask_reads_a_llava_hf_folder_directly(tmp_path, capsys):
    src = tmp_path / "llava-hf"
    make_llava_hf(src)
    random_images(1)[0].save(tmp_path / "img.png")
    assert _cli("ask", "--image", str(tmp_path / "img.png"), "--question", "what is in the image ?",
                "--checkpoint", str(src), "--max-new-tokens", "2") == 0
    out = capsys.readouterr().out
    assert "vision tokens: 64" in out and "mlp2x_gelu(layer=-2)" in out

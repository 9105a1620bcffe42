"""Foundation: merge, prompts, HF-LLaVA equivalence, batching, checkpoints (tiny offline models)."""

import pytest
import torch

from compactvlm.errors import CompactVLMError
from compactvlm.model.prompting import IGNORE_INDEX, IMAGE_TOKEN_ID, build_prompt, build_training_example
from compactvlm.registry import COMPRESSORS
from compactvlm.testing import random_images, tiny_tokenizer, tiny_vlm


def test_hf_llava_logits_equal():
    """Our mlp2x_gelu model == transformers' LlavaForConditionalGeneration with identical weights."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration, LlamaForCausalLM

    from compactvlm.compressors.base import create_compressor
    from compactvlm.data.images import ImageProcessor
    from compactvlm.encoders.hf import HFVisionEncoder
    from compactvlm.model.vlm import CompactVLM

    tok = tiny_tokenizer()
    img_id = len(tok)
    torch.manual_seed(0)
    vcfg = CLIPVisionConfig(hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=64,
                            patch_size=4, image_size=32, projection_dim=32)
    tcfg = LlamaConfig(vocab_size=img_id + 1, hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, pad_token_id=3)
    cfg = LlavaConfig(vision_config=vcfg, text_config=tcfg, image_token_index=img_id, vision_feature_layer=-2,
                      vision_feature_select_strategy="default", projector_hidden_act="gelu")
    hf = LlavaForConditionalGeneration(cfg).eval()

    enc = HFVisionEncoder(hf.model.vision_tower, image_size=32)
    comp = create_compressor("mlp2x_gelu", enc=enc.info, llm_dim=48)
    p = hf.model.multi_modal_projector
    comp.proj.linear_1.load_state_dict(p.linear_1.state_dict())
    comp.proj.linear_2.load_state_dict(p.linear_2.state_dict())
    llm = LlamaForCausalLM(tcfg).eval()
    llm.model.load_state_dict(hf.model.language_model.state_dict())
    llm.lm_head.load_state_dict(hf.lm_head.state_dict())
    ours = CompactVLM(enc, comp, llm, tok, ImageProcessor(32)).eval()

    ids = torch.tensor([ours.prompt_ids("what is in the image?")])
    assert int((ids == IMAGE_TOKEN_ID).sum()) == 64
    pix = ours.processor(random_images(1))
    with torch.no_grad():
        a = ours(ids, torch.ones_like(ids), pix).logits
        hf_ids = ids.masked_fill(ids == IMAGE_TOKEN_ID, img_id)
        b = hf(input_ids=hf_ids, attention_mask=torch.ones_like(ids), pixel_values=pix).logits
    assert a.shape == b.shape
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    # a wrong feature layer would not match: the test can fail
    comp.layer = -1
    with torch.no_grad():
        c = ours(ids, torch.ones_like(ids), pix).logits
    assert (c - b).abs().max() > 1e-3


@pytest.mark.parametrize("name", COMPRESSORS.names())
def test_placeholder_count_matches_compressor(name):
    model = tiny_vlm(name)
    ids = model.prompt_ids("how many shirt ?")
    n = model.num_image_tokens()
    assert ids.count(IMAGE_TOKEN_ID) == n
    tokens = model.encode_images(model.processor(random_images(2)))
    assert tokens.shape == (2, n, model.llm_dim)


def test_merge_rejects_count_mismatch():
    model = tiny_vlm("mlp2x_gelu")
    ids = torch.tensor([build_prompt(model.tokenizer, "what?", model.num_image_tokens() - 1)])
    pix = model.processor(random_images(1))
    with pytest.raises(CompactVLMError, match="do not match"):
        model(ids, torch.ones_like(ids), pix)
    with pytest.raises(CompactVLMError, match="no image"):
        model(torch.tensor([model.prompt_ids("what?")]))


def test_batched_generation_with_padding_equals_single():
    model = tiny_vlm("mlp2x_gelu", seed=1)
    imgs = random_images(2, seed=3)
    qs = ["what is in the image ?", "how many red circle are there in the picture ? answer using a single word"]
    both = model.generate(imgs, qs, max_new_tokens=6).texts
    singles = [model.generate([im], [q], max_new_tokens=6).texts[0] for im, q in zip(imgs, qs)]
    assert both == singles
    # and the prompts really had different lengths (padding was exercised)
    assert len(model.prompt_ids(qs[0])) != len(model.prompt_ids(qs[1]))


def test_batched_logits_left_padding_match_unpadded():
    model = tiny_vlm("mlp2x_gelu", seed=2)
    imgs = random_images(2, seed=4)
    qs = ["what ?", "how many blue square are there ?"]
    seqs = [model.prompt_ids(q) for q in qs]
    ids, mask = model.pad_left(seqs)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        batched = model(ids, mask, model.processor(imgs), position_ids=pos, logits_to_keep=1).logits[:, -1]
        for i in range(2):
            one = torch.tensor([seqs[i]])
            single = model(one, torch.ones_like(one), model.processor([imgs[i]]), logits_to_keep=1).logits[0, -1]
            torch.testing.assert_close(batched[i], single, atol=1e-5, rtol=1e-4)


def test_training_labels_cover_only_answers():
    tok = tiny_tokenizer()
    conv = [{"from": "human", "value": "<image>\nhow many shirt ?"}, {"from": "gpt", "value": "two"},
            {"from": "human", "value": "what colour ?"}, {"from": "gpt", "value": "red"}]
    ids, labels = build_training_example(tok, conv, num_image_tokens=5)
    assert len(ids) == len(labels)
    assert ids.count(IMAGE_TOKEN_ID) == 5
    kept = [l for l in labels if l != IGNORE_INDEX]
    assert tok.decode(kept).split() == ["two", "<|im_end|>", "red", "<|im_end|>"]
    # labelled positions carry the same ids as the input
    assert all(l == i for i, l in zip(ids, labels) if l != IGNORE_INDEX)


@pytest.mark.parametrize("conv, msg", [
    ([], "non-empty"),
    ([{"from": "robot", "value": "hi"}], "unknown speaker"),
    ([{"from": "human", "value": "<image>\nhi"}], "no assistant"),
    ([{"from": "human", "value": "<image> <image>"}, {"from": "gpt", "value": "x"}], "placeholders"),
    ([{"from": "human"}, {"from": "gpt", "value": "x"}], "no text"),
])
def test_bad_conversations(conv, msg):
    with pytest.raises(CompactVLMError, match=msg):
        build_training_example(tiny_tokenizer(), conv, 4)


def test_empty_question_and_unknown_compressor():
    with pytest.raises(CompactVLMError, match="empty"):
        build_prompt(tiny_tokenizer(), "   ", 4)
    with pytest.raises(CompactVLMError, match="(?s)unknown compressor 'stff'.*did you mean"):
        tiny_vlm("stff")
    with pytest.raises(CompactVLMError, match="bad option"):
        tiny_vlm("mlp2x_gelu", kk=3)


def test_context_overflow_is_clear():
    model = tiny_vlm("mlp2x_gelu")
    model.llm.config.max_position_embeddings = 50
    with pytest.raises(CompactVLMError, match="exceeds the LLM context"):
        model.generate(random_images(1), ["what ?"], max_new_tokens=4)


def test_checkpoint_roundtrip_and_mismatch(tmp_path, monkeypatch):
    from compactvlm.model import checkpoint as ck

    model = tiny_vlm("mlp2x_gelu", seed=5)
    ck.save_pretrained(model, tmp_path / "ckpt")
    other = tiny_vlm("mlp2x_gelu", seed=6)
    ck.load_compressor_weights(other.compressor, tmp_path / "ckpt" / ck.COMPRESSOR_WEIGHTS)
    for a, b in zip(model.compressor.state_dict().values(), other.compressor.state_dict().values()):
        assert torch.equal(a, b)
    wrong = tiny_vlm("mlp2x_gelu", layer=-1)
    wrong.compressor.proj.linear_1 = torch.nn.Linear(7, wrong.llm_dim)
    with pytest.raises(CompactVLMError, match="do not match compressor"):
        ck.load_compressor_weights(wrong.compressor, tmp_path / "ckpt" / ck.COMPRESSOR_WEIGHTS)
    with pytest.raises(CompactVLMError, match="holds a 'mlp2x_gelu' compressor"):
        ck.load_pretrained(tmp_path / "ckpt", compressor="stf")
    with pytest.raises(CompactVLMError, match="not a compactvlm checkpoint"):
        ck.read_config(tmp_path)

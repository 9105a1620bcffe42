"""Evaluation's answer function: one encode + one vision-prefix prefill per image, prompts batched by length,
early stop at the answer's end; the answers equal the plain batched generate's, exactly (tiny models)."""

from __future__ import annotations

import pytest

from compactvlm.evaluate.answer import Answerer, make_answer_fn
from compactvlm.evaluate.benchmarks.base import EvalItem
from compactvlm.testing import random_images, sharpen, tiny_vlm

QUESTIONS = ["is there a red cube?", "how many objects are there in the picture?", "what colour is it?",
             "which one is left of the sphere, the cube or the cylinder?", "is it big?"]


def items(tmp_path, n_images: int = 3):
    out = []
    for i, img in enumerate(random_images(n_images, seed=3)):
        path = tmp_path / f"img{i}.png"
        img.save(path)
        for j, q in enumerate(QUESTIONS[: 2 + i]):  # 2, 3, 4 questions per image, lengths differ and repeat
            out.append(EvalItem(question_id=f"{i}-{j}", image_path=str(path), prompt=q,
                                category="existence" if j % 2 == 0 else "attribute"))
    return out


def varied(model):
    """Larger random weights: the tiny model's greedy answers then differ between images and questions (at the
    default init every answer repeats one token, and equal answers would prove nothing)."""
    sharpen(model.llm, model.compressor)
    return model


@pytest.mark.parametrize("compressor, params", [("mlp2x_gelu", {}), ("stf", {"k": 2, "E": 1})])
def test_shared_prefix_answers_equal_plain_generate(tmp_path, compressor, params):
    model = varied(tiny_vlm(compressor, **params))
    its = items(tmp_path)
    plain = make_answer_fn(model, None, max_new_tokens=8, share_prefix=False)(its)
    shared = make_answer_fn(model, None, max_new_tokens=8, share_prefix=True, stop_at_answer=False)(its)
    assert shared == plain
    assert len(set(plain)) == len(plain)  # every answer differs: the comparison means something
    # closed-form families stop at the first line break: their answer is the plain answer's first line
    early = make_answer_fn(model, None, max_new_tokens=8)(its)
    for it, a, p in zip(its, early, plain):
        assert a == (p.strip().split("\n")[0].strip() if it.category == "existence" else p)


def test_work_is_shared_per_image(tmp_path, monkeypatch):
    model = tiny_vlm("mlp2x_gelu")
    its = items(tmp_path)
    calls = {"encode": 0}
    enc = model.encode_images

    def counting_encode(pix, extra=None):
        calls["encode"] += 1
        calls["images"] = int(pix.shape[0])
        return enc(pix, extra)

    monkeypatch.setattr(model, "encode_images", counting_encode)
    Answerer(model, max_new_tokens=4, features=False)(its)
    assert calls == {"encode": 1, "images": 3}  # 9 questions, 3 images, one batched encode


def test_encoder_features_are_reused_across_passes_and_processes(tmp_path, monkeypatch):
    """The blind control's pass (the same images, other questions) and a later answerer reading the same disk cache
    run no encoder; the answers equal those computed without the cache."""
    from compactvlm.model.features import ImageFeatureCache

    model = varied(tiny_vlm("stf", k=2, E=1))
    its = items(tmp_path)
    calls = {"images": 0}
    fwd = model.encoder.forward

    def counting_forward(pix, *a, **k):
        calls["images"] += int(pix.shape[0])
        return fwd(pix, *a, **k)

    monkeypatch.setattr(model.encoder, "forward", counting_forward)
    plain = Answerer(model, max_new_tokens=8, features=False)(its)
    assert calls["images"] == 3 and len(set(plain)) > 1
    cache = ImageFeatureCache(root=tmp_path / "features")
    answer = Answerer(model, max_new_tokens=8, features=cache)
    assert answer(its) == plain and calls["images"] == 6 and cache.encoded == 3
    # the shuffled control asks each question of another image: every image is in the cache already
    shuffled = [EvalItem(question_id=it.question_id, image_path=its[(k + 4) % len(its)].image_path, prompt=it.prompt,
                         category=it.category) for k, it in enumerate(its)]
    assert answer(shuffled) == Answerer(model, max_new_tokens=8, features=False)(shuffled)
    assert calls["images"] == 9 and cache.encoded == 3  # 3 more: the uncached reference answers just above
    # another process (a new cache on the same folder): read from disk, still the same answers
    again = ImageFeatureCache(root=tmp_path / "features")
    assert Answerer(model, max_new_tokens=8, features=again)(its) == plain
    assert calls["images"] == 9 and again.encoded == 0 and again.hits == 3
    # one folder: this encoder (its weights), its blocks and its dtype
    assert len(list((tmp_path / "features").iterdir())) == 1


@pytest.mark.parametrize("case", ["visionzip", "tome", "fastv", "extra_tokens_full_attention"])
def test_no_feature_cache_where_features_depend_on_more_than_the_blocks(case):
    from compactvlm.registry import REDUCTIONS

    if case == "extra_tokens_full_attention":  # the image tokens attend to the semantic tokens: other blocks
        model = tiny_vlm("vistog", tokens=8, attention="full")
    else:
        model = tiny_vlm("mlp2x_gelu")
        model.reduction = REDUCTIONS.create(case, budget=16, model=model, **({"k": 1} if case == "fastv" else {}))
    assert Answerer(model).features is None


def test_isolated_extra_tokens_answer_from_cached_blocks(tmp_path):
    """VisToG (isolated semantic tokens): the cache keeps the plain encoder's blocks and the semantic tokens run
    beside them, with the answers of a fresh encode."""
    model = varied(tiny_vlm("vistog", tokens=8))
    its = items(tmp_path)
    answer = Answerer(model, max_new_tokens=8)
    assert answer.features is not None
    assert answer(its) == Answerer(model, max_new_tokens=8, features=False)(its)
    assert answer.features.encoded > 0


@pytest.mark.parametrize("name", ["random", "avgpool", "dart", "divprune"])
def test_reductions_that_read_only_the_blocks_use_the_cache(tmp_path, monkeypatch, name):
    """Training-free reductions of a full-token model (the study's evaluation-only rows) answer from cached blocks
    exactly as from a fresh encode."""
    from compactvlm.registry import REDUCTIONS

    model = varied(tiny_vlm("mlp2x_gelu"))
    model.reduction = REDUCTIONS.create(name, budget=16, model=model)
    its = items(tmp_path)
    fresh = Answerer(model, max_new_tokens=8, features=False)(its)
    answer = Answerer(model, max_new_tokens=8)
    assert answer.features is not None
    assert answer(its) == fresh
    calls = {"images": 0}
    fwd = model.encoder.forward
    monkeypatch.setattr(model.encoder, "forward",
                        lambda pix, *a, **k: calls.__setitem__("images", calls["images"] + int(pix.shape[0]))
                        or fwd(pix, *a, **k))
    assert answer(its) == fresh and calls["images"] == 0


def test_fastv_takes_the_plain_path():
    from compactvlm.registry import REDUCTIONS

    model = tiny_vlm("mlp2x_gelu")
    model.reduction = REDUCTIONS.create("fastv", budget=16, model=model, k=1)
    assert not Answerer(model).share_prefix


def test_eval_throughput_reports_speed_identity_and_logit_difference(tmp_path):
    from compactvlm.efficiency.answers import eval_throughput

    its = items(tmp_path, n_images=2)
    rep = eval_throughput([("tiny", varied(tiny_vlm("mlp2x_gelu")))], its, None, batch_size=4, max_new_tokens=4,
                          repeats=1, dtype="bfloat16", progress=False)
    r = rep["models"]["tiny"]
    assert set(r["questions_per_s"]) == {"fp32-plain", "fp32-shared", "bfloat16-shared", "fp32-shared-cached"}
    assert r["identical_answers_pct"]["fp32-shared vs fp32-plain"] == 100.0
    assert r["identical_answers_pct"]["fp32-shared-cached vs fp32-shared"] == 100.0
    assert 0 < r["first_token_logits_max_abs_diff"] < 1  # bf16 rounding: small, not zero
    assert len(r["answers"]["bfloat16-shared"]) == len(its) == rep["questions"]


def test_eval_throughput_skips_a_default_dtype_arm_that_is_float32(tmp_path):
    """Where the default dtype resolves to float32 (no native bf16), a third arm would only repeat fp32-shared."""
    from compactvlm.efficiency.answers import eval_throughput

    its = items(tmp_path, n_images=2)
    rep = eval_throughput([("tiny", varied(tiny_vlm("stf", k=2, E=1)))], its, None, batch_size=4, max_new_tokens=4,
                          repeats=1, dtype="float32", progress=False)
    r = rep["models"]["tiny"]
    assert set(r["questions_per_s"]) == {"fp32-plain", "fp32-shared", "fp32-shared-cached"}
    assert r["first_token_logits_max_abs_diff"] is None and r["first_token_argmax_identical_pct"] is None
    assert set(r["identical_answers_pct"]) == {"fp32-shared vs fp32-plain", "fp32-shared-cached vs fp32-shared"}


def test_closed_form_answers_stop_at_the_line_break(tmp_path):
    """With a token treated as a line break, closed-form answers end right after it (decoding stops there) and
    open answers run on; the stopped answers are prefixes of the full ones."""
    model = varied(tiny_vlm("mlp2x_gelu"))
    its = items(tmp_path)
    plain = make_answer_fn(model, None, max_new_tokens=8, share_prefix=False)(its)
    tok = model.tokenizer
    stop_id = tok(plain[0].split()[0], add_special_tokens=False)["input_ids"][0]  # the first answer's first token
    fn = make_answer_fn(model, None, max_new_tokens=8)
    fn.newlines = {stop_id}
    early = fn(its)
    shorter = 0
    for it, a, p in zip(its, early, plain):
        if it.category == "existence":
            assert p.startswith(a)
            shorter += len(a) < len(p)
        else:
            assert a == p
    assert shorter >= 1

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
    Answerer(model, max_new_tokens=4)(its)
    assert calls == {"encode": 1, "images": 3}  # 9 questions, 3 images, one batched encode


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
    assert set(r["questions_per_s"]) == {"fp32-plain", "fp32-shared", "bfloat16-shared"}
    assert r["identical_answers_pct"]["fp32-shared vs fp32-plain"] == 100.0
    assert 0 < r["first_token_logits_max_abs_diff"] < 1  # bf16 rounding: small, not zero
    assert len(r["answers"]["bfloat16-shared"]) == len(its) == rep["questions"]


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

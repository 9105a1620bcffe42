"""The lmms-eval plugin, found through lmms-eval's own registry (entry points), on in-memory requests.

Skipped when lmms-eval is not importable; `make test-lmms-eval` (part of `make test`) installs lmms-eval's
code in a side folder and runs this file with it.
"""

import pytest
import torch

lmms_eval = pytest.importorskip("lmms_eval")
pytest.importorskip("lmms_eval.api.model")

from lmms_eval.api.instance import Instance  # noqa: E402

from compactvlm.errors import CompactVLMError  # noqa: E402
from compactvlm.testing import random_images, tiny_vlm  # noqa: E402


QUESTIONS = ["what is in the image ?", "how many red circle are there in the picture ? answer using a single word",
             "what colour is the square ?", "is there a shoe ?"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    model = tiny_vlm("mlp2x_gelu", seed=7)
    return model.save_pretrained(tmp_path_factory.mktemp("lmms") / "tiny"), model


def _docs():
    imgs = random_images(3, seed=11)
    return [{"image": imgs[0], "q": QUESTIONS[0]}, {"image": imgs[1], "q": QUESTIONS[1]},
            {"image": None, "q": QUESTIONS[2]}, {"image": imgs[2], "q": QUESTIONS[3]}]


def _visual(doc):
    return [] if doc["image"] is None else [doc["image"]]


def _lm(folder, batch_size, extra=""):
    from lmms_eval.models import get_model

    cls = get_model("compactvlm")
    lm = cls.create_from_arg_string(f"pretrained={folder},device=cpu{extra}", {"batch_size": batch_size,
                                                                              "max_batch_size": None, "device": None})
    lm.task_dict = {"toy": {"test": _docs()}}
    return lm


def _gen_requests(gen_kwargs):
    return [Instance(request_type="generate_until", arguments=(d["q"], dict(gen_kwargs), _visual, i, "toy", "test"),
                     idx=0, metadata={"task": "toy", "doc_id": i, "repeats": 1}) for i, d in enumerate(_docs())]


def _ll_requests(conts):
    reqs = [Instance(request_type="loglikelihood", arguments=(d["q"], c, _visual, i, "toy", "test"), idx=j,
                     metadata={"task": "toy", "doc_id": i, "repeats": 1})
            for j, (i, d, c) in enumerate((i, d, c) for i, d in enumerate(_docs()) for c in conts)]
    reqs.append(Instance(request_type="loglikelihood", arguments=("", conts[0]), idx=0,
                         metadata={"task": "toy", "doc_id": 0, "repeats": 1}))
    return reqs


def test_registered_through_the_entry_point():
    from importlib.metadata import entry_points

    from lmms_eval.api.model import lmms
    from lmms_eval.models import get_model, list_available_models

    from compactvlm.interop.lmms_eval_plugin import CompactVLMLmms

    assert any(ep.name == "compactvlm" for ep in entry_points(group="lmms_eval.models")), \
        "the lmms_eval.models entry point is missing: reinstall compactvlm (pip install -e .)"
    assert "compactvlm" in list_available_models()
    cls = get_model("compactvlm")
    assert cls is CompactVLMLmms and issubclass(cls, lmms) and cls.is_simple


def test_generate_until_batched_equals_direct(folder):
    d, model = folder
    gk = {"max_new_tokens": 5, "until": ["\n\n"]}
    one, three = _lm(d, 1), _lm(d, 3)
    assert three.batch_size == 3
    a = one.generate_until(_gen_requests(gk))
    b = three.generate_until(_gen_requests(gk))
    assert a == b and len(a) == 4
    docs = _docs()
    for i, doc in enumerate(docs):  # each answer is what the model itself says for that sample
        imgs = None if doc["image"] is None else [doc["image"]]
        assert a[i] == model.generate(imgs, [doc["q"]], max_new_tokens=5).texts[0]
    assert any(a)
    # `until` cuts the output at the first stop string
    word = next(t for t in a if t).split()[0]
    cut = three.generate_until(_gen_requests({"max_new_tokens": 5, "until": [word]}))
    assert cut == [t[: t.index(word)] if word in t else t for t in a]


def test_loglikelihood_batched_equals_direct_and_greedy_flag(folder):
    d, model = folder
    tok = model.tokenizer
    docs = _docs()
    # the greedy next token after doc 0's prompt, as a continuation
    ids = torch.tensor([model.prompt_ids(docs[0]["q"])])
    with torch.no_grad():
        nxt = int(model(ids, torch.ones_like(ids), model.processor([docs[0]["image"]])).logits[0, -1].argmax())
    greedy_word = tok.decode([nxt])
    other = "zero" if greedy_word != "zero" else "nine"
    conts = [greedy_word, other + " two"]
    assert tok(greedy_word, add_special_tokens=False)["input_ids"] == [nxt]

    res1 = _lm(d, 1).loglikelihood(_ll_requests(conts))
    res4 = _lm(d, 4).loglikelihood(_ll_requests(conts))
    assert len(res1) == len(res4) == 2 * len(docs) + 1
    for (l1, g1), (l4, g4) in zip(res1, res4):
        assert l1 == pytest.approx(l4, abs=1e-4) and g1 == g4

    def direct(doc, cont):
        c = tok(cont, add_special_tokens=False)["input_ids"]
        p = model.prompt_ids(doc["q"], with_image=doc["image"] is not None)
        x = torch.tensor([p + c])
        pix = None if doc["image"] is None else model.processor([doc["image"]])
        with torch.no_grad():
            lp = torch.log_softmax(model(x, torch.ones_like(x), pix).logits[0].float(), -1)
        return float(sum(lp[len(p) - 1 + k, t] for k, t in enumerate(c)))

    for j, (i, cont) in enumerate((i, c) for i in range(len(docs)) for c in conts):
        assert res4[j][0] == pytest.approx(direct(docs[i], cont), abs=1e-4)
        assert res4[j][0] < 0
    assert res4[0][1] is True  # doc 0, its own greedy token
    assert res4[1][1] is False  # a two-token continuation the model would not produce greedily
    assert res4[-1][0] < 0  # the unconditional (empty-context) request


def test_budget_model_argument(folder):
    d, _ = folder
    lm = _lm(d, 2, ",budget=16,reduce=avgpool")
    assert lm.model.num_image_tokens() == 16
    out = lm.generate_until(_gen_requests({"max_new_tokens": 3}))
    assert len(out) == 4
    full = _lm(d, 2).model.num_image_tokens()
    assert full == 64
    with pytest.raises(CompactVLMError, match="no test-time budget"):
        _lm(d, 1, ",budget=16")
    with pytest.raises(CompactVLMError, match="unknown compactvlm model_args: bogus"):
        _lm(d, 1, ",bogus=1")

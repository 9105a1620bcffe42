"""The web demo's request handling without a browser: methods, bad uploads, one run at a time, caching."""

import os
import threading
import time

import pytest

from compactvlm.errors import CompactVLMError
from compactvlm.testing import random_images, tiny_vlm
from compactvlm.viz.app import MethodPool, check_upload, compare, format_answer

FULL, STF, RANDOM, AVGPOOL = "mlp2x_gelu", "stf_k2e1", "mlp2x_gelu+random:budget=16", "avgpool_k2"

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")


@pytest.fixture(scope="module")
def pool():
    return MethodPool(tiny_vlm(), repeats=1)


@pytest.fixture(scope="module")
def image_path(tmp_path_factory):
    p = tmp_path_factory.mktemp("up") / "photo.png"
    random_images(1, 48, seed=4)[0].save(p)
    return str(p)


def test_default_methods_come_from_the_registry_and_fit_the_model(pool):
    from compactvlm.registry import REDUCTIONS
    from compactvlm.spec import default_comparison

    real = default_comparison(16 * 16)  # DINOv2-S/14 at 224 px
    assert real[0] == FULL and {"stf_k2e1", "avgpool_k2", "vistog_32", "objects_16", "qformer_64"} <= set(real)
    assert {f"{FULL}+{r}:budget=64" for r in REDUCTIONS.names()} <= set(real)
    tiny = set(pool.methods)  # 8 x 8 patches, a 2-layer LLM: the defaults it cannot run are left out
    assert {FULL, STF, AVGPOOL, RANDOM, "vistog_32", "objects_16", "mlp2x_gelu+visionzip:budget=16"} <= tiny
    assert "mlp2x_gelu+fastv:budget=16" not in tiny  # fastv's default k=2 needs more than 2 LLM layers
    odd = MethodPool(tiny_vlm(image=28), repeats=1)  # 7 x 7 patches
    assert STF not in odd.methods and FULL in odd.methods  # k=2 does not divide a 7x7 grid
    with pytest.raises(CompactVLMError, match="method 'stf:k=3'.*does not divide"):
        MethodPool(tiny_vlm(), ["stf:k=3"])  # a method asked for is refused, not left out
    given = MethodPool(tiny_vlm(), ["stf:k=2,E=1", "mlp2x_gelu+fastv:budget=16,k=1"], repeats=1)
    assert list(given.methods) == ["stf:k=2,E=1", "mlp2x_gelu+fastv:budget=16,k=1"]


@pytest.mark.parametrize("content,expect", [(b"not an image at all", "not an image"), (b"", "empty"),
                                            (None, "Upload an image")])
def test_bad_uploads_get_a_message(pool, tmp_path, content, expect):
    path = None
    if content is not None:
        path = tmp_path / "upload.png"
        path.write_bytes(content)
    message, rows, results = compare(pool, None if path is None else str(path), "what is it?", [STF])
    assert expect in message and rows == [] and results == {}
    assert str(tmp_path) not in message  # the server's temp folder is not shown


def test_tiny_image_and_missing_question_or_methods(pool, tmp_path, image_path):
    small = tmp_path / "small.png"
    random_images(1, 4)[0].save(small)
    assert "too small" in check_upload(str(small))[0]
    assert "question" in compare(pool, image_path, "  ", [STF])[0]
    assert "at least one" in compare(pool, image_path, "what?", [])[0]


def test_compare_reports_each_method(pool, image_path):
    labels = [FULL, STF, RANDOM]
    message, rows, results = compare(pool, image_path, "what is in the image ?", labels, max_new_tokens=4)
    assert message.startswith("Compared 3 methods")
    assert f"TTFT from 3 interleaved rounds; speedup over {FULL}: {STF}" in message
    assert [r[0] for r in rows] == labels
    assert [r[1] for r in rows] == ["64", "16", "16"]
    for lab in labels:
        r = results[lab]
        assert r.error is None and r.ttft_ms > 0 and r.picture is not None
        assert rows[labels.index(lab)][4] == format_answer(r.answer)
    # the same request again gives the same answers (seeded, cached compressors)
    again = compare(pool, image_path, "what is in the image ?", labels, max_new_tokens=4)[2]
    assert [again[lab].answer for lab in labels] == [results[lab].answer for lab in labels]


def test_compressors_are_built_once_and_swapped(pool):
    m = pool.model
    a = pool.activate(pool.methods[STF]).compressor
    pool.activate(pool.methods[RANDOM])
    assert m.reduction is not None and m.num_image_tokens() == 16
    red = m.reduction
    b = pool.activate(pool.methods[STF]).compressor
    assert a is b and m.reduction is None
    assert pool.activate(pool.methods[RANDOM]).reduction is red


def test_a_failing_method_does_not_stop_the_others(pool, image_path, monkeypatch):
    from compactvlm.viz import app as app_mod

    def boom(*a, **k):
        raise RuntimeError("kaputt")

    monkeypatch.setattr(app_mod, "token_map", boom)
    message, rows, results = compare(pool, image_path, "what?", [STF, AVGPOOL], max_new_tokens=2)
    assert "2 failed" in message and all("kaputt" in r[4] for r in rows)


def test_one_model_run_at_a_time(pool, image_path):
    active, peak = [0], [0]
    real = pool.model.generate

    def spy(*a, **k):
        active[0] += 1
        peak[0] = max(peak[0], active[0])
        time.sleep(0.05)
        try:
            return real(*a, **k)
        finally:
            active[0] -= 1

    pool.model.generate = spy
    try:
        threads = [threading.Thread(target=compare, args=(pool, image_path, "what?", [STF], 2)) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    finally:
        del pool.model.generate
    assert peak[0] == 1


def test_app_queues_model_runs_one_at_a_time(pool):
    pytest.importorskip("gradio")
    from compactvlm.viz.app import build_app

    app = build_app(pool)
    run = [fn for fn in app.fns.values() if fn.name == "on_run"]
    assert len(run) == 1 and run[0].concurrency_limit == 1
    assert app._queue.default_concurrency_limit == 1

"""The web demo's request handling without a browser: presets, bad uploads, one run at a time, caching."""

import os
import threading
import time

import pytest

from compactvlm.testing import random_images, tiny_vlm
from compactvlm.viz.app import MethodPool, check_upload, compare, default_presets, format_answer

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")


@pytest.fixture(scope="module")
def pool():
    return MethodPool(tiny_vlm(), repeats=1)


@pytest.fixture(scope="module")
def image_path(tmp_path_factory):
    p = tmp_path_factory.mktemp("up") / "photo.png"
    random_images(1, 48, seed=4)[0].save(p)
    return str(p)


def test_presets_scale_with_the_grid():
    real = {p.label: p for p in default_presets((16, 16), 30)}
    tiny = {p.label: p for p in default_presets((8, 8), 2)}
    for want in ("mlp2x_gelu (all tokens)", "stf k=2", "avgpool k=2", "random 64", "visionzip 64", "vistog 32",
                 "objects 16"):
        assert want in real
    assert "random 16" in tiny and "vistog 8" in tiny
    assert dict(tiny["fastv 16"].reduce_params)["k"] == 1  # the tiny LLM has 2 layers
    odd = {p.label for p in default_presets((7, 7), 30)}
    assert "stf k=2" not in odd  # k=2 does not divide a 7x7 grid


@pytest.mark.parametrize("content,expect", [(b"not an image at all", "not an image"), (b"", "empty"),
                                            (None, "Upload an image")])
def test_bad_uploads_get_a_message(pool, tmp_path, content, expect):
    path = None
    if content is not None:
        path = tmp_path / "upload.png"
        path.write_bytes(content)
    message, rows, results = compare(pool, None if path is None else str(path), "what is it?", ["stf k=2"])
    assert expect in message and rows == [] and results == {}
    assert str(tmp_path) not in message  # the server's temp folder is not shown


def test_tiny_image_and_missing_question_or_methods(pool, tmp_path, image_path):
    small = tmp_path / "small.png"
    random_images(1, 4)[0].save(small)
    assert "too small" in check_upload(str(small))[0]
    assert "question" in compare(pool, image_path, "  ", ["stf k=2"])[0]
    assert "at least one" in compare(pool, image_path, "what?", [])[0]


def test_compare_reports_each_method(pool, image_path):
    labels = ["mlp2x_gelu (all tokens)", "stf k=2", "random 16"]
    message, rows, results = compare(pool, image_path, "what is in the image ?", labels, max_new_tokens=4)
    assert message.startswith("Compared 3 methods")
    assert "TTFT from 3 interleaved rounds; speedup over mlp2x_gelu (all tokens): stf k=2" in message
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
    a = pool.activate(pool.presets["stf k=2"]).compressor
    pool.activate(pool.presets["random 16"])
    assert m.reduction is not None and m.num_image_tokens() == 16
    red = m.reduction
    b = pool.activate(pool.presets["stf k=2"]).compressor
    assert a is b and m.reduction is None
    assert pool.activate(pool.presets["random 16"]).reduction is red


def test_a_failing_method_does_not_stop_the_others(pool, image_path, monkeypatch):
    from compactvlm.viz import app as app_mod

    def boom(*a, **k):
        raise RuntimeError("kaputt")

    monkeypatch.setattr(app_mod, "token_map", boom)
    message, rows, results = compare(pool, image_path, "what?", ["stf k=2", "avgpool k=2"], max_new_tokens=2)
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
        threads = [threading.Thread(target=compare, args=(pool, image_path, "what?", ["stf k=2"], 2)) for _ in range(3)]
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

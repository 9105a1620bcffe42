"""SceneQA: determinism, disjoint sources, LLaVA formats, label maps, answers that agree with the scene
records, scoring through the harness, and the CLI."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from compactvlm.data.sceneqa import FAMILY_NAMES, build_sceneqa
from compactvlm.data.sceneqa.sources import fashion_mnist_dir
from compactvlm.errors import CompactVLMError

try:
    fashion_mnist_dir()
except CompactVLMError as e:  # the Debian package dataset-fashion-mnist is installed in setup and CI
    pytest.skip(str(e), allow_module_level=True)

SIZES = {"caption": 8, "train": 24, "val": 16, "test": 32}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("sceneqa")
    manifest = build_sceneqa(out, seed=3, sizes=SIZES, progress=False)
    return out, manifest


def _jsonl(p: Path) -> list[dict]:
    return [json.loads(x) for x in p.read_text().splitlines()]


def test_same_seed_same_bytes_other_seed_differs(built, tmp_path):
    out, manifest = built
    again = build_sceneqa(tmp_path / "again", seed=3, sizes=SIZES, progress=False, workers=2)
    other = build_sceneqa(tmp_path / "other", seed=4, sizes=SIZES, progress=False)
    names = sorted(p.name for p in out.glob("*.json*") if p.name != "manifest.json")
    assert "train.json" in names and "test_answers.jsonl" in names
    for n in names:
        assert (out / n).read_bytes() == (tmp_path / "again" / n).read_bytes(), n
    assert (out / "test_answers.jsonl").read_bytes() != (tmp_path / "other" / "test_answers.jsonl").read_bytes()
    strip = lambda m: {k: v for k, v in m.items() if k not in ("build_seconds", "built_at")}  # noqa: E731
    assert strip(manifest) == strip(again) and strip(manifest) != strip(other)
    assert (out / "images/test/000005.jpg").read_bytes() == (tmp_path / "again/images/test/000005.jpg").read_bytes()


def test_manifest_counts_and_baselines(built):
    out, m = built
    assert m["sizes"] == SIZES and m["seed"] == 3 and m["build_seconds"] > 0
    assert json.loads((out / "manifest.json").read_text())["counts"] == m["counts"]
    for split, n in SIZES.items():
        assert m["counts"][split]["images"] == n
        assert len(list((out / "images" / split).glob("*.jpg"))) == n
        assert len(list((out / "masks" / split).glob("*.png"))) == n
    assert len(_jsonl(out / "test_questions.jsonl")) == m["counts"]["test"]["questions"]
    base = m["baselines"]["test"]
    assert set(base) == set(FAMILY_NAMES)                     # 32 images: every family has 4
    assert base["existence"]["chance"] == 50.0 and base["existence"]["majority"] == 50.0
    assert base["multiple_choice"]["chance"] == 25.0
    assert base["multiple_choice"]["circular_chance"] == pytest.approx(100 / 256, abs=1e-3)
    assert base["counting"]["chance"] == 25.0 and base["spatial"]["chance"] == 50.0
    assert base["mme"]["chance"] == 75.0 * len({r["subset"] for r in _jsonl(out / "test_answers.jsonl")
                                                if r["family"] == "mme"})
    for b in base.values():
        assert 0.0 <= b["majority"] <= (1000.0 if b["headline_metric"] == "total" else 100.0)


def test_sources_are_disjoint_across_splits(built):
    out, _ = built
    seen = defaultdict(set)
    for split in SIZES:
        for s in _jsonl(out / f"{split}_scenes.jsonl"):
            for o in s["objects"]:
                if o["kind"] == "item":
                    part, idx = o["source"].split(":")
                    seen[split].add((part, int(idx)))
    for split in ("caption", "train"):
        assert all(p == "fashion-mnist-train" and i < 50_000 for p, i in seen[split])
    assert all(p == "fashion-mnist-train" and i >= 50_000 for p, i in seen["val"])
    assert all(p == "fashion-mnist-t10k" for p, _ in seen["test"])
    assert not (seen["train"] | seen["caption"]) & seen["val"]


def test_llava_formats(built):
    out, _ = built
    train = json.loads((out / "train.json").read_text())
    assert len(train) == SIZES["train"]
    for rec in train:
        assert set(rec) == {"id", "image", "conversations"} and (out / rec["image"]).exists()
        conv = rec["conversations"]
        assert [t["from"] for t in conv] == ["human", "gpt"] * (len(conv) // 2) and 2 <= len(conv) <= 6
        assert conv[0]["value"].startswith("<image>\n") and all("<image>" not in t["value"] for t in conv[1:])
        assert all(len(t["value"].split()) <= 2 for t in conv[1::2])       # short answers
    cap = json.loads((out / "caption.json").read_text())
    text = cap[0]["conversations"][1]["value"]
    assert text.endswith(".") and " on a photo of " in text
    qs, ans = _jsonl(out / "test_questions.jsonl"), _jsonl(out / "test_answers.jsonl")
    assert [q["question_id"] for q in qs] == [a["question_id"] for a in ans]
    assert len({q["question_id"] for q in qs}) == len(qs)
    for q, a in zip(qs, ans):
        assert set(q) == {"question_id", "image", "text", "category"} and q["category"] == a["family"]
        assert "<image>" not in q["text"] and q["text"].startswith(a["question"])
        assert len(a["answers"]) == (10 if a["metric"] == "vqa_accuracy" else 1)
    assert len(json.loads((out / "val.json").read_text())) == len(_jsonl(out / "val_questions.jsonl"))


def test_label_maps_match_scene_boxes(built):
    out, _ = built
    for s in _jsonl(out / "test_scenes.jsonl")[:12]:
        lab = np.array(Image.open(out / s["mask"]))
        assert lab.shape == (224, 224)
        assert set(np.unique(lab)) == {0} | {o["id"] for o in s["objects"]}
        for o in s["objects"]:
            ys, xs = np.nonzero(lab == o["id"])
            x0, y0, x1, y1 = o["box"]
            assert x0 <= xs.min() and xs.max() < x1 and y0 <= ys.min() and ys.max() < y1
            if o["kind"] == "item":  # the box is tight around the item's pixels
                assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (x0, y0, x1, y1)
            if o["kind"] == "item":
                assert 28 <= max(x1 - x0, y1 - y0) <= 56


def test_object_masks_for_the_given_mask_source(built):
    from compactvlm.data.sceneqa import object_masks

    out, _ = built
    image = "images/val/000003.jpg"
    masks, objs = object_masks(out, image)
    lab = np.array(Image.open(out / "masks/val/000003.png"))
    assert masks.dtype == bool and masks.shape == (len(objs), 224, 224) and len(objs) >= 1
    assert all(((lab == o["id"]) == m).all() for o, m in zip(objs, masks))
    small, _ = object_masks(out, image, size=(16, 16), kinds=("item",))
    assert small.shape[1:] == (16, 16) and all(o["kind"] == "item" for o in _)
    with pytest.raises(CompactVLMError):
        object_masks(out, "images/val/999999.jpg")


def test_answers_agree_with_scenes(built):
    out, _ = built
    scenes = {s["image"]: s for s in _jsonl(out / "test_scenes.jsonl")}
    by_group = defaultdict(list)
    for a in _jsonl(out / "test_answers.jsonl"):
        objs = scenes[a["image"]]["objects"]
        names = Counter(o["name"] for o in objs)
        fam, q = a["family"], a["question"]
        if fam == "counting":
            word = q.split("How many ")[1].split(" are there")[0]
            match = [n for n in names if word in (n + "s", n + "es", "pairs of " + n)]
            assert len(match) == 1 and a["answer"] == str(names[match[0]]) and 1 <= int(a["answer"]) <= 4
        elif fam == "attribute":
            shape = q.split("the ")[1].rstrip("?")
            (o,) = [o for o in objs if o["name"] == shape]
            assert a["answer"] == o["color"]
        elif fam == "ocr":
            (sign,) = [o for o in objs if o["kind"] == "sign"]
            assert a["answer"] == sign["word"]
        elif fam == "existence":
            item = q.split("Is there a ")[1].split(" in the image")[0].replace("pair of ", "")
            assert a["answer"] == ("yes" if names[item] else "no")
        elif fam == "unanswerable":
            assert (a["answer"] == "unanswerable") == (a["subset"] == "unanswerable")
        if fam in ("multiple_choice", "mme"):
            by_group[(fam, a["group"])].append(a)
    for (fam, _), rows in by_group.items():
        if fam == "multiple_choice":   # every circular shift, the right option lands on every letter
            assert sorted(r["answer"] for r in rows) == ["A", "B", "C", "D"]
            right = {r["options"]["ABCD".index(r["answer"])] for r in rows}
            assert len(right) == 1
        else:                          # MME: a yes/no pair per image
            assert [r["answer"] for r in rows] == ["yes", "no"]
    ex = [a for a in _jsonl(out / "test_answers.jsonl") if a["family"] == "existence"]
    assert Counter(a["answer"] for a in ex)["yes"] == len(ex) / 2
    assert Counter(a["subset"] for a in ex) == {s: len(ex) / 3 for s in ("random", "popular", "adversarial")}


def test_scoring_through_the_harness(built, tmp_path):
    from compactvlm.evaluate import evaluate

    out, _ = built
    oracle = evaluate("sceneqa", out, lambda items: [it.meta["answer"] for it in items], tmp_path / "oracle",
                      batch_size=4, progress=False)
    for fam, s in oracle["families"].items():
        if fam == "mme":
            assert s["total"] == 200.0 * len(s["categories"])
        else:
            assert s["headline"] == 100.0, fam
    assert oracle["family_mean"] == 100.0
    yes = evaluate("sceneqa", out, lambda items: ["Yes"] * len(items), tmp_path / "yes", split="val", progress=False)
    assert yes["split"] == "val"
    assert yes["families"]["existence"]["mean_accuracy"] == 50.0
    assert yes["families"]["existence"]["mean_f1"] == pytest.approx(200 / 3)
    assert yes["families"]["ocr"]["accuracy"] == 0.0
    assert set(yes["components"]) == {f"sceneqa/{f}" for f in yes["families"]}


def test_cli_build(tmp_path, capsys):
    from compactvlm.cli import main

    rc = main(["data", "build", "sceneqa", "--out", str(tmp_path / "s"), "--seed", "1", "--caption", "2",
               "--train", "4", "--val", "0", "--test", "8", "--quiet"])
    assert rc == 0
    m = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert m["sizes"] == {"caption": 2, "train": 4, "val": 0, "test": 8}
    assert not (tmp_path / "s" / "val_questions.jsonl").exists()
    assert "baselines (test)" in capsys.readouterr().out
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "mine.txt").write_text("x")
    assert main(["data", "build", "sceneqa", "--out", str(tmp_path / "other"), "--quiet"]) == 2
    with pytest.raises(CompactVLMError, match="unknown SceneQA split"):
        build_sceneqa(tmp_path / "x", sizes={"tests": 3}, progress=False)

"""Build SceneQA on disk: images, label maps, LLaVA-format training JSON, evaluation question/answer
JSONL and a manifest with sizes, build time, per-family counts and chance/majority baselines.

Every image draws from its own random stream ``(seed, split, index)``, so the output does not depend on
the order or number of workers: the same seed gives byte-identical JSON (the manifest differs only in
``built_at`` / ``build_seconds``).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from ...errors import CompactVLMError
from ...model.manifest import MARKER_NAME, marker_kind, refuse_foreign, write_marker
from . import sources
from .questions import ASK, caption
from .scene import Pool, render, sample_scene, scene_dict
from .vocab import CANVAS, CAPTION_PROMPTS, FAMILIES, FAMILY_NAMES

SPLITS = ("caption", "train", "val", "test")
EVAL_SPLITS = ("val", "test")
TRAIN_SPLITS = ("caption", "train")  # the splits ``object_scale`` applies to (a training curriculum)
SPLIT_CODE = {"caption": 0, "train": 1, "val": 2, "test": 3}
DEFAULT_SIZES = {"caption": 2000, "train": 5000, "val": 250, "test": 1000}
VERSION = 1
OUR_FILES = ("manifest.json", "caption.json", "caption_val.json", "train.json", "val.json", "val_questions.jsonl",
             "val_answers.jsonl", "test_questions.jsonl", "test_answers.jsonl", *(f"{s}_scenes.jsonl" for s in SPLITS))

_STATE: dict = {}  # per-process: pools, backgrounds, options (filled by _init)


def _init(seed: int, out_dir: str, turns: int, fmnist_dir: str | None, object_scale: float = 1.0) -> None:
    tr_img, tr_lab = sources.load_fashion_mnist("train", fmnist_dir)
    te_img, te_lab = sources.load_fashion_mnist("t10k", fmnist_dir)
    train_pool = Pool(tr_img, tr_lab, 0, 50_000, "fashion-mnist-train")
    _STATE.update(
        pools={"caption": train_pool, "train": train_pool,
               "val": Pool(tr_img, tr_lab, 50_000, 60_000, "fashion-mnist-train"),
               "test": Pool(te_img, te_lab, 0, len(te_lab), "fashion-mnist-t10k")},
        backgrounds=sources.load_backgrounds(), seed=seed, out=Path(out_dir), turns=turns, object_scale=object_scale,
    )


def family_of(seed: int, split: str, index: int) -> str:
    """Families take turns (in a seeded order), so each gets the same share of images."""
    order = np.random.default_rng([seed, SPLIT_CODE[split], 2**31 - 1]).permutation(len(FAMILY_NAMES))
    return FAMILY_NAMES[int(order[index % len(FAMILY_NAMES)])]


def make_image(task: tuple[str, int]) -> dict:
    """Render one image (and its label map) and write its questions; returns the record."""
    split, index = task
    st = _STATE
    rng = np.random.default_rng([st["seed"], SPLIT_CODE[split], index])
    pool, bgs = st["pools"][split], st["backgrounds"]
    family = "caption" if split == "caption" else family_of(st["seed"], split, index)
    full = split in EVAL_SPLITS
    for _ in range(50):
        scale = st.get("object_scale", 1.0) if split in TRAIN_SPLITS else 1.0  # evaluation splits never scale
        scene, spec = sample_scene(rng, "existence" if family == "caption" else family, pool, bgs, scale)
        qas = [] if family == "caption" else ASK[family](scene, rng, spec, full)
        if qas is not None:
            break
    else:
        raise RuntimeError(f"SceneQA: no {family} question fits after 50 scenes ({split} {index})")
    if split == "train":  # more turns about the same image, from other families
        for fam in rng.permutation([f for f in FAMILY_NAMES if f != family]):
            if len(qas) >= st["turns"]:
                break
            extra = ASK[str(fam)](scene, rng, {}, False)
            if extra:
                qas += extra
    name = f"{index:06d}"
    image_rel, mask_rel = f"images/{split}/{name}.jpg", f"masks/{split}/{name}.png"
    im, lab = render(scene, bgs)
    im.save(st["out"] / image_rel, quality=92)
    lab.save(st["out"] / mask_rel, compress_level=1)
    rec = {"split": split, "index": index, "image": image_rel, "mask": mask_rel, "family": family, "qas": qas,
           "scene": {"image": image_rel, "mask": mask_rel, **scene_dict(scene, pool)}}
    if split in ("caption", "val"):  # val images also get a caption (caption_val.json: stage 1's held-out loss);
        from .sources import BACKGROUND_PHRASES  # drawn last, so the val questions are those of earlier builds

        rec["prompt"] = CAPTION_PROMPTS[int(rng.integers(len(CAPTION_PROMPTS)))]
        rec["caption"] = caption(scene, BACKGROUND_PHRASES[scene.background])
    return rec


def _dumps(obj) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


_OUR_IMAGE = re.compile(r"^\d{6}\.(jpg|png)$")


def _legacy_build(out: Path) -> bool:
    """A build written before markers existed: a SceneQA manifest and nothing but SceneQA's own files."""
    try:
        m = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if not (isinstance(m, dict) and m.get("name") == "sceneqa" and isinstance(m.get("files"), dict)
            and "counts" in m):
        return False
    return not _foreign(out)


def _foreign(out: Path) -> list[str]:
    """Entries of ``out`` that a SceneQA build does not write (relative paths)."""
    bad = []
    for p in out.iterdir():
        name = p.name
        if name in (MARKER_NAME, MARKER_NAME + ".tmp") or (p.is_file() and (name in OUR_FILES or name.endswith(".tmp")
                                                                           and name[:-4] in OUR_FILES)):
            continue
        if name in ("images", "masks") and p.is_dir() and not p.is_symlink():
            for sp in p.iterdir():
                if sp.name not in SPLITS or not sp.is_dir() or sp.is_symlink():
                    bad.append(f"{name}/{sp.name}")
                    continue
                bad += [f"{name}/{sp.name}/{f.name}" for f in sp.iterdir()
                        if not (_OUR_IMAGE.match(f.name) and f.is_file() and not f.is_symlink())]
            continue
        bad.append(name + ("/" if p.is_dir() else ""))
    return sorted(bad)


def _prepare(out: Path) -> None:
    """Make ``out`` ready for a build: refuse anything that is not a SceneQA build (marked, or one written before
    markers existed), then delete only SceneQA's own files (a killed build's half-written files included)."""
    if out.exists() and not out.is_dir():
        raise CompactVLMError(f"--out {out} is a file, not a folder", "choose a new or empty folder for --out")
    if out.exists() and any(out.iterdir()):
        kind = marker_kind(out)
        if kind is not None and kind != "sceneqa-build":
            raise refuse_foreign(out, "sceneqa-build", "--out", kind)
        if kind is None and not _legacy_build(out):
            raise refuse_foreign(out, "sceneqa-build", "--out")
        foreign = _foreign(out)
        if foreign:
            shown = ", ".join(foreign[:5]) + (f" (+{len(foreign) - 5} more)" if len(foreign) > 5 else "")
            raise CompactVLMError(
                f"SceneQA build {out} also holds files SceneQA does not write ({shown}); nothing was changed",
                "move those files out of the folder (a rebuild replaces only SceneQA's own files), or build into "
                "a new folder")
    write_marker(out, "sceneqa-build", state="building")
    for d in ("images", "masks"):
        for sp in SPLITS:
            folder = out / d / sp
            if folder.is_dir():
                for f in folder.iterdir():
                    if _OUR_IMAGE.match(f.name):
                        f.unlink()
                folder.rmdir()
        if (out / d).is_dir():
            (out / d).rmdir()
    for f in OUR_FILES:
        (out / f).unlink(missing_ok=True)
        (out / (f + ".tmp")).unlink(missing_ok=True)


def build_sceneqa(out_dir: str | os.PathLike, seed: int = 0, sizes: dict[str, int] | None = None,
                  progress: bool = True, turns: int = 3, workers: int = 1,
                  fmnist_dir: str | None = None, object_scale: float = 1.0) -> dict:
    """Build SceneQA into ``out_dir`` and return the manifest (also written to ``manifest.json``).

    sizes: images per split, keys ``caption`` / ``train`` / ``val`` / ``test`` (missing keys take
    ``DEFAULT_SIZES``; 0 skips a split). turns: question turns per training conversation (one image,
    up to ``turns`` questions from different families). workers: processes rendering images. object_scale:
    multiplies object sizes in the caption and train splits only (an easier training curriculum, e.g. 1.75; the
    val and test splits always keep the standard sizes, so evaluations stay comparable across builds).
    """
    t0 = time.perf_counter()
    sizes = {**DEFAULT_SIZES, **(sizes or {})}
    bad = set(sizes) - set(SPLITS)
    if bad:
        raise CompactVLMError(f"unknown SceneQA split(s) {sorted(bad)}", f"use {', '.join(SPLITS)}")
    if any(int(v) < 0 for v in sizes.values()):
        raise CompactVLMError(f"split sizes must be >= 0, got {sizes}", "pass e.g. --test 500")
    if turns < 1:
        raise CompactVLMError(f"turns must be >= 1, got {turns}", "use e.g. --turns 3")
    if not 0.5 <= float(object_scale) <= 2.5:
        raise CompactVLMError(f"object_scale must be within 0.5-2.5, got {object_scale}",
                              "use e.g. --object-scale 1.75 (1 = the standard sizes)")
    sizes = {k: int(sizes[k]) for k in SPLITS}
    out = Path(out_dir).expanduser()
    _prepare(out)
    for s in SPLITS:
        if sizes[s]:
            (out / "images" / s).mkdir(parents=True, exist_ok=True)
            (out / "masks" / s).mkdir(parents=True, exist_ok=True)
    _init(seed, str(out), turns, fmnist_dir, float(object_scale))
    tasks = [(s, i) for s in SPLITS for i in range(sizes[s])]

    from tqdm.auto import tqdm

    bar = tqdm(total=len(tasks), desc="SceneQA", unit="img", disable=not progress)
    records: dict[str, list[dict]] = defaultdict(list)
    if workers > 1 and len(tasks) > 1:
        import multiprocessing as mp

        ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context()
        with ctx.Pool(workers, initializer=_init, initargs=(seed, str(out), turns, fmnist_dir, float(object_scale))) as p:
            for rec in p.imap(make_image, tasks, chunksize=16):
                records[rec["split"]].append(rec)
                bar.update()
    else:
        for t in tasks:
            rec = make_image(t)
            records[rec["split"]].append(rec)
            bar.update()
    bar.close()

    files = _write_outputs(out, records, sizes)
    manifest = _manifest(out, seed, sizes, turns, records, files)
    manifest["object_scale"] = {s: (float(object_scale) if s in TRAIN_SPLITS else 1.0) for s in SPLITS}
    manifest["build_seconds"] = round(time.perf_counter() - t0, 2)
    manifest["built_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    _write_text(out / "manifest.json", json.dumps(manifest, indent=1, ensure_ascii=False) + "\n")
    write_marker(out, "sceneqa-build", state="complete", seed=seed)
    return manifest


def _conversation(turns: list[tuple[str, str]]) -> list[dict]:
    conv = []
    for k, (q, a) in enumerate(turns):
        conv.append({"from": "human", "value": ("<image>\n" + q) if k == 0 else q})
        conv.append({"from": "gpt", "value": a})
    return conv


def _eval_rows(records: list[dict], split: str) -> tuple[list[dict], list[dict]]:
    questions, answers = [], []
    for rec in records:
        for k, qa in enumerate(rec["qas"]):
            qid = f"{split}-{rec['index']:06d}-{k}"
            questions.append({"question_id": qid, "image": rec["image"], "text": qa["text"], "category": qa["family"]})
            row = {"question_id": qid, "image": rec["image"], **{x: y for x, y in qa.items() if x != "text"}}
            if qa["family"] in ("multiple_choice", "mme"):
                row["group"] = f"{split}-{rec['index']:06d}"
            answers.append(row)
    return questions, answers


def _write_outputs(out: Path, records: dict[str, list[dict]], sizes: dict[str, int]) -> dict[str, str]:
    files: dict[str, str] = {}

    def put(name: str, text: str) -> None:
        _write_text(out / name, text)
        files[name] = hashlib.sha256(text.encode("utf-8")).hexdigest()

    if sizes["caption"]:
        put("caption.json", _dumps([{"id": f"caption-{r['index']:06d}", "image": r["image"],
                                     "conversations": _conversation([(r["prompt"], r["caption"])])}
                                    for r in records["caption"]]))
    if sizes["train"]:
        put("train.json", _dumps([{"id": f"train-{r['index']:06d}", "image": r["image"],
                                   "conversations": _conversation([(qa["text"], qa["answer"]) for qa in r["qas"]])}
                                  for r in records["train"]]))
    for split in EVAL_SPLITS:
        if not sizes[split]:
            continue
        questions, answers = _eval_rows(records[split], split)
        put(f"{split}_questions.jsonl", "".join(_dumps(q) + "\n" for q in questions))
        put(f"{split}_answers.jsonl", "".join(_dumps(a) + "\n" for a in answers))
        if split == "val":  # the same questions in training format, for validation loss
            put("val.json", _dumps([{"id": q["question_id"], "image": q["image"],
                                     "conversations": _conversation([(q["text"], a["answer"])])}
                                    for q, a in zip(questions, answers)]))
            # the val images' captions: held-out caption loss for stage 1 (caption.json's images are its training set)
            put("caption_val.json", _dumps([{"id": f"caption-val-{r['index']:06d}", "image": r["image"],
                                             "conversations": _conversation([(r["prompt"], r["caption"])])}
                                            for r in records["val"]]))
    for split in SPLITS:
        if sizes[split]:
            put(f"{split}_scenes.jsonl", "".join(_dumps(r["scene"]) + "\n" for r in records[split]))
    return files


def _baselines(answer_rows: list[dict], majority: dict[str, str]) -> dict:
    from ...evaluate.benchmarks.sceneqa import chance_circular, chance_headline, score_family

    by_family: dict[str, list[dict]] = defaultdict(list)
    for r in answer_rows:
        by_family[r["family"]].append(r)
    out = {}
    for fam in FAMILY_NAMES:
        rows = by_family.get(fam)
        if not rows:
            continue
        maj = majority.get(fam) or Counter(r["answer"] for r in rows).most_common(1)[0][0]
        scored = score_family(fam, rows, [maj] * len(rows))
        entry = {"headline_metric": scored["headline_metric"], "chance": round(chance_headline(fam, rows), 3),
                 "majority": round(scored["headline"], 3), "majority_answer": maj, "questions": len(rows)}
        if fam == "multiple_choice":
            entry["circular_chance"] = round(chance_circular(rows), 3)
            entry["circular_majority"] = round(scored["circular_accuracy"], 3)
        if fam == "existence":
            entry["majority_f1"] = round(scored["mean_f1"], 3)
        out[fam] = entry
    return out


def _manifest(out: Path, seed: int, sizes: dict, turns: int, records: dict, files: dict) -> dict:
    counts: dict = {}
    train_answers: dict[str, Counter] = defaultdict(Counter)
    for split in SPLITS:
        per_family: Counter = Counter()
        for r in records[split]:
            for qa in r["qas"]:
                per_family[qa["family"]] += 1
                if split == "train":
                    train_answers[qa["family"]][qa["answer"]] += 1
        counts[split] = {"images": len(records[split]),
                         "questions": sum(per_family.values()) if split != "caption" else len(records[split]),
                         "per_family": dict(sorted(per_family.items()))}
    # majority answer: the most common training answer of the family (ties: alphabetical)
    majority = {f: sorted(c.items(), key=lambda kv: (-kv[1], kv[0]))[0][0] for f, c in train_answers.items()}
    baselines = {}
    for split in EVAL_SPLITS:
        if sizes[split]:
            _, answers = _eval_rows(records[split], split)
            baselines[split] = _baselines(answers, majority)
    bgs = sources.load_backgrounds()
    return {
        "name": "sceneqa", "version": VERSION, "seed": seed, "sizes": sizes, "turns": turns, "image_size": CANVAS,
        "families": FAMILIES, "counts": counts, "baselines": baselines,
        "majority_answer_source": "train" if sizes["train"] else "each split itself",
        "sources": {"fashion_mnist": str(sources.fashion_mnist_dir()), "backgrounds": sorted(bgs),
                    "fonts": [Path(f).name for f in sources.font_files()] or ["Pillow default"]},
        "files": files,
    }

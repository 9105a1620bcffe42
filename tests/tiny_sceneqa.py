"""A small SceneQA-format folder written by hand (no Fashion-MNIST needed): 4 existence + 2 counting questions."""

import json
from pathlib import Path

from compactvlm.testing import random_images

SHORT = "Answer the question using a single word or phrase."


def write_tiny_sceneqa(folder: Path) -> Path:
    """A small SceneQA-format folder: existence (yes/no, two subsets) and counting (ten answers) questions."""
    (folder / "images" / "test").mkdir(parents=True)
    questions, answers = [], []
    for i, img in enumerate(random_images(6, seed=21)):
        path = f"images/test/{i:06d}.jpg"
        img.save(folder / path)
        fam = "existence" if i < 4 else "counting"
        q = "Is there a shoe in the image?" if fam == "existence" else "How many circles are there in the image?"
        ans = ("yes" if i % 2 else "no") if fam == "existence" else str(i)
        qid = f"test-{i:06d}-0"
        questions.append({"question_id": qid, "image": path, "text": f"{q}\n{SHORT}", "category": fam})
        answers.append({"question_id": qid, "image": path, "family": fam, "question": q, "answer": ans,
                        "subset": ("random" if i < 2 else "adversarial") if fam == "existence" else "counting",
                        "answers": [ans] * (1 if fam == "existence" else 10),
                        "metric": "pope" if fam == "existence" else "vqa_accuracy", "n_choices": 2})
    for name, rows in (("test_questions.jsonl", questions), ("test_answers.jsonl", answers)):
        (folder / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder

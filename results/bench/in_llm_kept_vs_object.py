"""Does an in-LLM pruning row keep the asked-for shape? For SceneQA's attribute questions ("What color is the
star?"), the image tokens the row keeps at its first drop (FastV: after layer K, ranked by the attention of the last
prompt position; PyramidDrop: the same rank, the first of its stages; SparseVLM: ranked by the question words'
attention, the first of its stages; and whether any of the shape's tokens is still there after the last stage), against the asked shape's tokens in the scene's instance mask, split by whether
the row answered right. A 16x16 token grid of a 224-px image: a token covers the shape when at least a quarter of its
14x14 patch is the shape. "Right" is an exact match with the answer, as the attribute family scores it.
`python results/bench/in_llm_kept_vs_object.py CHECKPOINT ROW [ROW ...]` from the repo root (in-LLM rows of the
v2-900 plan: fastv-64, pyramiddrop-64, sparsevlm-64, ...), once data/study_v2 is built."""
import json, sys
import numpy as np, torch
from PIL import Image
from compactvlm.model.checkpoint import load_pretrained
from compactvlm.model.prompting import IMAGE_TOKEN_ID
from compactvlm.reduction.staged import StagedPruning
from compactvlm.study import load_plan
torch.set_num_threads(1)
plan = load_plan('configs/study/sceneqa_v2_900.yaml')
D = 'data/study_v2/'
scenes = {json.loads(l)['image']: json.loads(l) for l in open(D + 'test_scenes.jsonl')}
answers = {a['question_id']: a for a in map(json.loads, open(D + 'test_answers.jsonl'))}
qs = [q for q in map(json.loads, open(D + 'test_questions.jsonl')) if q['category'] == 'attribute']
vlm = load_pretrained(sys.argv[1], progress=False, dtype=plan.eval_dtype)
for name in sys.argv[2:]:
    plan.row(name).set_test_time(vlm)
    red = vlm.reduction
    if red is None or not red.in_llm:
        sys.exit(f"{name}: not an in-LLM reduction row")
    st = {True: [], False: []}  # answered right -> per question numbers
    for q in qs:
        a, sc = answers[q['question_id']], scenes[q['image']]
        obj = [o for o in sc['objects'] if o.get('color') == a['answer'] and o['name'] in a['question']]
        if len(obj) != 1:
            continue
        lab = np.array(Image.open(D + sc['mask']))  # (224, 224) object ids, 0 = background
        side = 16; ph = lab.shape[0] // side
        on = (lab == obj[0]['id']).reshape(side, ph, side, ph).mean(axis=(1, 3)).reshape(-1) >= 0.25  # (256,)
        anyobj = (lab > 0).reshape(side, ph, side, ph).mean(axis=(1, 3)).reshape(-1) >= 0.25
        with torch.no_grad():
            said = vlm.generate([Image.open(D + q['image']).convert('RGB')], [q['text']], max_new_tokens=4).texts[0]
        img_pos = [i for i, t in enumerate(vlm.prompt_ids(q['text'], with_image=True)) if t == IMAGE_TOKEN_ID]
        first = red.last_stage_positions[0] if isinstance(red, StagedPruning) else red.last_kept_positions
        kept = set(first[0].tolist())
        k = np.array([p in kept for p in img_pos])  # (256,) kept at the first drop, grid order
        last = set(red.last_kept_positions[0].tolist())  # after the last drop (FastV: the same set)
        k_last = np.array([p in last for p in img_pos])  # (256,)
        right = said.strip().lower().rstrip('.') == a['answer']
        st[right].append((k[on].mean() if on.any() else np.nan, k[on].any(), anyobj[k].mean(), on.sum(), anyobj.mean(), k.mean(), k_last[on].any(), k_last.sum()))
    print(f"{name} on {sys.argv[1]} ({int(k.sum())} of {len(k)} image tokens kept at its first drop):")
    for right in (True, False):
        r = np.array(st[right], dtype=float)
        if len(r):
            print(f"  {'right' if right else 'wrong'}: {len(r)} questions; share of the asked shape's tokens kept "
                  f"{100 * np.nanmean(r[:, 0]):.1f}% (a random choice: {100 * r[:, 5].mean():.1f}%; median shape "
                  f"{np.median(r[:, 3]):.0f} tokens); shape not kept at all {100 * (1 - r[:, 1].mean()):.1f}%; kept "
                  f"tokens on any object {100 * r[:, 2].mean():.1f}% (of all its image tokens: {100 * r[:, 4].mean():.1f}%); shape "
                  f"kept to its last drop ({r[0, 7]:.0f} tokens) {100 * r[:, 6].mean():.1f}%")

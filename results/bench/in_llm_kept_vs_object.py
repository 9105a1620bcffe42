"""Does FastV keep the asked-for shape? For SceneQA's attribute questions ("What color is the star?"), the image
tokens an in-LLM pruning row keeps after layer K (FastV: ranked by layer-K attention from the last prompt token)
against the asked shape's patches in the scene's instance mask, split by whether the row answered right. A 16x16
token grid of a 224-px image: a token covers the shape when at least a quarter of its 14x14 patch is the shape.
`python results/bench/fastv_kept_vs_object.py CHECKPOINT ROW [ROW ...]` from the repo root (rows of the v2-900 plan
with ``reduce: fastv``, e.g. fastv-64 fastv-16), once data/study_v2 is built."""
import json, sys
import numpy as np, torch
from PIL import Image
from compactvlm.model.checkpoint import load_pretrained
from compactvlm.reduction.fastv import FastV
from compactvlm.study import load_plan
torch.set_num_threads(1)
plan = load_plan('configs/study/sceneqa_v2_900.yaml')
D = 'data/study_v2/'
scenes = {json.loads(l)['image']: json.loads(l) for l in open(D + 'test_scenes.jsonl')}
answers = {a['question_id']: a for a in map(json.loads, open(D + 'test_answers.jsonl'))}
qs = [q for q in map(json.loads, open(D + 'test_questions.jsonl')) if q['category'] == 'attribute']
kept_log = []
orig_keep = FastV._keep


def keep(self, scores, image_mask):
    out = orig_keep(self, scores, image_mask)  # (B, T') positions kept
    img_pos = image_mask[0].nonzero()[:, 0]  # (N,) sequence positions of the image tokens, grid order
    kept = set(out[0].tolist())
    kept_log.append(np.array([p in kept for p in img_pos.tolist()]))  # (N,) bool per image token
    return out


FastV._keep = keep
vlm = load_pretrained(sys.argv[1], progress=False, dtype=plan.eval_dtype)
for name in sys.argv[2:]:
    plan.row(name).set_test_time(vlm)
    st = {True: [], False: []}  # answered right -> (share of the shape's tokens kept, any kept, share of kept on objects)
    for q in qs:
        a, sc = answers[q['question_id']], scenes[q['image']]
        obj = [o for o in sc['objects'] if o.get('color') == a['answer'] and o['name'] in a['question']]
        if len(obj) != 1:
            continue
        lab = np.array(Image.open(D + sc['mask']))  # (224, 224) object ids, 0 = background
        side = 16; ph = lab.shape[0] // side
        on = (lab == obj[0]['id']).reshape(side, ph, side, ph).mean(axis=(1, 3)).reshape(-1) >= 0.25  # (256,)
        anyobj = (lab > 0).reshape(side, ph, side, ph).mean(axis=(1, 3)).reshape(-1) >= 0.25
        kept_log.clear()
        with torch.no_grad():
            said = vlm.generate([Image.open(D + q['image']).convert('RGB')], [q['text']], max_new_tokens=4).texts[0]
        k = kept_log[0]
        right = said.strip().lower().rstrip('.') == a['answer']
        st[right].append((k[on].mean() if on.any() else np.nan, k[on].any(), anyobj[k].mean(), on.sum(), anyobj.mean()))
    print(f"{name} on {sys.argv[1]} ({int(k.sum())} of {len(k)} image tokens kept):")
    for right in (True, False):
        r = np.array(st[right], dtype=float)
        if len(r):
            print(f"  {'right' if right else 'wrong'}: {len(r)} questions; share of the asked shape's tokens kept "
                  f"{100 * np.nanmean(r[:, 0]):.1f}% (median shape {np.median(r[:, 3]):.0f} tokens); shape not kept "
                  f"at all {100 * (1 - r[:, 1].mean()):.1f}%; kept tokens on any object {100 * r[:, 2].mean():.1f}% (of all "
                  f"its image tokens: {100 * r[:, 4].mean():.1f}%)")

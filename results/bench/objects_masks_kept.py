"""Which of SceneQA's objects does a test-time budget of the trained `objects` row keep? For N test images: the
unsupervised segments (as the row computes them), ranked as its budget ranks them (by area, or by contrast), and for each annotated
object the segment that covers most of it: is that segment among the kept ones at budgets 13 (8 objects) / 9 (4)?
`python results/bench/objects_masks_kept.py CHECKPOINT [N] [area|contrast]` (the compressor's ``score``, default area)
from the repo root, once data/study_v2 is built."""
import json, sys
import numpy as np, torch
from PIL import Image
from compactvlm.model.checkpoint import load_pretrained
torch.set_num_threads(1)
n = int(sys.argv[2]) if len(sys.argv) > 2 else 40
score = sys.argv[3] if len(sys.argv) > 3 else "area"
vlm = load_pretrained(sys.argv[1], progress=False)
vlm.eval(); comp = vlm.compressor
scenes = [json.loads(l) for l in open('data/study_v2/test_scenes.jsonl')][:n]
hits = {8: 0, 4: 0}; total = 0; bg_top = []
for sc in scenes:
    img = Image.open('data/study_v2/' + sc['image']).convert('RGB')
    with torch.no_grad():
        feats = vlm.encoder_features(vlm.processor([img]))
        segs = comp.source(feats, comp.max_objects)[0]  # (k, H, W) bool at patch resolution
    h, w = segs.shape[-2:]
    lab = np.array(Image.open('data/study_v2/' + sc['mask']))  # (224, 224) object ids, 0 = background
    area = segs.flatten(1).float().sum(1)
    key = area if score == "area" else comp._contrast(feats.patches(comp.patch_layer)[0], segs.float())
    order = torch.argsort(key, descending=True, stable=True).tolist()  # the budget's ranking
    rank = {s: i for i, s in enumerate(order)}
    ph = lab.shape[0] // h
    for o in sc['objects']:
        cov = torch.as_tensor((lab == o['id']).reshape(h, ph, w, ph).mean(axis=(1, 3)), dtype=torch.float32)  # (H, W)
        if cov.sum() == 0: continue
        best = int((segs.float() * cov).flatten(1).sum(1).argmax())
        total += 1
        for kept in hits: hits[kept] += rank[best] < kept
    bgcov = torch.as_tensor((lab == 0).reshape(h, ph, w, ph).mean(axis=(1, 3)), dtype=torch.float32)
    frac_bg = ((segs.float() * bgcov).flatten(1).sum(1) / area)  # background share of each segment
    bg_top.append(float((frac_bg[order[:8]] > 0.5).float().mean()))
print(f"{n} test images, {total} objects, {len(segs)} segments in the last image; segments ranked by {score}")
for kept, c in hits.items():
    print(f"objects whose best-covering segment is among the first {kept} (budget {1 + 4 + kept}): {c}/{total} = {100 * c / total:.1f}%")
print(f"share of the first 8 segments that are mostly background: {100 * np.mean(bg_top):.1f}%")

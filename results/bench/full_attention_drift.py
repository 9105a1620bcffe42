"""How far a VisToG model's semantic tokens move the patch features the grouping reads (VisToG §3.3, Eq. 5): with
``attention="isolated"`` image tokens cannot attend to the semantic tokens, so the patches equal the plain encoder's;
with ``"full"`` (the §4.5.1 ablation) they can. For N SceneQA test images: the grouping layer's patch tokens with the
model's semantic tokens against the same encoder without them, as cosine similarity and relative L2 change per patch.
`python results/bench/full_attention_drift.py CHECKPOINT [N]` from the repo root, once data/study_v2 is built."""
import json, sys
import numpy as np, torch
from PIL import Image
from compactvlm.model.checkpoint import load_pretrained
torch.set_num_threads(1)
n = int(sys.argv[2]) if len(sys.argv) > 2 else 60
vlm = load_pretrained(sys.argv[1], progress=False)
vlm.eval(); comp = vlm.compressor
if comp.token_layout != "groups":
    sys.exit(f"{sys.argv[1]}: its compressor ({type(comp).__name__}) has no semantic tokens; give a VisToG checkpoint")
layers = vlm.feature_layers()
scenes = [json.loads(l) for l in open('data/study_v2/test_scenes.jsonl')][:n]
cos, rel = [], []
for sc in scenes:
    px = vlm.processor([Image.open('data/study_v2/' + sc['image']).convert('RGB')])
    with torch.no_grad():
        with_sem = vlm.encoder_features(px).patches(layers[0]).float()  # (1, H*W, C)
        plain = vlm.encoder(px, layers=layers).patches(layers[0]).float()  # (1, H*W, C), no extra tokens
    cos.append(torch.nn.functional.cosine_similarity(with_sem, plain, dim=-1).flatten().numpy())
    rel.append(((with_sem - plain).norm(dim=-1) / plain.norm(dim=-1)).flatten().numpy())
cos, rel = np.concatenate(cos), np.concatenate(rel)
print(f"{sys.argv[1]} ({comp.extra_attention} attention, {comp.extra_tokens().shape[-2]} semantic tokens, block "
      f"{layers[0]}): {len(scenes)} test images, {len(cos)} patches")
print(f"  cosine(patch with semantic tokens, without): mean {cos.mean():.4f}, 1st percentile {np.percentile(cos, 1):.4f}, "
      f"min {cos.min():.4f}")
print(f"  relative L2 change: mean {rel.mean():.4f}, 99th percentile {np.percentile(rel, 99):.4f}, max {rel.max():.4f}")

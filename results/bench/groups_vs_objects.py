"""Does a token stand for one object? For N SceneQA test images, the patches each token of a trained model reads
against the scene's instance mask: VisToG's groups (``token_assignment``, the noiseless argmax used at evaluation) or
the segments of Mask-LLaVA's object tokens (its mask source, all ``max_objects`` of them; CLS and pooled tokens aside).
An object's *main group* is the group holding most of its area; the object *has its own token* when more than half
of that group's area is the object (the group is not mostly background or another object). A group is *mostly
background* when more than half its area is background. For comparison the same numbers for fixed square windows of
the patch grid with as many tokens (what AvgPool at that budget pools), where the token count is a square.
`python results/bench/groups_vs_objects.py CHECKPOINT [N]` from the repo root, once data/study_v2 is built."""
import json, sys
import numpy as np, torch
from PIL import Image
from compactvlm.model.checkpoint import load_pretrained
torch.set_num_threads(1)
n = int(sys.argv[2]) if len(sys.argv) > 2 else 60
vlm = load_pretrained(sys.argv[1], progress=False)
vlm.eval(); comp = vlm.compressor
if comp.token_layout not in ("groups", "masks"):
    sys.exit(f"{sys.argv[1]}: its compressor ({type(comp).__name__}) neither groups patches nor has object masks; "
             "give a VisToG or objects checkpoint")
scenes = [json.loads(l) for l in open('data/study_v2/test_scenes.jsonl')][:n]


def assignment(feats):
    """(H*W,) token index of every patch, and the number of tokens (an extra one for patches no mask covers)."""
    if comp.token_layout == "groups":
        return comp.token_assignment(feats)[0].numpy(), feats.num_extra
    segs = comp.source(feats, comp.max_objects)[0].flatten(1)  # (K, H*W) bool
    return np.where(segs.any(0), segs.float().argmax(0), len(segs)).astype(np.int64), len(segs) + 1


def measure(groups, lab, objects, tokens, st):
    """Add one image's numbers to ``st``: groups (H*W,) token index per patch, lab the instance mask."""
    side = int(round(len(groups) ** 0.5)); ph = lab.shape[0] // side
    ids = [0] + [o['id'] for o in objects]
    cov = np.stack([(lab == i).reshape(side, ph, side, ph).mean(axis=(1, 3)).reshape(-1) for i in ids])  # (1+objects, H*W)
    onehot = np.eye(tokens)[groups].T  # (tokens, H*W)
    size = onehot.sum(1)  # patches per group
    mass = onehot @ cov.T  # (tokens, 1+objects): area of each label in each group, in patches
    st['used'].append(int((size > 0).sum())); st['largest'].append(size.max() / len(groups))
    st['bg'].append(float((mass[size > 0, 0] / size[size > 0] > 0.5).mean()))
    mains = []
    for j in range(1, len(ids)):
        if cov[j].sum() < 0.5: continue  # (nearly) hidden by later objects
        g = int(mass[:, j].argmax()); mains.append(g)
        st['conc'].append(mass[g, j] / cov[j].sum())
        st['own'].append(mass[g, j] / size[g] > 0.5)
    st['shared'] += [mains.count(g) > 1 for g in mains]


def report(name, st):
    print(f"{name}: {len(st['used'])} test images, {len(st['own'])} objects")
    print(f"  groups used per image: median {np.median(st['used']):.0f} (range {min(st['used'])}-{max(st['used'])}); "
          f"largest group's share of the patches: median {100 * np.median(st['largest']):.0f}% "
          f"(range {100 * min(st['largest']):.0f}-{100 * max(st['largest']):.0f}%)")
    print(f"  groups (of those used) mostly background: {100 * np.mean(st['bg']):.1f}%; objects with their own token: "
          f"{100 * np.mean(st['own']):.1f}%; an object's area in its main group: {100 * np.mean(st['conc']):.1f}%; "
          f"objects sharing their main group with another: {100 * np.mean(st['shared']):.1f}%")


learned = {k: [] for k in ('used', 'largest', 'bg', 'own', 'conc', 'shared')}
windows = {k: [] for k in learned}
for sc in scenes:
    img = Image.open('data/study_v2/' + sc['image']).convert('RGB')
    with torch.no_grad():
        feats = vlm.encoder_features(vlm.processor([img]))
        groups, tokens = assignment(feats)  # (H*W,)
    lab = np.array(Image.open('data/study_v2/' + sc['mask']))  # (224, 224) object ids, 0 = background
    measure(groups, lab, sc['objects'], tokens, learned)
    side = int(round(len(groups) ** 0.5)); per = int(round(tokens ** 0.5))  # fixed windows: per x per of them
    if per * per == tokens and side % per == 0:
        r = np.arange(side) // (side // per)
        measure((r[:, None] * per + r[None, :]).reshape(-1), lab, sc['objects'], tokens, windows)  # (H*W,)
report(f"{sys.argv[1]} ({type(comp).__name__}, {tokens} groups)", learned)
if windows['used']:
    report(f"for comparison: {tokens} fixed square windows of the patch grid (as AvgPool at {tokens} tokens)", windows)

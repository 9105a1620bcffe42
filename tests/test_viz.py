"""Token maps and their drawings: the PNG marks exactly what reaches the LLM (tiny random models)."""

import numpy as np
import pytest
import torch
from PIL import Image

from compactvlm.cli import main
from compactvlm.commands._common import apply_budget
from compactvlm.model.prompting import IMAGE_TOKEN_ID
from compactvlm.registry import COMPRESSORS, REDUCTIONS
from compactvlm.testing import random_images, tiny_vlm
from compactvlm.viz import token_map, visualize
from compactvlm.viz.draw import KEPT, MERGED, WINDOW, cell_size, legend_lines, render

GRID = (8, 8)  # tiny_vlm: 32 px images, 4 px patches
CELL = cell_size(GRID)


@pytest.fixture(scope="module")
def image_file(tmp_path_factory):
    p = tmp_path_factory.mktemp("img") / "noise.png"
    random_images(1, 64, seed=3)[0].save(p)
    return p


def grey(size=64):
    return Image.new("RGB", (size, size), (128, 128, 128))


def pixels(path_or_img) -> np.ndarray:
    img = Image.open(path_or_img) if not isinstance(path_or_img, Image.Image) else path_or_img
    return np.asarray(img.convert("RGB"), dtype=np.int64)


def cells_with_corner(arr: np.ndarray, colour, cell=CELL, grid=GRID) -> set[int]:
    """Patch indices whose drawn cell has ``colour`` at its top-left pixel (the outline's corner)."""
    return {r * grid[1] + c for r in range(grid[0]) for c in range(grid[1])
            if tuple(arr[r * cell, c * cell]) == tuple(colour)}


def run_viz(image_file, out, *args):
    rc = main(["viz", "--tiny", "--image", str(image_file), "--out", str(out), "--repeats", "0", *args])
    assert rc == 0 and out.exists()
    return pixels(out)


def test_random_drop_compressor_png_marks_exactly_the_kept_indices(image_file, tmp_path):
    arr = run_viz(image_file, tmp_path / "rd.png", "--compressor", "random_drop", "--tokens", "10", "--param", "seed=7")
    comp = tiny_vlm("random_drop", tokens=10, seed=7).compressor
    want = set(comp.keep_indices(1, 64)[0].tolist())
    assert len(want) == 10
    assert cells_with_corner(arr, KEPT) == want
    # dropped cells are darkened: their centre is dimmer than the same cell in the plain image
    plain = pixels(Image.open(image_file).convert("RGB").resize((8 * CELL, 8 * CELL), Image.BICUBIC))
    dropped = sorted(set(range(64)) - want)[0]
    r, c = divmod(dropped, 8)
    y, x = r * CELL + CELL // 2, c * CELL + CELL // 2
    assert arr[y, x].sum() < 0.5 * plain[y, x].sum() + 3


def test_random_reduction_png_marks_exactly_the_kept_indices(image_file, tmp_path):
    arr = run_viz(image_file, tmp_path / "red.png", "--reduce", "random", "--budget", "16")
    m = tiny_vlm()
    want = set(REDUCTIONS.create("random", budget=16, model=m).keep_indices(64).tolist())
    assert cells_with_corner(arr, KEPT) == want and len(want) == 16


@pytest.mark.parametrize("name,budget,kind,k", [("avgpool", 16, "windows", 2), ("avgpool", 9, "kept", None),
                                                 ("random", 8, "kept", None), ("pyramiddrop", 40, "kept", None)])
def test_reductions_are_drawn_from_what_they_declare(name, budget, kind, k):
    m = tiny_vlm()  # an 8 x 8 grid
    m.reduction = REDUCTIONS.create(name, budget=budget, model=m)
    tmap = token_map(m, m.processor(random_images(1, 32)))
    assert tmap.kind == kind and tmap.k == k
    if name == "avgpool" and budget == 9:  # 3 x 3 adaptive pooling of 8 x 8 overlaps: no windows, merged patches
        assert m.reduction.token_windows(m.grid) is None and (tmap.merged >= 0).any()
    if name == "random":
        assert set(tmap.kept.tolist()) == set(m.reduction.keep_indices(64).tolist())
    if name == "pyramiddrop":  # read after the last drop
        assert m.reduction.prune_layers == list(m.reduction.drop_layers) and tmap.llm_kept is not None
        assert any(f"after layer {m.reduction.prune_layers[-1]}" in n for n in tmap.notes)


def full_lines(arr: np.ndarray, colour, columns: bool, size: int) -> list[int]:
    """Columns (or rows) of the image area drawn entirely in ``colour``."""
    hit = (arr[:size, :size] == np.array(colour)).all(axis=-1)  # (H, W)
    return [int(i) for i in np.nonzero(hit.all(axis=0 if columns else 1))[0]]


@pytest.mark.parametrize("name,k,extra", [("stf", 2, ["--E", "2"]), ("avgpool", 4, []), ("concat", 2, [])])
def test_window_lines_sit_at_multiples_of_k_patches(image_file, tmp_path, name, k, extra):
    arr = run_viz(image_file, tmp_path / f"{name}.png", "--compressor", name, "--k", str(k), *extra)
    size = 8 * CELL
    for columns in (True, False):
        lines = full_lines(arr, WINDOW, columns, size)
        want = {j * k * CELL for j in range(8 // k + 1)}
        # every line pixel is within 1 px of a window boundary, and every boundary has a line
        assert lines and all(min(abs(x - b) for b in want) <= 1 for x in lines)
        assert all(any(abs(x - b) <= 1 for x in lines) for b in want)
        # boundaries between patches inside a window carry no window line
        inner = {j * CELL for j in range(1, 8) if j % k}
        assert not any(abs(x - b) <= 1 for x in lines for b in inner)


def test_visionzip_kept_and_merged_match_the_reduction(tmp_path):
    m = tiny_vlm()
    apply_budget(m, 16, "visionzip")
    red = m.reduction
    img = random_images(1, 64, seed=5)[0]
    pix = m.processor([img])
    feats = m.encoder_features(pix)
    idx = feats.info.normalize_layer(-2)
    score, _ = red.scores(feats, idx)
    dom = set(score[0].topk(red.dominant).indices.tolist())
    picture, tmap, _ = visualize(m, img, measure=False)
    assert tmap.kind == "kept" and set(tmap.kept.tolist()) == dom
    assert (tmap.merged >= 0).sum() == 64 - red.dominant  # every other patch joins a contextual token
    assert len(set(tmap.merged[tmap.merged >= 0].tolist())) == red.contextual
    arr = pixels(picture)
    assert cells_with_corner(arr, KEPT) == dom
    assert cells_with_corner(arr, MERGED) == set(np.nonzero(tmap.merged >= 0)[0].tolist())


def test_fastv_map_is_what_the_llm_kept():
    m = tiny_vlm()
    m.reduction = REDUCTIONS.create("fastv", budget=12, model=m, k=1)
    img = random_images(1, 64, seed=1)[0]
    q = "what is in the image ?"
    picture, tmap, _ = visualize(m, img, q, measure=False)
    ids, mask = m.pad_left([m.prompt_ids(q)])
    m.forward(ids, mask, m.processor([img]), logits_to_keep=1)
    img_pos = (ids[0] == IMAGE_TOKEN_ID).nonzero().flatten().tolist()  # contiguous prompt positions
    kept = [p - img_pos[0] for p in m.reduction.last_kept_positions[0].tolist() if p in set(img_pos)]
    assert tmap.kind == "kept" and tmap.num_tokens == 64 and tmap.llm_kept == 12
    assert set(tmap.kept.tolist()) == set(kept)
    assert cells_with_corner(pixels(picture), KEPT) == set(kept)


def test_vistog_groups_follow_token_assignment_and_trained_weights():
    m = tiny_vlm("vistog", tokens=6)
    img = grey()
    pix = m.processor([img])
    with torch.no_grad():  # "trained": move the grouping weights away from their initialisation
        torch.manual_seed(1)
        for p in m.compressor.grouping.parameters():
            p.add_(torch.randn_like(p))
        want = m.compressor.token_assignment(m.encoder_features(pix))[0].numpy()
    tmap = token_map(m, pix)
    assert tmap.kind == "groups" and tmap.num_groups == 6 and np.array_equal(tmap.groups, want)
    # on a uniform image two cells share a colour exactly when they share a group
    arr = pixels(render(tmap, img))
    centre = {i: tuple(arr[(i // 8) * CELL + CELL // 2, (i % 8) * CELL + CELL // 2]) for i in range(64)}
    for i in range(64):
        for j in range(i + 1, 64):
            assert (centre[i] == centre[j]) == (want[i] == want[j])


def test_objects_masks_highlight_the_kept_object_tokens():
    m = tiny_vlm("objects", max_objects=6)
    apply_budget(m, 5 + 3, None)  # CLS + 2x2 pooled + 3 objects
    img = random_images(1, 64, seed=2)[0]
    tmap = token_map(m, m.processor([img]))
    assert tmap.kind == "masks" and tmap.masks_kept == 3
    cov = m.compressor.last_coverage[0].numpy().reshape(len(tmap.masks), -1)  # (K, H*W), score order
    owner = cov.argmax(axis=0)
    lit = set(np.nonzero((owner < 3) & (cov.max(axis=0) > 0))[0].tolist())
    assert 0 < len(lit) < 64
    arr = pixels(render(tmap, grey()))
    dim = {i for i in range(64) if arr[(i // 8) * CELL + CELL // 2, (i % 8) * CELL + CELL // 2].max() < 60}
    assert dim == set(range(64)) - lit


def test_qformer_heat_is_an_attention_distribution():
    m = tiny_vlm("qformer", tokens=5)
    tmap = token_map(m, m.processor(random_images(1, 32)))
    assert tmap.kind == "queries" and tmap.heat.shape == (64,)
    assert (tmap.heat >= 0).all() and abs(float(tmap.heat.sum()) - 1.0) < 1e-4


def test_all_tokens_and_unknown_compressor_fallback():
    from compactvlm.compressors.base import Compressor

    m = tiny_vlm()
    assert token_map(m, m.processor(random_images(1))).kind == "all"

    class Odd(Compressor):  # an unregistered method with a layout viz does not know
        registry_name = "odd"

        def num_output_tokens(self, grid=None):
            return 3

        def forward(self, feats):
            return feats.patches(-2)[:, :3, :1].expand(-1, -1, self.llm_dim)

    m.compressor = Odd(m.encoder.info, m.llm_dim)
    tmap = token_map(m, m.processor(random_images(1)))
    assert tmap.kind == "all" and tmap.num_tokens == 3 and any("not a known" in n for n in tmap.notes)
    assert render(tmap, random_images(1)[0]).size[0] >= 8 * CELL


LAYOUTS = {"windows", "kept", "groups", "masks", "queries", "other"}


@pytest.mark.parametrize("name", COMPRESSORS.names())
def test_every_compressor_declares_a_token_layout_that_viz_draws(name):
    from compactvlm.compressors.base import create_compressor
    from compactvlm.encoders.base import EncoderInfo
    from compactvlm.viz.token_maps import _compressor_kind

    enc = EncoderInfo(hidden_size=8, num_layers=4, patch_size=2, image_size=16, num_heads=2)  # an 8x8 grid
    comp = create_compressor(name, enc=enc, llm_dim=8)
    assert comp.token_layout in LAYOUTS
    kind = _compressor_kind(comp)
    assert kind in {"windows", "kept", "groups", "masks", "queries", "all"}
    if kind == "windows":  # k >= 2 windows that tile the grid
        rows, cols, per_window = comp.token_windows()
        assert 8 // rows >= 2 and rows * cols * per_window == comp.num_output_tokens()
    if comp.token_layout == "windows" and kind == "all":  # 1 x 1 windows: one token per patch
        assert comp.num_output_tokens() == 64


def test_vistog_layout_follows_its_grouping():
    from compactvlm.compressors.base import create_compressor
    from compactvlm.encoders.base import EncoderInfo

    enc = EncoderInfo(hidden_size=8, num_layers=4, patch_size=2, image_size=16, num_heads=2)
    assert create_compressor("vistog", enc=enc, llm_dim=8, tokens=4).token_layout == "groups"
    stage1 = create_compressor("vistog", enc=enc, llm_dim=8, tokens=4, grouping=False)
    assert stage1.token_layout == "other" and stage1.num_output_tokens() == 64


def test_legend_gives_method_tokens_and_ttft(image_file, tmp_path, capsys):
    m = tiny_vlm("stf", k=2, E=1)
    picture, tmap, ttft = visualize(m, random_images(1)[0], repeats=1)
    assert ttft is not None and ttft > 0
    lines = legend_lines(tmap, ttft)
    assert lines[0].startswith("stf(") and "16 vision tokens" in lines[1] and f"TTFT {ttft:.0f} ms" in lines[2]
    assert picture.height > 8 * CELL  # legend below the image area
    out = tmp_path / "t.png"
    assert main(["viz", "--tiny", "--image", str(image_file), "--out", str(out), "--repeats", "1"]) == 0
    assert "TTFT" in capsys.readouterr().out


def test_viz_cli_errors(image_file, tmp_path, capsys):
    assert main(["viz", "--tiny", "--image", str(image_file), "--out", str(tmp_path / "x.jpg")]) == 2
    assert main(["viz", "--tiny", "--image", str(tmp_path / "missing.png"), "--out", str(tmp_path / "x.png")]) == 2
    assert main(["viz", "--tiny", "--image", str(image_file), "--out", str(tmp_path / "x.png"),
                 "--compressor", "stf", "--k", "3"]) == 2
    err = capsys.readouterr().err
    assert ".png" in err and "not found" in err and "divide" in err

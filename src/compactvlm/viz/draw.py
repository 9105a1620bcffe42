"""Draw a ``TokenMap`` on the image the model saw, with a legend (method, tokens, TTFT), using PIL.

Layout: the model's square input (``model.processor.square(image)``: the image padded, resized or cropped to
S x S as the model's ``ImageProcessor`` does; callers pass that square) is scaled so that every patch is a
``cell`` x ``cell`` square; the image area is the top-left ``W*cell`` x ``H*cell`` pixels of
the output, the legend sits below it. Exact colours, so tests (and scripts) can read a drawing back:
- kept patch tokens: a ``cell``-sized square outlined ``OUTLINE`` px wide in ``KEPT`` (the pixel at the
  cell's top-left corner is exactly ``KEPT``); merged (contextual) patches tinted and outlined in ``MERGED``
  (magenta); dropped patches (neither kept nor merged) are darkened to ``DIM`` of their brightness; the
  legend's sentence names only the categories present (``kept_description``);
- windows: lines ``WINDOW_LINE`` px wide in ``WINDOW`` centred on every multiple of k patches (and the
  image border), E dots per window for E tokens;
- groups / masks: a colour per group or object blended over the image, white borders between groups;
  dropped object masks are darkened; Mask-LLaVA's pooled regions are outlined in ``POOL``;
- queries: the cross-attention heat map (matplotlib's ``inferno``) blended over the image;
- all: a thin grid on every patch boundary.
"""

from __future__ import annotations

import textwrap

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .token_maps import TokenMap

KEPT = (57, 255, 20)
MERGED = (255, 0, 200)
WINDOW = (255, 215, 0)
POOL = (0, 230, 255)
GRID = (255, 255, 255)
DIM = 0.3
OUTLINE = 2
WINDOW_LINE = 3
BLEND = 0.5
LEGEND_BG = (250, 250, 250)
LEGEND_FG = (20, 20, 20)

DESCRIPTIONS = {
    "windows": "windows of patches fused into tokens",
    "kept": "green-outlined patches reach the LLM as their own tokens",
    "groups": "one colour per group: each group becomes one token",
    "masks": "coloured object masks reach the LLM as object tokens; dark masks are dropped by the budget",
    "all": "every patch reaches the LLM as its own token",
    "queries": "cross-attention of the learned queries (bright = attended)",
}


def cell_size(grid: tuple[int, int], target: int = 448) -> int:
    """Pixels per patch so that the image is about ``target`` px wide (at least 4)."""
    return max(4, int(round(target / grid[1])))


def palette(n: int) -> list[tuple[int, int, int]]:
    """``n`` distinct colours (matplotlib's tab20, then evenly spaced hues)."""
    import matplotlib

    if n <= 20:
        cmap = matplotlib.colormaps["tab20"]
        cols = [cmap(i) for i in range(n)]
    else:
        cmap = matplotlib.colormaps["hsv"]
        cols = [cmap((i * 0.618034) % 1.0) for i in range(n)]
    return [tuple(int(round(255 * c)) for c in col[:3]) for col in cols]


def _font(size: int):
    return ImageFont.load_default(size=size)


def _cells(arr: np.ndarray, grid: tuple[int, int], cell: int) -> np.ndarray:
    """(H*W, ...) per-patch values -> (H*cell, W*cell, ...) per-pixel values."""
    h, w = grid
    a = arr.reshape(h, w, *arr.shape[1:])
    return np.repeat(np.repeat(a, cell, axis=0), cell, axis=1)


def _borders(labels: np.ndarray, grid: tuple[int, int], cell: int) -> np.ndarray:
    """(H*cell, W*cell) bool: pixels on a boundary between patches of different ``labels`` (H*W,)."""
    lab = _cells(labels, grid, cell)
    edge = np.zeros(lab.shape, dtype=bool)
    edge[:, 1:] |= lab[:, 1:] != lab[:, :-1]
    edge[1:, :] |= lab[1:, :] != lab[:-1, :]
    return edge


def _outline(draw: ImageDraw.ImageDraw, idx: int, grid: tuple[int, int], cell: int, color, width: int = OUTLINE):
    r, c = divmod(int(idx), grid[1])
    x0, y0 = c * cell, r * cell
    draw.rectangle([x0, y0, x0 + cell - 1, y0 + cell - 1], outline=color, width=width)


def overlay(tmap: TokenMap, image: Image.Image, cell: int | None = None) -> Image.Image:
    """The image area only: (W*cell, H*cell) RGB with the token map drawn on it."""
    h, w = tmap.grid
    cell = cell or cell_size(tmap.grid)
    base = np.asarray(image.convert("RGB").resize((w * cell, h * cell), Image.BICUBIC), dtype=np.float32)
    out = base.copy()
    kind = tmap.kind
    if kind == "kept":
        lit = np.zeros(h * w, dtype=bool)
        lit[tmap.kept] = True
        merged = tmap.merged if tmap.merged is not None else np.full(h * w, -1)
        lit_px = _cells(lit | (merged >= 0), tmap.grid, cell)
        out = np.where(lit_px[..., None], base, base * DIM)
        m_px = _cells(merged >= 0, tmap.grid, cell)
        out = np.where(m_px[..., None], (1 - BLEND) * base + BLEND * np.array(MERGED, np.float32), out)
    elif kind == "groups":
        labels = tmap.groups
        cols = np.array(palette(max(int(labels.max()) + 1, 1)), dtype=np.float32)
        out = (1 - BLEND) * base + BLEND * _cells(cols[labels], tmap.grid, cell)
        out[_borders(labels, tmap.grid, cell)] = GRID
    elif kind == "masks":
        cov = tmap.masks.reshape(tmap.masks.shape[0], -1)  # (K, H*W)
        owner = cov.argmax(axis=0) if cov.shape[0] else np.full(h * w, -1)
        owner = np.where(cov.max(axis=0) > 0, owner, -1) if cov.shape[0] else owner
        cols = np.array(palette(max(cov.shape[0], 1)), dtype=np.float32)
        kept = (owner >= 0) & (owner < tmap.masks_kept)
        colour_px = _cells(cols[np.clip(owner, 0, None)], tmap.grid, cell)
        kept_px = _cells(kept, tmap.grid, cell)
        out = np.where(kept_px[..., None], (1 - BLEND) * base + BLEND * colour_px, base * DIM)
        out[_borders(owner, tmap.grid, cell)] = GRID
    elif kind == "queries":
        import matplotlib

        if tmap.heat is not None:
            v = tmap.heat.astype(np.float64)
            v = (v - v.min()) / max(v.max() - v.min(), 1e-12)
            heat = np.array(matplotlib.colormaps["inferno"](v))[:, :3] * 255  # (H*W, 3)
            out = (1 - BLEND) * base + BLEND * _cells(heat.astype(np.float32), tmap.grid, cell)
        else:
            out = (1 - BLEND) * base + BLEND * np.array((120, 60, 160), np.float32)
    img = Image.fromarray(np.clip(out + 0.5, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    W, H = w * cell, h * cell
    if kind == "all":
        for j in range(1, w):
            draw.line([(j * cell, 0), (j * cell, H - 1)], fill=GRID, width=1)
        for i in range(1, h):
            draw.line([(0, i * cell), (W - 1, i * cell)], fill=GRID, width=1)
    if kind == "masks" and tmap.pool_grid:
        g = tmap.pool_grid
        for j in range(1, g):
            x = round(j * W / g)
            draw.line([(x, 0), (x, H - 1)], fill=POOL, width=1)
            y = round(j * H / g)
            draw.line([(0, y), (W - 1, y)], fill=POOL, width=1)
    if tmap.k:  # window lines (windows; FastV over a window compressor)
        _windows(draw, tmap, cell)
    if kind == "kept":
        merged = tmap.merged if tmap.merged is not None else np.full(h * w, -1)
        for i in np.nonzero(merged >= 0)[0]:
            _outline(draw, i, tmap.grid, cell, MERGED, width=1)
        for i in tmap.kept:
            _outline(draw, i, tmap.grid, cell, KEPT)
    return img


def _windows(draw: ImageDraw.ImageDraw, tmap: TokenMap, cell: int) -> None:
    h, w = tmap.grid
    k, e = tmap.k, tmap.E or 1
    W, H = w * cell, h * cell
    half = WINDOW_LINE // 2
    for j in range(0, w // k + 1):
        x = j * k * cell
        draw.rectangle([max(x - half, 0), 0, min(x + half, W - 1), H - 1], fill=WINDOW)
    for i in range(0, h // k + 1):
        y = i * k * cell
        draw.rectangle([0, max(y - half, 0), W - 1, min(y + half, H - 1)], fill=WINDOW)
    if tmap.kind != "windows":
        return
    span = k * cell
    rad = max(2, min(6, span // (3 * e + 2)))
    if span < 4 * rad * e:
        return
    for r in range(h // k):
        for s in range(w // k):
            cx0, cy = s * span + span / 2, r * span + span / 2
            for t in range(e):
                cx = cx0 + (t - (e - 1) / 2) * 3 * rad
                draw.ellipse([cx - rad, cy - rad, cx + rad, cy + rad], fill=(255, 255, 255), outline=(0, 0, 0))


def _swatch_items(tmap: TokenMap) -> list[tuple[tuple[int, int, int], str]]:
    if tmap.kind == "kept":
        n = len(tmap.kept)
        items = [(KEPT, f"kept patch{'es' * (n != 1)} ({n})")]
        if tmap.merged is not None and (tmap.merged >= 0).any():
            n = len(set(tmap.merged[tmap.merged >= 0].tolist()))
            items.append((MERGED, f"merged into {n} contextual token{'s' * (n != 1)}"))
        return items
    if tmap.kind == "windows":
        return [(WINDOW, f"{tmap.k}x{tmap.k} window -> {tmap.E} token{'s' * ((tmap.E or 1) != 1)}")]
    if tmap.kind == "masks":
        items = [(POOL, f"{tmap.pool_grid}x{tmap.pool_grid} pooled regions")] if tmap.pool_grid else []
        return items
    return []


def kept_description(tmap: TokenMap) -> str:
    """The legend sentence of a ``kept`` map, saying what each drawn category is, and only those present:
    green-outlined (kept), magenta (merged into contextual tokens), dark (dropped)."""
    n = tmap.num_patches
    kept = np.zeros(n, dtype=bool)
    kept[tmap.kept] = True
    merged = (tmap.merged >= 0) & ~kept if tmap.merged is not None else np.zeros(n, dtype=bool)
    dropped = int((~kept & ~merged).sum())
    parts = [DESCRIPTIONS["kept"]]
    if merged.any():
        groups = len(set(tmap.merged[merged].tolist()))
        parts.append(f"magenta patches are averaged into {groups} contextual token{'s' * (groups != 1)}")
    parts.append(f"dark patches ({dropped}) are dropped" if dropped else "no patch is dropped")
    return "; ".join(parts)


def legend_lines(tmap: TokenMap, ttft_ms: float | None = None, flops: float | None = None) -> list[str]:
    h, w = tmap.grid
    lines = [tmap.method]
    tok = f"{tmap.num_tokens} vision tokens to the LLM (image: {h}x{w} = {tmap.num_patches} patches)"
    if tmap.llm_kept is not None:
        tok += f", {tmap.llm_kept} after in-LLM pruning"
    lines.append(tok)
    t = f"TTFT {ttft_ms:.0f} ms (encode + compress + LLM prefill)" if ttft_ms is not None else "TTFT n/a"
    if flops is not None:
        t += f" | LLM prefill {flops / 1e9:.2f} GFLOPs"
    lines.append(t)
    desc = DESCRIPTIONS.get(tmap.kind, "")
    if tmap.kind == "kept":
        desc = kept_description(tmap)
    if tmap.kind == "windows":
        desc = f"{tmap.k}x{tmap.k} windows of patches, {tmap.E} token{'s' * ((tmap.E or 1) != 1)} each"
    if tmap.kind == "groups":
        used = len(np.unique(tmap.groups))
        desc += f" ({used} of {tmap.num_groups} groups hold patches)"
    if tmap.kind == "masks" and tmap.masks is not None:
        desc += f" ({tmap.masks_kept} of {tmap.masks.shape[0]} masks kept)"
    lines.append(desc)
    lines.extend(tmap.notes)
    return lines


def render(tmap: TokenMap, image: Image.Image, ttft_ms: float | None = None, flops: float | None = None,
           cell: int | None = None, font_size: int = 14) -> Image.Image:
    """The overlay (top-left, ``W*cell`` x ``H*cell``) with a legend below it."""
    cell = cell or cell_size(tmap.grid)
    top = overlay(tmap, image, cell)
    width = max(top.width, 320)
    font = _font(font_size)
    char_w = max(font.getlength("abcdefghijklmnopqrstuvwxyz") / 26, 1)
    wrap = max(20, int((width - 16) / char_w))
    lines: list[str] = []
    for i, line in enumerate(legend_lines(tmap, ttft_ms, flops)):
        lines.extend(textwrap.wrap(line, wrap) or [""])
    swatches = _swatch_items(tmap)
    lh = font_size + 5
    height = top.height + 8 + lh * len(lines) + (lh if swatches else 0) + 6
    canvas = Image.new("RGB", (width, height), LEGEND_BG)
    canvas.paste(top, (0, 0))
    d = ImageDraw.Draw(canvas)
    y = top.height + 6
    for i, line in enumerate(lines):
        d.text((8, y), line, fill=LEGEND_FG, font=_font(font_size + 1) if i == 0 else font)
        y += lh
    x = 8
    for col, text in swatches:
        d.rectangle([x, y + 2, x + font_size - 2, y + font_size], fill=col, outline=(0, 0, 0))
        x += font_size + 4
        d.text((x, y), text, fill=LEGEND_FG, font=font)
        x += int(font.getlength(text)) + 14
    return canvas

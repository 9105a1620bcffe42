"""See what reaches the LLM: token maps (``token_maps``), drawings (``draw``) and the side-by-side web demo
(``app``, needs gradio).

    from compactvlm.viz import visualize
    picture, tmap, ttft_ms = visualize(model, load_image("photo.png"))
    picture.save("map.png")
"""

from __future__ import annotations

from .draw import render
from .token_maps import TokenMap, token_map


def visualize(model, image, question: str = "What is in the image?", measure: bool = True, repeats: int = 3,
              flops: float | None = None, cell: int | None = None):
    """(drawing, TokenMap, TTFT ms or None) for one PIL image; TTFT is ``efficiency.timing.ttft_ms`` (median
    of ``repeats`` encode + compress + LLM prefill + first-token runs after one warm-up)."""
    pix = model.processor([image])  # (1, 3, S, S)
    tmap = token_map(model, pix, question)
    ttft = None
    if measure:
        from ..efficiency.timing import ttft_ms

        ttft = ttft_ms(model, [image], question, repeats=repeats)
    square = model.processor.square(image)  # drawn on the square the model sees (padded / resized / cropped)
    return render(tmap, square, ttft_ms=ttft, flops=flops, cell=cell), tmap, ttft


__all__ = ["TokenMap", "render", "token_map", "visualize"]

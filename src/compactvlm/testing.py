"""Tiny, random, fully offline models for tests and examples (no downloads, built in well under a second).

    model = tiny_vlm("stf", k=2, E=1)          # CompactVLM with a tiny DINOv2, tiny Llama, word-level tokenizer
"""

from __future__ import annotations

import string

import torch

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_WORDS = (
    "what is in the image picture a an of how many are there colour color red green blue yellow left right above "
    "below yes no answer question using single word or phrase with option letter from given choices directly "
    "describe shirt shoe bag dress coat sandal sneaker boot trouser pullover circle square triangle one two three "
    "four five six seven eight nine zero unanswerable read text written this that is it on to".split()
)


def tiny_tokenizer():
    """A word-level tokenizer with a ChatML template (like SmolLM2's), built in memory."""
    from tokenizers import Tokenizer, models, pre_tokenizers, decoders
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<|im_start|>", "<|im_end|>", "<pad>"]
    vocab = {t: i for i, t in enumerate(specials)}
    for w in list(_WORDS) + list(string.ascii_letters + string.digits + string.punctuation) + ["\n"]:
        vocab.setdefault(w, len(vocab))
    for w in ["user", "assistant", "system", "Ġ"]:
        vocab.setdefault(w, len(vocab))
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split("\n", behavior="isolated"), pre_tokenizers.WhitespaceSplit(),
         pre_tokenizers.Punctuation()]
    )
    tk.decoder = decoders.WordPiece(prefix="##")  # joins with spaces
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", pad_token="<pad>", eos_token="<|im_end|>",
                                  bos_token="<|im_start|>", additional_special_tokens=["<|im_start|>", "<|im_end|>"])
    tok.chat_template = CHATML
    return tok


def tiny_llama(vocab_size: int = 256, hidden: int = 32, layers: int = 2, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                      tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=3)
    cfg._attn_implementation = "sdpa"
    return LlamaForCausalLM(cfg).eval()


def tiny_dinov2(hidden: int = 32, layers: int = 4, patch: int = 4, image: int = 32, seed: int = 0):
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(seed)
    cfg = Dinov2Config(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
                       intermediate_size=hidden * 2, patch_size=patch, image_size=image, layerscale_value=1.0)
    cfg._attn_implementation = "sdpa"
    return Dinov2Model(cfg).eval()


def tiny_clip(hidden: int = 32, layers: int = 4, patch: int = 4, image: int = 32, seed: int = 0):
    from transformers import CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(seed)
    cfg = CLIPVisionConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
                           intermediate_size=hidden * 2, patch_size=patch, image_size=image, projection_dim=hidden)
    cfg._attn_implementation = "sdpa"
    return CLIPVisionModel(cfg).eval()


def tiny_vlm(compressor: str = "mlp2x_gelu", encoder: str = "dinov2", image: int = 32, seed: int = 0,
             system_prompt: str | None = None, llm_layers: int = 2, **params):
    """A CompactVLM from tiny random parts; ``params`` are the compressor's options (``compressor`` may be a
    spec, ``"stf:k=2,E=1"``, or a named variant). ``llm_layers``: FastV's default ``k=2`` needs at least 3."""
    from .spec import parse_options
    from .compressors.base import create_compressor
    from .data.images import ImageProcessor
    from .encoders.hf import HFVisionEncoder
    from .model.init_state import mark_random
    from .model.vlm import CompactVLM

    tok = tiny_tokenizer()
    vis = (tiny_dinov2 if encoder == "dinov2" else tiny_clip)(image=image, seed=seed)
    enc = HFVisionEncoder(vis, image_size=image)
    llm = tiny_llama(vocab_size=len(tok), layers=llm_layers, seed=seed)
    torch.manual_seed(seed)
    name, opts = parse_options(compressor)
    comp = mark_random(create_compressor(name, enc=enc.info, llm_dim=llm.config.hidden_size, **{**opts, **params}))
    model = CompactVLM(enc, comp, llm, tok, ImageProcessor(image), system_prompt=system_prompt)
    model.config_dict = {"encoder": "tiny", "llm": "tiny", "image_size": image, "compressor": comp.registry_name,
                         "compressor_params": dict(comp.params), "system_prompt": system_prompt, "dtype": "float32",
                         "attn_implementation": "sdpa"}
    for p in model.encoder.parameters():
        p.requires_grad_(False)
    return model.eval()


def sharpen(*modules, std: float = 0.3, seed: int = 0):
    """Redraw every 2-D weight of ``modules`` from N(0, std^2), one generator in module order, and return the first
    module: tiny random models then answer differently for different inputs (at the default init every greedy
    answer repeats one token, and comparing answers would prove nothing)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in modules:
            for p in m.parameters():
                if p.dim() == 2:
                    p.copy_(torch.randn(p.shape, generator=g) * std)
    return modules[0]


def random_images(n: int, size: int = 32, seed: int = 0):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(n)]

"""Efficiency measurements behind ``compactvlm bench``.

- ``presets``: model shapes (LLaVA-1.5-7B, the packaged default, folders) and the row syntax
  ``COMPRESSOR[:k=v,...][+REDUCTION[:k=v,...]]``; backbones on ``meta`` / random / real weights;
- ``flops``: FLOPs per sample with ``torch.utils.flop_counter.FlopCounterMode`` on the meta device, split into
  vision encoder / compressor / LLM prefill (and the prefill over the vision tokens alone);
- ``timing``: time to first token (median and spread), decode tokens/s, peak memory, KV-cache bytes.
"""

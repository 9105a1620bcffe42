"""Efficiency measurements behind ``compactvlm bench``.

- ``presets``: model shapes to bench (``model.presets``' named ones, checkpoint and HF folders); backbones on
  ``meta`` / random / real weights, one CompactVLM per row (a ``compactvlm.spec`` spec);
- ``flops``: FLOPs per sample with ``torch.utils.flop_counter.FlopCounterMode`` on the meta device, split into
  vision encoder / compressor / LLM prefill (and the prefill over the vision tokens alone);
- ``timing``: the one timing path (interleaved rounds, ``compare`` / ``compare_ttft`` / ``ttft_ms``): time to
  first token (median and spread), decode tokens/s;
- ``memory``: weight, KV-cache and peak bytes, free device memory.
"""

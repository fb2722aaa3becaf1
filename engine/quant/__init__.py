"""The quant wing: making smaller quants of a model and measuring what they cost.

Owns the quant types ``kvchat quantize`` makes and the planner's size prediction for
each (``targets``), llama.cpp's quantizer run in a child process that can be stopped
without leaving a half-written file (``quantize``, ``child``), an F16 reference written
from a quantized file with the ``gguf`` package's dequantizers (``dequantize``), and
the quality measurement (``scoring``: one model over a text, chunked as llama.cpp's
``llama-perplexity`` chunks it; ``metrics``: KL divergence, perplexity, top-1 agreement;
``quality``: a reference against its candidates, recorded in the table that
``engine/model/quant_costs.py`` keeps for the planner and the loader). The default
text to score is ``texts/lighthouse.txt``.

May import: the contract's ``errors`` and ``config``, and ``engine.model`` (the header
reader, llama.cpp's log, the shapes the planner prices, the costs table). Nothing
imports this wing but the CLI (``kvchat quantize``, ``kvchat quality``) and benchmarks.
"""

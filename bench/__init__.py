"""``kvchat bench``: kvchat's engine against raw llama-cpp-python (and llama.cpp's
llama-bench), each measured in a fresh process, with the memory-bandwidth ceiling.

Sits beside the app, above the engine: it may import ``engine`` and launch the
repository's ``benchmarks/`` scripts; ``engine`` never imports it.
"""

"""The SEED-X pipeline: the model maths, read top to bottom.

``images`` -> ``anyres`` (crops) -> ``vision`` (Qwen-VL ViT) -> ``resampler`` -> ``lvlm`` (Llama + image
queries) with ``tokens``/``tokenizer``/``prompts`` for the text side and ``decoding`` for generation;
``detokenizer`` turns regressed features into pixels; ``components`` builds the modules from a config.
"""

"""The LoRA toolbox: inspect, merge, resize, extract and convert LoRA files.

Pure functions over state dicts, with thin file I/O that streams tensors. Every tool writes
its output atomically and never replaces an input or an existing file unless told to
(`overwrite`). The argument names are those of sd-scripts' networks/*.py scripts.
"""

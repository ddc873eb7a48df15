"""The LoRA network: layers (lora.py), which layers (targets.py), kohya names (kohya_keys.py,
kohya_tensors.py), files (files.py, metadata.py), merging (apply.py) and size (size.py).

Import from the modules themselves; this package imports nothing heavy on purpose.
"""

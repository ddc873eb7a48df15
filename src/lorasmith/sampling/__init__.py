"""Testing a LoRA: sample images while training, generate, compare, pick an epoch.

prompts.py (sd-scripts prompts files), samplers.py (name -> diffusers scheduler), generate.py
(pipelines from a BaseModel, LoRAs merged and restored), pnginfo.py (A1111 `parameters` text),
lora_tags.py (`<lora:name:w>`), runs.py (a run folder's epoch files), grid.py (X/Y grids),
evaluate.py + loss_plot.py (validation loss per epoch, the recommended epoch),
run_settings.py (a run record's base model and settings).
"""

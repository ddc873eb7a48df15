"""Tiny models the tool tests build themselves: a WD14-style ONNX tagger and a random BLIP.

Nothing comes from a model hub. The tagger has the real models' signature (NHWC float32 input
named 'input_1:0', sigmoid output per tag) and answers from the mean of each input channel, so
a test can tell BGR from RGB and white padding from stretching.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np

TAGGER_SIZE = 16  # the test model's input side; the tool must read it from the model

# (name, category, weights on the channel means in the model's BGR order, bias)
# The real selected_tags.csv lists ratings (9) first, then general (0), then characters (4).
TAGGER_TAGS = [
    ("general", 9, (0, 0, 0), 5.0),
    ("sensitive", 9, (0, 0, 0), -5.0),
    ("questionable", 9, (0, 0, 0), -5.0),
    ("explicit", 9, (0, 0, 0), -5.0),
    ("blue_background", 0, (1 / 8, 0, 0), -16.0),  # fires on a blue picture fed as BGR
    ("red_background", 0, (0, 0, 1 / 8), -16.0),  # fires on a red picture fed as BGR
    ("white_background", 0, (1 / 24, 1 / 24, 1 / 24), -16.0),  # fires when most pixels are white
    ("long_hair", 0, (0, 0, 0), 3.0),  # 0.95
    ("^_^", 0, (0, 0, 0), 2.0),  # 0.88, a kaomoji
    ("solo", 0, (0, 0, 0), 0.0),  # 0.50: above the 0.35 default, below 0.6
    ("smithy_(lorasmith)", 4, (0, 0, 0), math.log(0.7 / 0.3)),  # 0.70: below the 0.85 default
    ("hat", 0, (0, 0, 0), math.log(0.2 / 0.8)),  # 0.20: never at the defaults
]


def build_tagger(folder: Path, fixed_batch: int | None = None) -> Path:
    """A folder with model.onnx and selected_tags.csv, as the WD14 tagger repositories hold them."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    folder.mkdir(parents=True, exist_ok=True)
    weights = np.array([tag[2] for tag in TAGGER_TAGS], dtype=np.float32).T  # [3, tags]
    bias = np.array([tag[3] for tag in TAGGER_TAGS], dtype=np.float32)
    batch = fixed_batch if fixed_batch else "N"
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["input_1:0"], ["means"], axes=[1, 2], keepdims=0),
            helper.make_node("MatMul", ["means", "W"], ["logits_raw"]),
            helper.make_node("Add", ["logits_raw", "b"], ["logits"]),
            helper.make_node("Sigmoid", ["logits"], ["predictions_sigmoid"]),
        ],
        "tiny_tagger",
        [helper.make_tensor_value_info("input_1:0", TensorProto.FLOAT, [batch, TAGGER_SIZE, TAGGER_SIZE, 3])],
        [helper.make_tensor_value_info("predictions_sigmoid", TensorProto.FLOAT, [batch, len(TAGGER_TAGS)])],
        initializer=[numpy_helper.from_array(weights, "W"), numpy_helper.from_array(bias, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, folder / "model.onnx")
    lines = ["tag_id,name,category,count"]
    lines += [f"{1000 + i},{name},{category},{100 - i}" for i, (name, category, _, _) in enumerate(TAGGER_TAGS)]
    (folder / "selected_tags.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


BLIP_WORDS = ["a", "girl", "with", "blue", "red", "hair", "hat", "in", "the", "room", "smiling", "picture", "of"]


def build_blip(folder: Path) -> Path:
    """A random BLIP captioner (a few thousand weights) with a BERT tokenizer from a vocab we write."""
    import torch
    from transformers import BertTokenizer, BlipConfig, BlipForConditionalGeneration

    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]"] + BLIP_WORDS
    vocab_file = folder / "vocab.txt"
    vocab_file.write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tokenizer = BertTokenizer(str(vocab_file), bos_token="[DEC]")
    config = BlipConfig(
        vision_config=dict(hidden_size=16, intermediate_size=24, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=16),
        text_config=dict(vocab_size=len(vocab), hidden_size=16, intermediate_size=24, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=32, bos_token_id=5, eos_token_id=3,
                         sep_token_id=3, pad_token_id=0, encoder_hidden_size=16),
        projection_dim=16,
    )
    torch.manual_seed(0)
    model = BlipForConditionalGeneration(config).eval()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    image_config = {"do_resize": True, "size": {"height": 32, "width": 32}, "do_normalize": True,
                    "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "do_rescale": True,
                    "rescale_factor": 1 / 255, "do_convert_rgb": True, "image_processor_type": "BlipImageProcessor",
                    "resample": 3}
    import json

    (folder / "preprocessor_config.json").write_text(json.dumps(image_config), encoding="utf-8")
    return folder


def solid(path: Path, size: tuple[int, int], rgb: tuple[int, int, int], mode: str = "RGB") -> Path:
    """A one-colour picture (RGBA pictures get a transparent half to test flattening)."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    if mode == "RGBA":
        image = Image.new("RGBA", size, (*rgb, 255))
        image.paste((0, 0, 0, 0), (0, 0, size[0], size[1] // 2))
    else:
        image = Image.new(mode, size, rgb)
    image.save(path)
    return path


def file_hashes(folder: Path, suffixes=(".png", ".jpg", ".jpeg", ".webp", ".bmp")) -> dict[str, str]:
    """sha256 of every image under `folder`: the proof that a tool left the user's pictures alone."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.suffix.lower() in suffixes}

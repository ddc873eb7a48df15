"""Is it Flux.1, which variant, which parts, and what architecture, from tensor names and shapes alone.

Single files: the BFL transformer is found by ComfyUI's marker under any prefix (`keys.py`); dev has
`guidance_in`, schnell has not (as sd-scripts and diffusers tell them). ComfyUI's all-in-one files
also carry the AE and the text encoders under other prefixes (`vae.`, `text_encoders.clip_l.` ...):
each part is found by a marker tensor of its own, wherever it sits. The `*_config` functions give
each part's diffusers/transformers config: the shipped config of the real model with every size the
tensors tell taken from them, so real files give exactly the shipped configs and tiny ones their own.
No torch here: `lorasmith doctor` and the planner read headers only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from lorasmith.errors import ModelError
from lorasmith.families.flux.keys import GUIDANCE_KEY, transformer_prefix
from lorasmith.models.detect import read_config_json

# part -> marker tensors (any one), found under any prefix; the prefix is what comes before the marker
PART_MARKERS = {
    "ae": ("encoder.down.0.block.0.conv1.weight", "encoder.down_blocks.0.resnets.0.conv1.weight"),
    "clip_l": ("text_model.embeddings.token_embedding.weight", "embeddings.token_embedding.weight"),
    "t5xxl": ("encoder.block.0.layer.0.SelfAttention.q.weight",),
}
PART_TITLES = {"ae": "the Flux AE", "clip_l": "a CLIP text encoder", "t5xxl": "a T5 encoder"}
DIFFUSERS_TRANSFORMER_MARKER = "transformer_blocks.0.attn.norm_added_k.weight"
_LORA_MARKERS = ("lora_unet_", "lora_te", ".lora_down.", ".lora_up.", ".lora_A.", ".lora_B.", "hada_w1_a")
_SCALED_FP8_MARKERS = ("scaled_fp8", ".scale_weight")  # ComfyUI's "scaled" fp8 files


@dataclass(frozen=True)
class FluxLayout:
    """What a Flux single file holds."""

    prefix: str  # before the BFL transformer names: "" or ComfyUI's "model.diffusion_model."
    variant: str  # "dev" | "schnell"
    float8: bool  # the transformer's weights are stored as float8_e4m3fn
    num_layers: int
    num_single_layers: int
    parts: dict[str, str] = field(default_factory=dict)  # other models in the file: "ae"|"clip_l"|"t5xxl" -> prefix


def flux_layout(shapes: Mapping[str, tuple], dtypes: Mapping[str, object] | None = None,
                name: str = "the file") -> FluxLayout | None:
    """The layout of a Flux.1 single file, or None when `shapes` hold no Flux transformer.

    `dtypes` (name -> torch dtype or safetensors dtype string) lets it tell fp8 files and refuse the
    fp8 kinds sd-scripts refuses (e5m2, fnuz).
    """
    prefix = transformer_prefix(shapes.keys())
    if prefix is None:
        return None
    names = [key[len(prefix):] for key in shapes if key.startswith(prefix)]
    float8 = False
    if dtypes:
        transformer_dtypes = {key: dtypes[key] for key in shapes if key.startswith(prefix) and key in dtypes}
        refuse_float8_kinds(transformer_dtypes, name, "pretrained_model_name_or_path")
        float8 = any("e4m3" in str(d).lower() for d in transformer_dtypes.values())
    parts = {part: p for part in PART_MARKERS if (p := part_prefix(shapes.keys(), part)) is not None}
    return FluxLayout(
        prefix=prefix, variant="dev" if GUIDANCE_KEY in names else "schnell", float8=float8,
        num_layers=_count_blocks(names, "double_blocks."), num_single_layers=_count_blocks(names, "single_blocks."),
        parts=parts,
    )


def flux_details(shapes: Mapping[str, tuple], name: str = "the file") -> dict | None:
    """`models.detect`'s details of a Flux single file (None when it is none): its layout, variant and the
    transformer's config as its shapes give it (the AE and text encoders are often separate files)."""
    layout = flux_layout(shapes, name=name)
    if layout is None:
        return None
    bare = {key[len(layout.prefix):]: shape for key, shape in shapes.items() if key.startswith(layout.prefix)}
    try:
        configs = {"transformer": transformer_config(bare)}
    except (KeyError, IndexError):  # an incomplete file: loading it will say what it lacks
        configs = None
    return {"layout": "single_file", "v_prediction": False, "configs": configs, "flux_variant": layout.variant,
            "flux_layout": layout}


def refuse_float8_kinds(dtypes: Mapping[str, object], name: str, key: str) -> None:
    """One line for fp8 kinds other than e4m3fn (sd-scripts refuses them too: too little precision to train on)."""
    for dtype in dtypes.values():
        text = str(dtype).removeprefix("torch.")
        if "e5m2" in text.lower() or "fnuz" in text.lower():
            raise ModelError(f"{name} stores weights as {text}, which lorasmith does not load; "
                             f"set {key} = its bf16/fp16 or float8_e4m3fn file")


def refuse_scaled_float8(keys, name: str, key: str) -> None:
    if any(k.endswith(_SCALED_FP8_MARKERS) for k in keys):
        raise ModelError(f"{name} is a 'scaled' fp8 file, which lorasmith does not load; "
                         f"set {key} = the plain fp16 or float8_e4m3fn file (without 'scaled')")


def part_prefix(keys, part: str) -> str | None:
    """The prefix of `part` ("ae", "clip_l", "t5xxl") in a file's tensor names, or None when it is absent.

    The prefix keeps CLIP's "text_model." out: below it are CLIPTextModel's own names.
    """
    names = set(keys)
    found = []
    for marker in PART_MARKERS[part]:
        for key in names:
            if key.endswith(marker) and (key == marker or key[-len(marker) - 1] == "."):
                prefix = key[: -len(marker)]
                if marker.startswith("text_model."):
                    prefix += "text_model."
                if _part_complete(names, part, prefix):
                    found.append(prefix)
        if found:
            return sorted(found, key=len)[0]
    return None


def _part_complete(names: set[str], part: str, prefix: str) -> bool:
    if part == "t5xxl":  # the token embedding, under either name (both are the same tensor)
        return prefix + "shared.weight" in names or prefix + "encoder.embed_tokens.weight" in names
    if part == "clip_l":
        return prefix + "encoder.layers.0.self_attn.q_proj.weight" in names
    return prefix + "decoder.conv_in.weight" in names


def describe(shapes: Mapping[str, tuple]) -> str:
    """What a file that is no Flux model seems to be, for error messages."""
    keys = shapes.keys()
    if any(marker in key for key in keys for marker in _LORA_MARKERS):
        return "a LoRA"
    if transformer_prefix(keys) is not None:
        return "a Flux.1 transformer"
    if any(key.endswith(DIFFUSERS_TRANSFORMER_MARKER) for key in keys):
        return "a Flux transformer in diffusers names (give its whole diffusers folder instead)"
    if any("input_blocks.0.0.weight" in key for key in keys):
        return "a Stable Diffusion checkpoint"
    ae = part_prefix(keys, "ae")
    if ae is not None:
        return PART_TITLES["ae"] if shapes[ae + "decoder.conv_in.weight"][1] == 16 else "a Stable Diffusion VAE"
    for part in ("t5xxl", "clip_l"):
        if part_prefix(keys, part) is not None:
            return PART_TITLES[part]
    return "no model lorasmith knows"


def _count_blocks(names, prefix: str) -> int:
    indices = {int(name[len(prefix):].split(".", 1)[0]) for name in names if name.startswith(prefix)}
    return max(indices) + 1 if indices else 0


def _shipped(part: str) -> dict:
    from lorasmith.models.configs import shipped_config

    return {k: v for k, v in shipped_config("flux", part).items() if not k.startswith("_")}


# --- architectures from shapes (BFL / LDM / HF names below the part's prefix) ------------------------


def transformer_config(shapes: Mapping[str, tuple]) -> dict:
    """FluxTransformer2DModel config of a BFL state dict."""
    head_dim = shapes["double_blocks.0.img_attn.norm.query_norm.scale"][0]
    width, in_channels = shapes["img_in.weight"]
    config = dict(
        _shipped("transformer"),
        in_channels=in_channels, attention_head_dim=head_dim, num_attention_heads=width // head_dim,
        joint_attention_dim=shapes["txt_in.weight"][1], pooled_projection_dim=shapes["vector_in.in_layer.weight"][1],
        num_layers=_count_blocks(shapes, "double_blocks."), num_single_layers=_count_blocks(shapes, "single_blocks."),
        guidance_embeds=GUIDANCE_KEY in shapes, axes_dims_rope=rope_axes(head_dim),
    )
    out_channels = shapes["final_layer.linear.weight"][0]
    if out_channels != in_channels:  # e.g. Flux Fill takes 384 channels and gives 64
        config["out_channels"] = out_channels
    return config


def rope_axes(head_dim: int) -> list[int]:
    """RoPE widths per axis (index, row, column): Flux's 16, 56, 56 of 128; in the same 2:7:7 measure,
    kept even, for smaller heads (16 -> 4, 6, 6, the tiny model's)."""
    side = 2 * (head_dim * 7 // 32)
    return [head_dim - 2 * side, side, side]


def ae_config(shapes: Mapping[str, tuple]) -> dict:
    """AutoencoderKL config of an AE state dict in LDM/BFL names (`encoder.down.N...`) or diffusers names."""
    ldm = "encoder.down.0.block.0.conv1.weight" in shapes
    block = "encoder.down.{}.block." if ldm else "encoder.down_blocks.{}.resnets."
    levels = _count_blocks(shapes, "encoder.down." if ldm else "encoder.down_blocks.")
    channels = [shapes[block.format(i) + "0.conv1.weight"][0] for i in range(levels)]
    attention = "encoder.mid.attn_1.q.weight" if ldm else "encoder.mid_block.attentions.0.to_q.weight"
    return dict(
        _shipped("vae"),
        in_channels=shapes["encoder.conv_in.weight"][1], out_channels=shapes["decoder.conv_out.weight"][0],
        latent_channels=shapes["decoder.conv_in.weight"][1], block_out_channels=channels,
        layers_per_block=_count_blocks(shapes, block.format(0)),
        down_block_types=["DownEncoderBlock2D"] * levels, up_block_types=["UpDecoderBlock2D"] * levels,
        # GroupNorm(32) as the real AE; a narrower model (the tiny one) one group per first-level channel
        norm_num_groups=min(32, channels[0]), mid_block_add_attention=attention in shapes,
        use_quant_conv="quant_conv.weight" in shapes, use_post_quant_conv="post_quant_conv.weight" in shapes,
    )


def clip_config(shapes: Mapping[str, tuple]) -> dict:
    """CLIPTextConfig values of CLIP-L tensors (CLIPTextModel's own names, below "text_model.").

    The head count is not in the shapes: CLIP-L's 64-wide heads, unless the file's metadata says otherwise.
    """
    vocab, width = shapes["embeddings.token_embedding.weight"]
    return dict(
        _shipped("text_encoder"),
        vocab_size=vocab, hidden_size=width, num_attention_heads=max(1, width // 64),
        max_position_embeddings=shapes["embeddings.position_embedding.weight"][0],
        intermediate_size=shapes["encoder.layers.0.mlp.fc1.weight"][0],
        num_hidden_layers=_count_blocks(shapes, "encoder.layers."),
    )


def t5_config(shapes: Mapping[str, tuple]) -> dict:
    """T5Config values of T5 encoder tensors (HF T5EncoderModel names)."""
    vocab, width = shapes.get("shared.weight") or shapes["encoder.embed_tokens.weight"]
    buckets, heads = shapes["encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"]
    layers = _count_blocks(shapes, "encoder.block.")
    return dict(
        _shipped("text_encoder_2"),
        vocab_size=vocab, d_model=width, num_heads=heads, relative_attention_num_buckets=buckets,
        d_kv=shapes["encoder.block.0.layer.0.SelfAttention.q.weight"][0] // heads,
        d_ff=shapes["encoder.block.0.layer.1.DenseReluDense.wi_0.weight"][0],
        num_layers=layers, num_decoder_layers=layers,
    )


# --- diffusers folders ---------------------------------------------------------------------------------


def flux_folder(path: str | Path) -> dict | None:
    """Details of a diffusers Flux folder (model_index.json naming a Flux pipeline, or a transformer/ of
    FluxTransformer2DModel), or None when the folder is something else."""
    path = Path(path)
    index = read_config_json(path / "model_index.json") or {}
    transformer = read_config_json(path / "transformer" / "config.json")
    if transformer is not None:
        if transformer.get("_class_name") != "FluxTransformer2DModel":
            return None
    elif not str(index.get("_class_name", "")).startswith("Flux"):
        return None
    configs = {part: config for part in ("transformer", "vae", "text_encoder", "text_encoder_2")
               if (config := read_config_json(path / part / "config.json")) is not None}
    guidance = (transformer or {}).get("guidance_embeds", True)
    return {"layout": "diffusers", "flux_variant": "dev" if guidance else "schnell", "configs": configs}

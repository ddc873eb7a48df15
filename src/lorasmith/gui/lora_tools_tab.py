"""Utilities > LoRA tools: inspect, merge, resize, extract and convert, as `lorasmith lora ...` does.

Every button calls one `lorasmith.api.lora_*` function through `feedback.run_tool`; the fields
carry sd-scripts' argument names so that a user of its scripts finds them again.
"""

from __future__ import annotations

import gradio as gr

from lorasmith.gui.feedback import error_line, run_tool, text_block, toast_if_error

PRECISIONS = ["as the input", "fp16", "bf16", "float"]
DYNAMIC_METHODS = ["none", "sv_ratio", "sv_fro", "sv_cumulative"]


def _shown(outcome) -> str:
    if outcome.result is None:
        return outcome.status
    result = outcome.result
    lines = result.lines() if hasattr(result, "lines") else result.summary_lines()
    return text_block(lines)


def _need(**values) -> str | None:
    for name, value in values.items():
        if not str(value or "").strip():
            return toast_if_error(error_line(f"give {name} first"))
    return None


def _precision(choice: str) -> str | None:
    return None if choice in (None, "", PRECISIONS[0]) else choice


def _rank(value) -> int | None:
    return int(value) if value not in (None, "") and int(value) > 0 else None


def parse_models(text: str) -> tuple[list[str], list[float]]:
    """One LoRA per line, 'path' or 'path:ratio' (ratio 1 when left out) -> (paths, ratios)."""
    from lorasmith.cli.testing_commands import parse_lora_option

    pairs = [parse_lora_option(line.strip()) for line in (text or "").splitlines() if line.strip()]
    return [path for path, _ in pairs], [ratio for _, ratio in pairs]


# ---- handlers -------------------------------------------------------------------------------------------


def inspect(path):
    return _need(**{"the LoRA file": path}) or _shown(run_tool("lora_inspect", path.strip()))


def merge(models_text, sd_model, new_rank, new_conv_rank, precision, save_to, overwrite):
    missing = _need(**{"the LoRA files": models_text, "the file to save to": save_to})
    if missing:
        return missing
    models, ratios = parse_models(models_text)
    return _shown(run_tool("lora_merge", models, ratios, save_to.strip(), sd_model=(sd_model or "").strip() or None,
                           new_rank=_rank(new_rank), new_conv_rank=_rank(new_conv_rank),
                           save_precision=_precision(precision), overwrite=bool(overwrite)))


def resize(model, new_rank, new_conv_rank, method, param, precision, save_to, overwrite):
    missing = _need(**{"the LoRA file": model, "the file to save to": save_to})
    if missing:
        return missing
    dynamic = None if method in (None, "", "none") else method
    return _shown(run_tool("lora_resize", model.strip(), save_to.strip(), int(new_rank),
                           new_conv_rank=_rank(new_conv_rank), dynamic_method=dynamic,
                           dynamic_param=float(param) if dynamic else None, save_precision=_precision(precision),
                           overwrite=bool(overwrite)))


def extract(model_org, model_tuned, dim, conv_dim, clamp_quantile, min_diff, precision, save_to, overwrite):
    missing = _need(**{"the base model": model_org, "the fine-tuned model": model_tuned,
                       "the file to save to": save_to})
    if missing:
        return missing
    return _shown(run_tool("lora_extract", model_org.strip(), model_tuned.strip(), save_to.strip(), int(dim),
                           conv_dim=int(conv_dim or 0),
                           clamp_quantile=float(clamp_quantile) if 0 < float(clamp_quantile or 0) < 1 else None,
                           min_diff=float(min_diff), save_precision=_precision(precision), overwrite=bool(overwrite)))


def convert(path, to, save_to, overwrite):
    missing = _need(**{"the LoRA file": path, "the file to save to": save_to})
    return missing or _shown(run_tool("lora_convert", path.strip(), to, save_to.strip(), overwrite=bool(overwrite)))


# ---- layout -------------------------------------------------------------------------------------------


def build_lora_tools_tab() -> None:
    with gr.Tabs():
        with gr.Tab("Inspect", id="lora-inspect"):
            path = gr.Textbox(label="LoRA file", info="A .safetensors LoRA: kohya, LyCORIS or diffusers keys.")
            button = gr.Button("Inspect", variant="primary", elem_id="lora-inspect-button")
            report = gr.Markdown(elem_id="lora-inspect-report")
            button.click(inspect, inputs=path, outputs=report)
        with gr.Tab("Merge", id="lora-merge"):
            models = gr.Textbox(label="LoRA files (--models, --ratios)", lines=3,
                                info="One per line, path:ratio (e.g. mychar.safetensors:0.7).")
            sd_model = gr.Textbox(label="Checkpoint to merge into (--sd_model)",
                                  info="Leave empty to merge the LoRAs into one LoRA.")
            with gr.Row():
                new_rank = gr.Number(0, precision=0, label="New rank (--new_rank)", info="0: ranks concatenated.")
                new_conv_rank = gr.Number(0, precision=0, label="New conv rank (--new_conv_rank)")
            outputs = _output_fields("merged.safetensors")
            button = gr.Button("Merge", variant="primary")
            report = gr.Markdown(elem_id="lora-merge-report")
            button.click(merge, inputs=[models, sd_model, new_rank, new_conv_rank, *outputs], outputs=report)
        with gr.Tab("Resize", id="lora-resize"):
            model = gr.Textbox(label="LoRA file (--model)")
            with gr.Row():
                rank = gr.Number(8, precision=0, label="New rank (--new_rank)")
                conv_rank = gr.Number(0, precision=0, label="New conv rank (--new_conv_rank)", info="0: new rank.")
                method = gr.Dropdown(DYNAMIC_METHODS, value="none", label="Dynamic method (--dynamic_method)")
                param = gr.Number(0.9, label="Dynamic parameter (--dynamic_param)")
            outputs = _output_fields("resized.safetensors")
            button = gr.Button("Resize", variant="primary")
            report = gr.Markdown(elem_id="lora-resize-report")
            button.click(resize, inputs=[model, rank, conv_rank, method, param, *outputs], outputs=report)
        with gr.Tab("Extract", id="lora-extract"):
            with gr.Row():
                org = gr.Textbox(label="Base model (--model_org)")
                tuned = gr.Textbox(label="Fine-tuned model (--model_tuned)")
            with gr.Row():
                dim = gr.Number(32, precision=0, label="Rank (--dim)")
                conv_dim = gr.Number(0, precision=0, label="Conv rank (--conv_dim)")
                clamp = gr.Number(1.0, label="Clamp quantile (--clamp_quantile)",
                                  info="1: the exact SVD; sd-scripts clips at 0.99.")
                min_diff = gr.Number(0.01, label="Smallest difference (--min_diff)")
            outputs = _output_fields("extracted.safetensors")
            button = gr.Button("Extract", variant="primary")
            report = gr.Markdown(elem_id="lora-extract-report")
            button.click(extract, inputs=[org, tuned, dim, conv_dim, clamp, min_diff, *outputs], outputs=report)
        with gr.Tab("Convert", id="lora-convert"):
            source = gr.Textbox(label="LoRA file")
            to = gr.Radio(["diffusers", "kohya"], value="kohya", label="Convert to (--to)",
                          info="kohya: AUTOMATIC1111 and ComfyUI; diffusers: load_lora_weights' own keys.")
            with gr.Row():
                save_to = gr.Textbox(label="Save to (--save_to)", scale=4)
                overwrite = gr.Checkbox(False, label="Replace an existing file (--overwrite)")
            button = gr.Button("Convert", variant="primary")
            report = gr.Markdown(elem_id="lora-convert-report")
            button.click(convert, inputs=[source, to, save_to, overwrite], outputs=report)


def _output_fields(example: str) -> list:
    with gr.Row():
        precision = gr.Dropdown(PRECISIONS, value=PRECISIONS[0], label="Save precision (--save_precision)")
        save_to = gr.Textbox(label="Save to (--save_to)", info=f"A new file, e.g. {example}.", scale=3)
        overwrite = gr.Checkbox(False, label="Replace an existing file (--overwrite)")
    return [precision, save_to, overwrite]

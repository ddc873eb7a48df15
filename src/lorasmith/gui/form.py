"""One table: each TrainConfig field <-> the widget that edits it, generated from the schema.

`FORM` holds one `FieldWidget` per schema key, in schema order, built from the field's type,
`doc` (the widget's info text), `group` (the tab it lives in) and `choices`. The app builds
the components group by group with `build_group`; values travel between the page and the
library as one list in `FORM` order (`config_to_values` / `values_to_config`), so open,
save, presets, plan and start all share the same two conversions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from lorasmith.config.schema import FIELDS, TrainConfig, field_type, from_dict, is_optional

# The tutorial's names for the settings it talks about; other labels come from the key.
_LABELS = {
    "pretrained_model_name_or_path": "Pretrained model (checkpoint)",
    "v_parameterization": "v-parameterization",
    "train_data_dir": "Image folder",
    "reg_data_dir": "Regularisation folder",
    "output_dir": "Output folder",
    "logging_dir": "Logging folder",
    "output_name": "Model output name",
    "train_batch_size": "Train batch size",
    "max_train_epochs": "Epoch",
    "unet_lr": "Unet learning rate",
    "text_encoder_lr": "Text Encoder learning rate",
    "lr_scheduler": "LR scheduler",
    "lr_warmup_steps": "LR warmup steps",
    "resolution": "Max resolution",
    "network_dim": "Network Rank (Dimension)",
    "network_alpha": "Network Alpha",
    "num_cpu_threads_per_process": "Number of CPU threads per core",
    "sdpa": "SDPA attention",
    # kohya_ss GUI's names where the key alone reads badly
    "vae": "VAE (optional)",
    "flip_aug": "Flip augmentation",
    "network_weights": "LoRA network weights (continue training)",
    "save_last_n_epochs": "Save last N epochs",
    "min_snr_gamma": "Min SNR gamma",
    "multires_noise_iterations": "Multires noise iterations",
    "multires_noise_discount": "Multires noise discount",
    "debiased_estimation_loss": "Debiased estimation loss",
    "save_every_n_steps": "Save every N steps",
    "adaptive_noise_scale": "Adaptive noise scale",
    "lr_scheduler_power": "LR power",
    "lr_scheduler_type": "LR scheduler type (custom)",
    "lr_scheduler_args": "LR scheduler extra arguments",
    "network_module": "Network module",
    "network_args": "Network arguments",
    "ae": "AE (Flux autoencoder file)",
    "clip_l": "CLIP-L file",
    "t5xxl": "T5-XXL file",
    "t5xxl_max_token_length": "T5-XXL max token length",
    "apply_t5_attn_mask": "Apply T5 attention mask",
}

# Fields that hold a path, and whether it names a file or a folder (the path chooser uses it).
PATH_KINDS = {
    "pretrained_model_name_or_path": "file",
    "vae": "file",
    "train_data_dir": "folder",
    "reg_data_dir": "folder",
    "output_dir": "folder",
    "logging_dir": "folder",
    "sample_prompts": "file",
    "resume": "folder",
    "conditioning_data_dir": "folder",
    "validation_data_dir": "folder",
    "network_weights": "file",
    "ae": "file",
    "clip_l": "file",
    "t5xxl": "file",
}

# Where the page shows a key when it differs from the schema's group: kohya_ss's GUI (and so
# the tutorial) has save precision in the Source model section.
_SECTION_OVERRIDES = {"save_precision": "model"}

# The sections of LoRA > Training, in page order.
GROUP_TITLES = {
    "model": "Source model",
    "folders": "Folders",
    "basic": "Basic",
    "advanced": "Advanced",
    "flux": "Flux.1 (model files and recipe)",
    "samples": "Samples and validation",
}


@dataclass(frozen=True)
class FieldWidget:
    """How one configuration key appears on the page."""

    key: str
    kind: str  # "checkbox" | "dropdown" | "integer" | "number" | "optional" | "text" | "list"
    label: str
    info: str
    group: str
    choices: tuple | None = None

    @property
    def elem_id(self) -> str:
        """The HTML id of the widget's block (the browser tests find widgets by it)."""
        return f"cfg-{self.key}"


def _kind(key: str) -> str:
    if FIELDS[key].metadata["choices"]:
        return "dropdown"
    if is_optional(key):  # a text box, because gr.Number cannot be left empty (it shows 0)
        return "optional"
    return {bool: "checkbox", int: "integer", float: "number", list: "list"}.get(field_type(key), "text")


def _label(key: str) -> str:
    return _LABELS.get(key, key.replace("_", " ").capitalize())


def _info(key: str, kind: str) -> str:
    doc = FIELDS[key].metadata["doc"]
    if kind == "list":
        doc += " Separate entries with spaces."
    return f"{doc} [{key}]"


def _widget_for(key: str) -> FieldWidget:
    kind = _kind(key)
    return FieldWidget(key=key, kind=kind, label=_label(key), info=_info(key, kind),
                       group=_SECTION_OVERRIDES.get(key, FIELDS[key].metadata["group"]),
                       choices=FIELDS[key].metadata["choices"])


FORM: tuple[FieldWidget, ...] = tuple(_widget_for(key) for key in FIELDS)
FORM_KEYS: tuple[str, ...] = tuple(w.key for w in FORM)


def widgets_in(group: str) -> list[FieldWidget]:
    return [w for w in FORM if w.group == group]


# ---- values: TrainConfig <-> the list of widget values in FORM order ------------------------


def to_widget_value(widget: FieldWidget, value: Any) -> Any:
    """A config value as its widget shows it (lists become space-separated text, None empty text)."""
    if widget.kind == "list":
        return " ".join(str(item) for item in value)
    if widget.kind == "optional":
        return "" if value is None else repr(value)
    return value


def config_to_values(config: TrainConfig) -> list:
    return [to_widget_value(w, getattr(config, w.key)) for w in FORM]


def values_to_config(values: Sequence) -> TrainConfig:
    """Widget values (FORM order) -> TrainConfig; a wrong value raises ConfigError naming the key."""
    if len(values) != len(FORM):
        raise ValueError(f"expected {len(FORM)} form values, got {len(values)}")
    return from_dict({w.key: _from_widget(w, v) for w, v in zip(FORM, values)})


def _from_widget(widget: FieldWidget, value: Any) -> Any:
    if widget.kind == "text" and value is None:
        return ""
    if widget.kind == "list" and value is None:
        return []
    return value


# ---- components -------------------------------------------------------------------------------


def make_component(widget: FieldWidget, value: Any):
    """The Gradio component for one key, showing `value` (rendered in the current Blocks context)."""
    import gradio as gr

    common = dict(label=widget.label, info=widget.info, elem_id=widget.elem_id)
    shown = to_widget_value(widget, value)
    if widget.kind == "checkbox":
        return gr.Checkbox(value=shown, **common)
    if widget.kind == "dropdown":
        return gr.Dropdown(choices=list(widget.choices), value=shown, **common)
    if widget.kind == "integer":
        return gr.Number(value=shown, precision=0, **common)
    if widget.kind == "number":
        return gr.Number(value=shown, **common)
    if widget.kind == "optional":
        return gr.Textbox(value=shown, lines=1, max_lines=1, placeholder="empty: the default", **common)
    return gr.Textbox(value=shown, lines=1, max_lines=1, **common)


def build_group(group: str, config: TrainConfig, columns: int = 2) -> dict:
    """Render every widget of `group` in rows of `columns`; key -> component."""
    import gradio as gr

    members = widgets_in(group)
    components = {}
    for start in range(0, len(members), columns):
        with gr.Row(equal_height=True):
            for widget in members[start:start + columns]:
                components[widget.key] = make_component(widget, getattr(config, widget.key))
    return components


def in_form_order(components: dict) -> list:
    """The components as one list in FORM order (the inputs/outputs of every form handler)."""
    missing = [key for key in FORM_KEYS if key not in components]
    if missing:
        raise ValueError(f"the page has no widget for: {', '.join(missing)}")
    return [components[key] for key in FORM_KEYS]

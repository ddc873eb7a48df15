"""form.py: one widget per schema key, generated from the schema, and a lossless round trip."""

from __future__ import annotations

import dataclasses

import pytest

from lorasmith.config.schema import FIELDS, TrainConfig
from lorasmith.errors import ConfigError
from lorasmith.gui import form


def test_every_schema_key_has_exactly_one_widget_with_its_doc():
    assert list(form.FORM_KEYS) == list(FIELDS)
    for widget in form.FORM:
        assert FIELDS[widget.key].metadata["doc"] in widget.info
        assert widget.key in widget.info  # the sd-scripts key name is shown too
        assert widget.group in form.GROUP_TITLES


@pytest.mark.parametrize("key, kind", [
    ("network_dim", "integer"), ("learning_rate", "number"), ("unet_lr", "optional"),
    ("gradient_checkpointing", "checkbox"), ("optimizer_type", "dropdown"), ("model_family", "dropdown"),
    ("optimizer_args", "list"), ("train_data_dir", "text"), ("resolution", "text"),
])
def test_widget_kind_follows_the_field_type(key, kind):
    widget = next(w for w in form.FORM if w.key == key)
    assert widget.kind == kind
    if kind == "dropdown":
        assert widget.choices == FIELDS[key].metadata["choices"]


def test_tutorial_labels_are_used():
    labels = {w.key: w.label for w in form.FORM}
    assert labels["network_dim"] == "Network Rank (Dimension)"
    assert labels["max_train_epochs"] == "Epoch"
    assert labels["noise_offset"] == "Noise offset"  # the default: from the key


def test_values_to_config_to_values_round_trip():
    changed = TrainConfig(
        pretrained_model_name_or_path="/models/anylora.safetensors", model_family="sd2",
        v_parameterization=True, train_data_dir="/data/img", network_dim=64, network_alpha=32.0,
        learning_rate=6e-5, unet_lr=6e-5, text_encoder_lr=None, optimizer_args=["weight_decay=0.01", "eps=1e-8"],
        resolution="576,576", lr_scheduler="cosine", gradient_checkpointing=True, training_comment="trigger: mychar",
    )
    for config in (TrainConfig(), changed):
        values = form.config_to_values(config)
        assert len(values) == len(FIELDS)
        assert form.values_to_config(values) == config
        assert form.config_to_values(form.values_to_config(values)) == values


def test_page_values_are_parsed_like_any_other_input():
    values = dict(zip(form.FORM_KEYS, form.config_to_values(TrainConfig())))
    values.update(network_dim=48.0, unet_lr="", text_encoder_lr=" 5e-05 ", optimizer_args="a=1  b=2",
                  logging_dir=None)
    config = form.values_to_config(list(values.values()))
    assert config.network_dim == 48 and isinstance(config.network_dim, int)
    assert config.unet_lr is None and config.text_encoder_lr == 5e-05
    assert config.optimizer_args == ["a=1", "b=2"] and config.logging_dir == ""


def test_an_optional_number_shows_empty_not_zero():
    widget = next(w for w in form.FORM if w.key == "text_encoder_lr")
    assert form.to_widget_value(widget, None) == ""
    assert form.to_widget_value(widget, 5e-05) == "5e-05"


@pytest.mark.parametrize("key, value, message", [
    ("network_dim", None, "network_dim needs a value"),
    ("network_dim", 2.5, "network_dim must be a whole number"),
    ("learning_rate", "fast", "learning_rate must be a number"),
])
def test_a_wrong_value_is_a_config_error_naming_the_key(key, value, message):
    values = dict(zip(form.FORM_KEYS, form.config_to_values(TrainConfig())))
    values[key] = value
    with pytest.raises(ConfigError, match=message):
        form.values_to_config(list(values.values()))


def test_in_form_order_names_missing_widgets():
    with pytest.raises(ValueError, match="no widget for: .*network_dim"):
        form.in_form_order({key: object() for key in form.FORM_KEYS if key != "network_dim"})


def test_every_widget_builds_a_component_with_its_value():
    import gradio as gr

    config = dataclasses.replace(TrainConfig(), optimizer_args=["a=1"])
    with gr.Blocks():
        components = {}
        for group in form.GROUP_TITLES:
            components.update(form.build_group(group, config))
    ordered = form.in_form_order(components)
    assert [c.value for c in ordered] == form.config_to_values(config)
    assert all(c.elem_id == f"cfg-{key}" for key, c in zip(form.FORM_KEYS, ordered))
    assert isinstance(components["network_dim"], gr.Number) and components["network_dim"].precision == 0


def test_the_flux_fields_have_their_own_section_and_the_flux_preset_round_trips():
    from lorasmith.config.presets import load_preset

    flux = [w for w in form.FORM if w.group == "flux"]
    keys = {w.key for w in flux}
    assert {"ae", "clip_l", "t5xxl", "t5xxl_max_token_length", "timestep_sampling", "model_prediction_type",
            "guidance_scale", "discrete_flow_shift", "weighting_scheme", "apply_t5_attn_mask"} <= keys
    kinds = {w.key: w.kind for w in flux}
    assert kinds["timestep_sampling"] == "dropdown" and kinds["t5xxl_max_token_length"] == "optional"
    assert form.PATH_KINDS["ae"] == form.PATH_KINDS["t5xxl"] == "file"
    config = dataclasses.replace(load_preset("flux-24gb"), ae="/models/ae.safetensors", t5xxl_max_token_length=256)
    assert form.values_to_config(form.config_to_values(config)) == config

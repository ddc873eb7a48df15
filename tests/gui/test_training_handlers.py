"""The Training tab's handlers without a browser: config bar, presets, plan, start, run panel."""

from __future__ import annotations

import json
import tomllib

from lorasmith.config.schema import TrainConfig
from lorasmith.gui import form, training
from lorasmith.gui.runner import RunState, TrainingRunner


def _values(**changes) -> list:
    return form.config_to_values(TrainConfig(**changes))


def _as_config(answer: training.FormAnswer) -> TrainConfig:
    assert answer.values is not None, answer.status
    return form.values_to_config(answer.values)


def test_save_then_open_gives_the_same_form(tmp_path):
    values = _values(train_data_dir="/data/img", network_dim=48, network_alpha=24)
    path = tmp_path / "mychar.toml"
    answer = training.save_config(str(path), values)
    assert answer.status == f"Saved {path}." and not answer.failed
    assert tomllib.loads(path.read_text())["network_dim"] == 48
    opened = training.open_config(str(path))
    assert opened.values == values and opened.status.startswith("Opened")


def test_opening_a_kohya_gui_json_shows_its_notes(tmp_path):
    path = tmp_path / "kohya.json"
    path.write_text(json.dumps({"LoRA_type": "Standard", "network_dim": 64, "train_data_dir": "/img",
                                "pretrained_model_name_or_path": "/m.safetensors", "output_dir": "/out",
                                "xformers": "xformers"}))
    answer = training.open_config(str(path))
    assert _as_config(answer).network_dim == 64
    assert "note:" in answer.status


def test_save_notes_a_value_training_would_refuse_but_still_saves(tmp_path):
    path = tmp_path / "draft.json"
    answer = training.save_config(str(path), _values(network_dim=0))
    assert path.is_file() and json.loads(path.read_text())["network_dim"] == 0
    assert "fix before training: network_dim must be at least 1" in answer.status


def test_config_bar_mistakes_are_one_readable_line(tmp_path):
    for answer in (training.open_config(""), training.open_config(str(tmp_path / "none.toml")),
                   training.save_config("", _values()), training.save_config(str(tmp_path / "a.txt"), _values())):
        assert answer.failed and answer.values is None
        assert "\n" not in answer.status and "Traceback" not in answer.status
    assert "does not exist" in training.open_config(str(tmp_path / "none.toml")).status


def test_a_preset_fills_parameters_and_keeps_model_and_folders():
    values = _values(pretrained_model_name_or_path="/m.safetensors", train_data_dir="/img", output_dir="/out",
                     train_batch_size=7)
    config = _as_config(training.apply_preset("12gb", values))
    assert (config.pretrained_model_name_or_path, config.train_data_dir, config.output_dir) == \
        ("/m.safetensors", "/img", "/out")
    assert config.train_batch_size == 4 and config.resolution == "768,768"


def test_the_plan_counts_steps_and_explains_what_is_missing(tmp_path, make_dataset):
    folder = make_dataset({"10_mychar": 3})
    assert "Total steps: 300" in training.plan_text(_values(train_data_dir=str(folder)))
    missing = training.plan_text(_values(train_data_dir=str(tmp_path / "nope")))
    assert missing.startswith("⚠️ train_data_dir") and "does not exist" in missing
    assert "network_dim must be at least 1" in training.plan_text(_values(train_data_dir=str(folder), network_dim=0))
    assert "learning_rate must be a number" in training.plan_text(
        [("fast" if key == "learning_rate" else v) for key, v in zip(form.FORM_KEYS, _values())])


def test_start_refuses_bad_input_without_starting(tmp_path):
    runner = TrainingRunner()
    status = training.start_training(runner, _values(train_data_dir=str(tmp_path / "nope")))
    assert status.startswith("⚠️ train_data_dir")
    assert runner.snapshot().status == "idle"


def test_run_panel_texts(tmp_path):
    kept, removed = tmp_path / "mychar-000002.safetensors", tmp_path / "mychar-000001.safetensors"
    kept.write_bytes(b"lora")  # removed: deleted by save_last_n_epochs, so no longer listed
    state = RunState(status="running", detail="Training.", task="train", done=5, total=20,
                     losses=[(5, 0.125)], validation_losses=[(5, 0.25)],
                     files=[("lora", str(removed)), ("lora", str(kept))])
    html = training.progress_html(state)
    assert 'value="5" max="20"' in html and "step 5 / 20, loss 0.1250" in html
    listed = training.files_markdown(state)
    assert f"lora: `{kept}`" in listed and str(removed) not in listed
    assert list(training.loss_frame(state).itertuples(index=False, name=None)) == [(5, 0.125, "training"),
                                                                                    (5, 0.25, "validation")]
    empty = training.loss_frame(RunState())
    assert [str(t) for t in empty.dtypes][:2] == ["int64", "float64"]  # a number axis from the first poll on


def test_the_form_kept_between_reloads_comes_back_by_key():
    from lorasmith.config.schema import TrainConfig, with_values

    values = form.config_to_values(with_values(TrainConfig(), {"network_dim": 48, "output_name": "mine"}))
    saved = training.remember_form(values)
    assert training.remembered_form(saved) == values
    assert training.remembered_form({}) is None and training.remembered_form(None) is None
    older = {key: value for key, value in saved.items() if key != "network_alpha"}  # a field added since
    restored = training.remembered_form({**older, "gone_key": 1})
    assert restored[form.FORM_KEYS.index("network_alpha")] == TrainConfig().network_alpha
    assert restored[form.FORM_KEYS.index("network_dim")] == 48

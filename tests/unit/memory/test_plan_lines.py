"""Where users see the planner: the plan's lines (breakdown and fits), `plan --vram N`'s advice, the GUI's text."""

from __future__ import annotations

from dataclasses import replace

from lorasmith.memory import estimate_training_memory

from .conftest import tiny_config, tiny_configs


def test_the_plan_lines_carry_the_estimate_and_the_fits(make_dataset):
    from lorasmith.dataset.plan import plan_steps
    from lorasmith.dataset.scan import scan_dataset

    config = replace(tiny_config(), train_data_dir=str(make_dataset({"10_mychar": 2})))
    step_plan = plan_steps(config, scan_dataset(config.train_data_dir), None)
    step_plan.memory = estimate_training_memory(config, "sd1", tiny_configs("sd1"))
    lines = step_plan.lines()
    assert any(line.startswith("GPU memory estimate, largest bucket 128x128, batch 2") for line in lines)
    assert any("= total" in line for line in lines)
    assert "  fits 8 GB: yes, fits 12 GB: yes, fits 16 GB: yes, fits 24 GB: yes" in lines
    assert lines[-1].startswith("total steps:")


def test_plan_vram_lists_the_changes_until_a_flux_run_fits(make_dataset, capsys):
    from lorasmith.cli import main

    root = make_dataset({"10_mychar": 2})
    # --vram after the configuration keys, as users type it
    assert main(["plan", "--preset", "flux-16gb", "--train_data_dir", str(root), "--blocks_to_swap", "0",
                 "--vram", "12"]) == 0
    out = capsys.readouterr().out
    assert "GPU memory estimate" in out and "transformer" in out and "fits 16 GB: no" in out
    assert "does not fit 12 GB" in out
    advice = out[out.index("does not fit 12 GB"):].splitlines()[1:]
    # cached, fp8 and 8-bit already: block swap comes first, with the fewest blocks that fit
    assert advice == [advice[0]] and advice[0].startswith("  1. block swap (blocks_to_swap = 16): ")
    assert advice[0].endswith(", fits 12 GB")


def test_the_gui_text_shows_the_estimate_or_the_reason():
    from lorasmith.config.presets import load_preset
    from lorasmith.gui import form, training

    values = form.config_to_values(replace(load_preset("flux-16gb")))
    text = training.memory_text(values)
    assert text.startswith("**GPU memory: about ") and "fits 16 GB: yes" in text and "8 double" not in text
    bad = form.config_to_values(replace(load_preset("flux-16gb"), network_dim=0))
    assert "network_dim" in training.memory_text(bad)


def test_train_warns_before_loading_when_the_estimate_exceeds_the_free_memory(monkeypatch):
    from lorasmith import api
    from lorasmith.dataset.plan import StepPlan
    from lorasmith.events import Message

    config = tiny_config()
    tiny = estimate_training_memory(config, "sd1", tiny_configs("sd1"))
    monkeypatch.setattr(api, "memory_estimate", lambda config, bucket=None: tiny)
    data_plan = StepPlan([], 0, 0, 0, 1, 1, 1, 0, 0, bucket_counts={(128, 128): 2})
    for free, warned in ((None, False), (tiny.total + 1, False), (tiny.total - 1, True)):  # None: no CUDA GPU
        monkeypatch.setattr(api, "gpu_free_bytes", lambda free=free: free)
        events: list = []
        api._warn_when_too_big(config, data_plan, events.append)
        assert [isinstance(e, Message) and e.level == "warning" and "lorasmith plan --vram" in e.text
                for e in events] == ([True] if warned else [])

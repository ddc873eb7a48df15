"""Generation with tiny models: LoRA weight 0 is the base model, seeds repeat, LoRAs change images."""

import numpy as np
import pytest
import torch

from lorasmith.events import Progress
from lorasmith.sampling.generate import GenerationRequest, generate_images, make_pipeline, sample_during_training
from lorasmith.sampling.pnginfo import read_parameters
from lorasmith.sampling.prompts import SamplePrompt

from .conftest import write_lora


def request(**values) -> GenerationRequest:
    settings = dict(prompt="mychar, 1girl", width=64, height=64, steps=2, seed=7)
    return GenerationRequest(**{**settings, **values})


def pixels(item) -> np.ndarray:
    return np.asarray(item.image)


def weights(base) -> dict:
    return {k: v.clone() for k, v in base.unet.state_dict().items()}


def test_pipeline_shares_the_base_modules(sd1):
    pipe = make_pipeline(sd1, "ddim")
    assert pipe.unet is sd1.unet and pipe.vae is sd1.vae and pipe.text_encoder is sd1.text_encoders[0]
    assert pipe.safety_checker is None and type(pipe.scheduler).__name__ == "DDIMScheduler"


def test_weight_zero_is_bit_equal_to_no_lora(sd1, run_dir):
    before = weights(sd1)
    plain = generate_images(sd1, [request()])[0]
    zero = generate_images(sd1, [request()], [(run_dir / "mychar.safetensors", 0.0)])[0]
    assert np.array_equal(pixels(plain), pixels(zero))
    after = weights(sd1)
    assert all(torch.equal(before[k], after[k]) for k in before)  # merged and restored


def test_same_seed_repeats_and_epochs_differ(sd1, run_dir):
    first = generate_images(sd1, [request()], [(run_dir / "mychar-000001.safetensors", 1.0)])[0]
    again = generate_images(sd1, [request()], [(run_dir / "mychar-000001.safetensors", 1.0)])[0]
    second = generate_images(sd1, [request()], [(run_dir / "mychar-000002.safetensors", 1.0)])[0]
    plain = generate_images(sd1, [request()])[0]
    assert np.array_equal(pixels(first), pixels(again))
    assert not np.array_equal(pixels(first), pixels(second))
    assert not np.array_equal(pixels(first), pixels(plain))


def test_prompt_tag_equals_the_explicit_lora(sd1, run_dir):
    explicit = generate_images(sd1, [request()], [(run_dir / "mychar-000002.safetensors", 0.7)])[0]
    tagged = generate_images(sd1, [request(prompt="mychar, <lora:mychar-000002:0.7>, 1girl")], lora_dirs=[run_dir])[0]
    assert np.array_equal(pixels(explicit), pixels(tagged))
    assert tagged.parameters.prompt == "mychar, 1girl"
    assert list(tagged.parameters.lora_hashes) == ["mychar-000002"]
    # a tag naming a LoRA already given sets its weight instead of adding it twice
    overridden = generate_images(sd1, [request(prompt="mychar, 1girl <lora:mychar-000002:0.7>")],
                                 [(run_dir / "mychar-000002.safetensors", 1.0)])[0]
    assert np.array_equal(pixels(explicit), pixels(overridden))


def test_batch_uses_seed_plus_index_and_saves_pngs_with_parameters(sd1, run_dir, tmp_path):
    events = []
    batch = generate_images(sd1, [request(batch_size=2, negative_prompt="lowres", sampler="dpmpp_2m_karras",
                                          cfg_scale=5.5, clip_skip=2)],
                            [(run_dir / "mychar.safetensors", 0.8)], events=events.append, output_dir=tmp_path)
    single = generate_images(sd1, [request(seed=8, negative_prompt="lowres", sampler="dpmpp_2m_karras",
                                           cfg_scale=5.5, clip_skip=2)], [(run_dir / "mychar.safetensors", 0.8)])[0]
    assert [item.parameters.seed for item in batch] == [7, 8]
    # a batch of two runs other kernels than one image alone: the same image within a pixel level or two
    difference = np.abs(pixels(batch[1]).astype(int) - pixels(single).astype(int))
    assert difference.max() <= 2 and difference.mean() < 0.5
    assert [e.done for e in events if isinstance(e, Progress)] == [1, 2]
    stored = read_parameters(batch[1].path)
    assert stored == batch[1].parameters
    assert (stored.sampler, stored.cfg_scale, stored.seed, stored.width, stored.clip_skip, stored.negative_prompt) == \
        ("DPM++ 2M Karras", 5.5, 8, 64, 2, "lowres")
    assert stored.model == "tiny-sd1" and len(stored.lora_hashes["mychar"]) == 12


def test_no_seed_draws_one_and_records_it(sd1):
    item = generate_images(sd1, [request(seed=None)])[0]
    assert 0 <= item.parameters.seed < 2**32


@pytest.mark.parametrize("family, v_prediction", [("sd2", True), ("sdxl", False)])
def test_other_families_generate_with_their_lora(family, v_prediction, tmp_path):
    from lorasmith.models.tiny import tiny_base_model

    base = tiny_base_model(family, v_prediction=v_prediction)
    lora = write_lora(tmp_path / "x.safetensors", family=family)
    plain = generate_images(base, [request(sampler="euler")])[0]
    with_lora = generate_images(base, [request(sampler="euler")], [(lora, 1.0)])[0]
    zero = generate_images(base, [request(sampler="euler")], [(lora, 0.0)])[0]
    assert plain.image.size == (64, 64)
    assert not np.array_equal(pixels(plain), pixels(with_lora))
    assert np.array_equal(pixels(plain), pixels(zero))
    long_negative = ", ".join(f"tag{i}" for i in range(30))  # two windows beside a one-window prompt
    assert generate_images(base, [request(sampler="euler", negative_prompt=long_negative)])[0].image.size == (64, 64)


def test_training_samples_are_named_by_epoch_and_step(sd1, tmp_path):
    sd1.unet.train()
    prompts = [SamplePrompt("mychar", width=64, height=64, steps=2),
               SamplePrompt("mychar <lora:x:1>", width=64, height=64, steps=2, seed=3, sampler="ddim")]
    scales, events = [], []
    paths = sample_during_training(sd1, prompts, tmp_path, "mychar", epoch=2, step=100, sampler="euler_a",
                                   network_scale_fn=scales.append, events=events.append)
    assert [p.relative_to(tmp_path).as_posix() for p in paths] == \
        ["sample/mychar_e000002_s000100_00.png", "sample/mychar_e000002_s000100_01.png"]
    first, second = (read_parameters(p) for p in paths)
    assert (first.seed, first.sampler) == (0, "Euler a")  # unseeded prompts get their index: comparable epochs
    assert (second.seed, second.sampler, second.prompt) == (3, "DDIM", "mychar")
    assert scales == [1.0] and any("ignored" in getattr(e, "text", "") for e in events)
    assert sd1.unet.training  # the trainer's mode comes back
    sd1.unet.eval()


def test_a_second_run_numbers_on_and_never_replaces_images(sd1, tmp_path):
    first = generate_images(sd1, [request()], output_dir=tmp_path)[0]
    before = first.path.read_bytes()
    second = generate_images(sd1, [request(prompt="another prompt")], output_dir=tmp_path)[0]
    assert (first.path.name, second.path.name) == ("image_00000_7.png", "image_00001_7.png")
    assert first.path.read_bytes() == before


@pytest.mark.parametrize("values, message", [
    (dict(width=100), "width must be a multiple of 8"), (dict(height=0), "height must be a multiple of 8"),
    (dict(steps=0), "steps must be 1 or more"), (dict(batch_size=0), "batch_size must be 1 or more"),
    (dict(sampler="eulr"), "unknown sampler 'eulr'"),
])
def test_impossible_settings_are_one_line_errors(values, message):
    from lorasmith.errors import ToolError

    with pytest.raises(ToolError, match=message):
        request(**values)


def test_making_a_pipeline_prints_no_torchvision_warning():
    import subprocess
    import sys

    # A fresh interpreter: transformers warns once per process, on the first import of the pipelines.
    code = ("from lorasmith.models.tiny import tiny_base_model\n"
            "from lorasmith.sampling.generate import make_pipeline\n"
            "make_pipeline(tiny_base_model('sd1'))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "torchvision" not in done.stderr + done.stdout


def test_prompts_past_75_tokens_are_read_not_cut(sd1):
    tags = ", ".join(f"tag{i}" for i in range(30))  # 110 tokens: tag25 lies past the 75th
    long = generate_images(sd1, [request(prompt=tags)])[0]
    changed_tail = generate_images(sd1, [request(prompt=tags.replace("tag25", "hat"))])[0]
    assert not np.array_equal(pixels(long), pixels(changed_tail))
    # a long negative prompt beside a short prompt: both take the same number of windows
    generate_images(sd1, [request(negative_prompt=tags)])

"""End-to-end training on tiny models: the loss falls, files are right, resume is exact, NaN is caught."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import torch

from lorasmith import api
from lorasmith.config.schema import with_values
from lorasmith.errors import TrainingError
from lorasmith.events import FileWritten, Progress
from lorasmith.models.text import encode_prompts
from lorasmith.models.tiny import tiny_base_model
from lorasmith.network.files import load_lora_file
from lorasmith.train.step import denoising_loss, draw_noise


def fixed_noise_loss(base, config) -> float:
    """Denoising loss on the training images at fixed noise and timesteps (no randomness left)."""
    from lorasmith.dataset.latent_cache import cache_latents
    from lorasmith.dataset.plan import assign_buckets, read_image_sizes

    train, _ = api.load_datasets(config)
    bucket_of = assign_buckets(config, read_image_sizes([train]))
    cache = cache_latents(base.vae, bucket_of, base.family.latent_scale)
    items = train.items()
    latents = torch.stack([cache[item.path].latents for _, item in items])
    generator = torch.Generator().manual_seed(0)
    losses = []
    with torch.no_grad():
        text = encode_prompts(base, [item.caption for _, item in items])
        for _ in range(4):
            draw = draw_noise(latents, 1000, generator)
            losses.append(denoising_loss(base, latents, text.context, draw).item())
    return sum(losses) / len(losses)


def test_training_lowers_the_loss_and_saves_trained_files(tiny_train_config):
    config = tiny_train_config(max_train_epochs=8, learning_rate=1e-2)
    base = tiny_base_model("sd1", seed=0)
    before = fixed_noise_loss(base, config)
    events = []
    result = api.train(config, events=events.append, base=base)
    after = fixed_noise_loss(base, config)  # the LoRA layers are live in `base` now
    assert after < 0.8 * before, (before, after)
    progress = [e for e in events if isinstance(e, Progress) and e.task == "train"]
    assert progress[-1].done == progress[-1].total == result.steps == 32
    assert {"loss", "avg_loss", "lr", "epoch"} <= set(progress[-1].metrics)
    names = [p.rsplit("/", 1)[-1] for p in result.files]
    assert names == [f"mychar-{e:06d}.safetensors" for e in range(1, 8)] + ["mychar.safetensors"]
    assert [e.path for e in events if isinstance(e, FileWritten) and e.kind == "lora"] == result.files
    from lorasmith.config.files import default_file_mode
    assert os.stat(result.final_file).st_mode & 0o777 == default_file_mode()  # not owner-only
    tensors, metadata = load_lora_file(result.final_file)
    ups = [t for k, t in tensors.items() if k.endswith("lora_up.weight")]
    assert ups and all(t.dtype == torch.float16 for t in ups)
    assert sum(float(t.abs().sum()) for t in ups) > 0  # trained, not the zero init
    assert metadata["ss_network_dim"] == "4" and metadata["ss_network_alpha"] == "2.0"
    assert metadata["ss_steps"] == "32" and metadata["ss_epoch"] == "8" and metadata["ss_output_name"] == "mychar"
    from pathlib import Path
    logs = list(Path(config.effective_logging_dir).rglob("events.out.tfevents*"))
    assert logs and logs[0].stat().st_size > 0  # TensorBoard: loss and learning rates


def test_existing_files_are_never_overwritten_without_the_flag(tiny_train_config):
    config = tiny_train_config(max_train_epochs=1)
    api.train(config, base=tiny_base_model("sd1"))
    with pytest.raises(TrainingError, match="already exists.*--overwrite"):
        api.train(config, base=tiny_base_model("sd1"))
    from lorasmith.config.schema import with_values
    api.train(with_values(config, {"overwrite": True}), base=tiny_base_model("sd1"))


def test_clashing_files_and_an_unusable_optimizer_fail_before_the_model_loads(tiny_train_config, tmp_path):
    # The base model is not a checkpoint: reaching the early error proves nothing was loaded.
    not_a_model = tmp_path / "base.safetensors"
    not_a_model.write_bytes(b"not a checkpoint")
    config = tiny_train_config(max_train_epochs=1, pretrained_model_name_or_path=str(not_a_model))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "mychar.safetensors").write_bytes(b"an earlier run")
    with pytest.raises(TrainingError, match="already exists.*--overwrite"):
        api.train(config)
    assert (tmp_path / "out" / "mychar.safetensors").read_bytes() == b"an earlier run"
    if not torch.cuda.is_available():
        from lorasmith.config.schema import with_values
        with pytest.raises(TrainingError, match="AdamW8bit needs a CUDA GPU"):
            api.train(with_values(config, {"optimizer_type": "AdamW8bit", "overwrite": True}))


def test_resumed_run_ends_with_the_same_lora_as_an_uninterrupted_one(tiny_train_config, tmp_path):
    from lorasmith.config.schema import with_values

    full = tiny_train_config(max_train_epochs=2, save_state=True, network_dropout=0.1, shuffle_caption=True,
                             flip_aug=True, caption_tag_dropout_rate=0.2, use_ema=True, ema_decay=0.5)
    straight = api.train(full, base=tiny_base_model("sd1"))
    state = tmp_path / "out" / "mychar-000001-state"
    assert state.is_dir()
    resumed_config = with_values(full, {"resume": str(state), "output_dir": str(tmp_path / "resumed")})
    resumed = api.train(resumed_config, base=tiny_base_model("sd1"))
    assert resumed.steps == straight.steps
    a, _ = load_lora_file(straight.final_file)
    b, _ = load_lora_file(resumed.final_file)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key].float(), b[key].float(), atol=1e-6, rtol=0)
    a, _ = load_lora_file(Path(straight.final_file).with_name("mychar-ema.safetensors"))
    b, _ = load_lora_file(Path(resumed.final_file).with_name("mychar-ema.safetensors"))  # the average resumes too
    for key in a:
        torch.testing.assert_close(a[key].float(), b[key].float(), atol=1e-6, rtol=0)


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_good_file(tiny_train_config):
    config = tiny_train_config(max_train_epochs=3, learning_rate=1e25, optimizer_type="Lion", max_grad_norm=0)
    with pytest.raises(TrainingError, match="NaN or infinite at step"):
        api.train(config, base=tiny_base_model("sd1"))


def test_stop_event_saves_the_current_lora(tiny_train_config):
    import threading

    stop = threading.Event()

    def sink(event):
        if isinstance(event, Progress) and event.task == "train" and event.done == 3:
            stop.set()

    result = api.train(tiny_train_config(max_train_epochs=4), events=sink, stop=stop, base=tiny_base_model("sd1"))
    assert result.interrupted and result.steps == 3
    assert result.final_file.endswith("mychar-step00000003.safetensors")
    tensors, metadata = load_lora_file(result.final_file)
    assert metadata["ss_steps"] == "3"


def test_trained_file_loads_in_diffusers_and_changes_its_output(tiny_train_config, tmp_path):
    """The file of a real run opens with diffusers' load_lora_weights, every module, and changes the UNet."""
    from diffusers import StableDiffusionPipeline

    config = tiny_train_config(max_train_epochs=2, learning_rate=1e-2)
    result = api.train(config, base=tiny_base_model("sd1"))
    fresh = tiny_base_model("sd1")
    pipe = StableDiffusionPipeline(vae=fresh.vae, text_encoder=fresh.text_encoders[0], tokenizer=fresh.tokenizers[0],
                                   unet=fresh.unet, scheduler=fresh.noise_scheduler, safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        context = encode_prompts(fresh, ["mychar, 1girl"]).context
        before = pipe.unet(latents, torch.tensor([500]), context).sample
        pipe.load_lora_weights(str(tmp_path / "out"), weight_name="mychar.safetensors")
        context_lora = encode_prompts(fresh, ["mychar, 1girl"]).context
        after = pipe.unet(latents, torch.tensor([500]), context_lora).sample
    tensors, _ = load_lora_file(result.final_file)
    modules = {key.split(".")[0] for key in tensors}
    wrapped = sum(1 for name, _ in pipe.unet.named_modules() if name.endswith("lora_A")) + sum(
        1 for name, _ in pipe.text_encoder.named_modules() if name.endswith("lora_A"))
    assert wrapped == len(modules)
    assert (after - before).abs().max() > 1e-4


@pytest.mark.parametrize("family,cache_text", [("sd1", False), ("sdxl", True)])
def test_long_captions_train_with_max_token_length(tiny_train_config, family, cache_text):
    config = tiny_train_config(max_train_epochs=1, max_token_length=225, cache_text_encoder_outputs=cache_text,
                               network_train_unet_only=cache_text)
    result = api.train(config, base=tiny_base_model(family))
    tensors, metadata = load_lora_file(result.final_file)
    assert metadata["ss_max_token_length"] == "225" and result.steps == 4
    assert all(torch.isfinite(t).all() for t in tensors.values())


def test_latents_encoded_while_the_model_loads_train_the_same_lora(tiny_train_config, tmp_path):
    from lorasmith.config.schema import with_values
    from lorasmith.models.load import load_base_model
    from lorasmith.models.single_file import save_single_file

    checkpoint = tmp_path / "tiny.safetensors"
    save_single_file(tiny_base_model("sd1", seed=0), str(checkpoint))
    ready = []
    loaded = load_base_model(str(checkpoint), vae_ready=lambda vae, family: ready.append((vae, family.name)))
    assert len(ready) == 1 and ready[0][0] is loaded.vae and ready[0][1] == "sd1"

    config = tiny_train_config(max_train_epochs=1, pretrained_model_name_or_path=str(checkpoint))
    in_background = api.train(config)  # loads the file itself: latents encoded while the UNet loads
    after_loading = api.train(with_values(config, {"output_dir": str(tmp_path / "late")}),
                              base=load_base_model(str(checkpoint)))
    first, _ = load_lora_file(in_background.final_file)
    second, _ = load_lora_file(after_loading.final_file)
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


def test_network_weights_start_from_a_trained_lora(tiny_train_config, tmp_path):
    first = api.train(tiny_train_config(max_train_epochs=1, learning_rate=1e-2), base=tiny_base_model("sd1"))
    trained, _ = load_lora_file(first.final_file)
    # Going on at a learning rate too small to move fp16 weights gives back the file it started from.
    events = []
    again = api.train(tiny_train_config(max_train_epochs=1, learning_rate=1e-12, network_alpha=3,
                                        network_weights=first.final_file, output_dir=str(tmp_path / "again")),
                      events=events.append, base=tiny_base_model("sd1"))
    continued, metadata = load_lora_file(again.final_file)
    assert continued.keys() == trained.keys()
    assert all(torch.equal(continued[key], trained[key]) for key in trained)  # alphas too: the file's, not 3
    assert any("starting from the LoRA weights" in getattr(e, "text", "") for e in events)


def test_network_weights_that_do_not_fit_fail_before_the_model_loads(tiny_train_config, tmp_path):
    from lorasmith.errors import LorasmithError

    lora = api.train(tiny_train_config(max_train_epochs=1), base=tiny_base_model("sd1")).final_file
    not_a_model = tmp_path / "base.safetensors"
    not_a_model.write_bytes(b"not a checkpoint")  # reaching the expected error proves nothing was loaded
    cases = [({"network_dim": 8}, "has rank 4; set network_dim 4"),
             ({"conv_dim": 2}, "no 3x3 convolution layers; set conv_dim 0"),
             ({"network_train_unet_only": True}, "also has text encoder weights; set network_train_unet_only false"),
             ({"network_weights": str(tmp_path / "missing.safetensors")}, "does not exist")]
    for overrides, message in cases:
        values = {"max_train_epochs": 1, "network_weights": lora, "output_dir": str(tmp_path / "x"),
                  "pretrained_model_name_or_path": str(not_a_model), **overrides}
        config = tiny_train_config(**values)
        with pytest.raises(LorasmithError, match=message):
            api.train(config)


def test_a_separate_vae_encodes_the_images_and_is_named_in_the_metadata(tiny_train_config, tmp_path):
    import hashlib

    from safetensors.torch import save_file

    from lorasmith.models.single_file import save_single_file
    from lorasmith.sampling.run_settings import run_settings

    checkpoint = save_single_file(tiny_base_model("sd1"), tmp_path / "base.safetensors")
    vae_file = tmp_path / "other-vae.safetensors"
    save_file({k: v.contiguous() for k, v in tiny_base_model("sd1", seed=5).vae.state_dict().items()}, vae_file)
    own = api.train(tiny_train_config(max_train_epochs=1, pretrained_model_name_or_path=str(checkpoint),
                                      output_dir=str(tmp_path / "own")))
    separate = api.train(tiny_train_config(max_train_epochs=1, pretrained_model_name_or_path=str(checkpoint),
                                           vae=str(vae_file), output_dir=str(tmp_path / "separate")))
    a, own_meta = load_lora_file(own.final_file)
    b, metadata = load_lora_file(separate.final_file)
    assert any(not torch.equal(a[k], b[k]) for k in a)  # other latents, other training, same seed
    assert "ss_vae_name" not in own_meta
    data = vae_file.read_bytes()
    assert metadata["ss_vae_name"] == "other-vae.safetensors"
    assert metadata["ss_new_vae_hash"] == hashlib.sha256(data).hexdigest()
    assert metadata["ss_vae_hash"] == hashlib.sha256(data[0x100000:0x110000]).hexdigest()[:8]
    assert run_settings(tmp_path / "separate").vae == str(vae_file)  # grid and evaluate use it too


def test_flip_aug_trains_on_mirror_images(tiny_train_config, tmp_path):
    plain = api.train(tiny_train_config(max_train_epochs=1), base=tiny_base_model("sd1"))
    flipped = api.train(tiny_train_config(max_train_epochs=1, flip_aug=True, output_dir=str(tmp_path / "flip")),
                        base=tiny_base_model("sd1"))
    a, plain_meta = load_lora_file(plain.final_file)
    b, metadata = load_lora_file(flipped.final_file)
    assert any(not torch.equal(a[k], b[k]) for k in a)  # same seed, other latents for some samples
    assert (plain_meta["ss_flip_aug"], metadata["ss_flip_aug"]) == ("False", "True")


def test_save_last_n_epochs_keeps_only_the_newest_epoch_files(tiny_train_config, tmp_path):
    from lorasmith.events import Message
    from lorasmith.train.run import read_record

    events = []
    result = api.train(tiny_train_config(max_train_epochs=4, save_last_n_epochs=2), events=events.append,
                       base=tiny_base_model("sd1"))
    out = tmp_path / "out"
    assert sorted(p.name for p in out.glob("*.safetensors")) == [
        "mychar-000002.safetensors", "mychar-000003.safetensors", "mychar.safetensors"]
    assert [p.rsplit("/", 1)[-1] for p in result.files] == [
        "mychar-000002.safetensors", "mychar-000003.safetensors", "mychar.safetensors"]
    assert [f["epoch"] for f in read_record(out).files] == [2, 3, 4]
    assert any(isinstance(e, Message) and e.text == "removed mychar-000001.safetensors (save_last_n_epochs 2)"
               for e in events)


def test_noise_and_loss_options_of_sd_scripts_train_and_are_recorded(tiny_train_config):
    config = tiny_train_config(max_train_epochs=1, multires_noise_iterations=6, multires_noise_discount=0.3,
                               debiased_estimation_loss=True, min_timestep=100, max_timestep=900)
    result = api.train(config, base=tiny_base_model("sd1"))
    plain = api.train(tiny_train_config(max_train_epochs=1, output_dir=str(config.output_dir) + "-plain"),
                      base=tiny_base_model("sd1"))
    assert all(math.isfinite(loss) for loss in result.losses) and result.losses != plain.losses
    _, metadata = load_lora_file(result.final_file)
    assert (metadata["ss_multires_noise_iterations"], metadata["ss_multires_noise_discount"]) == ("6", "0.3")
    assert metadata["ss_debiased_estimation"] == "True"


def test_scale_weight_norms_keeps_every_module_under_the_norm_and_rates_are_reported_by_part(tiny_train_config):
    from lorasmith.network.apply import delta_shape, lora_delta
    from lorasmith.network.kohya_tensors import group_lora_tensors

    events = []
    config = tiny_train_config(max_train_epochs=2, learning_rate=1e-2, text_encoder_lr=1e-3, scale_weight_norms=0.05)
    result = api.train(config, events=events.append, base=tiny_base_model("sd1"))
    last = [e for e in events if isinstance(e, Progress) and e.task == "train"][-1].metrics
    assert last["lr"] == 1e-2  # the UNet's rate, not the text encoder's (its group comes first)
    assert last["keys_scaled"] > 0 and last["avg_norm"] <= 0.05 + 1e-6
    tensors, metadata = load_lora_file(result.final_file)
    norms = [float(lora_delta(m, delta_shape(m)).norm()) for m in group_lora_tensors(tensors).values()]
    assert max(norms) <= 0.05 * 1.01  # fp16 rounding of the saved file
    assert metadata["ss_scale_weight_norms"] == "0.05"


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_mixed_precision_path_trains_with_a_half_precision_base(tiny_train_config, tmp_path, monkeypatch, precision):
    # What a GPU run does, played on the CPU: the frozen base held in fp16/bf16, autocast, a
    # gradient scaler for fp16, fp32 LoRA weights; samples drawn from the half-precision model.
    import lorasmith.train.setup as setup
    import lorasmith.train.trainer as trainer
    from lorasmith.models.single_file import save_single_file

    half = {"fp16": torch.float16, "bf16": torch.bfloat16}[precision]

    def held_in_half(mixed_precision, device):
        return torch.float32 if mixed_precision == "no" else half

    monkeypatch.setattr(setup, "weight_dtype", held_in_half)
    monkeypatch.setattr(trainer, "weight_dtype", held_in_half)
    checkpoint = save_single_file(tiny_base_model("sd1"), tmp_path / "base.safetensors")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("mychar, smile --w 64 --h 64 --s 2 --d 1\n")
    config = tiny_train_config(max_train_epochs=2, learning_rate=1e-2, mixed_precision=precision,
                               pretrained_model_name_or_path=str(checkpoint), gradient_checkpointing=True,
                               sample_prompts=str(prompts), sample_every_n_epochs=2)
    result = api.train(config)
    assert len(result.losses) == 8 and all(math.isfinite(loss) for loss in result.losses)
    tensors, metadata = load_lora_file(result.final_file)
    ups = [t for k, t in tensors.items() if k.endswith("lora_up.weight")]
    assert all(torch.isfinite(t).all() for t in ups) and sum(float(t.abs().sum()) for t in ups) > 0
    assert metadata["ss_mixed_precision"] == precision
    assert len(list((tmp_path / "out" / "sample").glob("*.png"))) == 1


@pytest.mark.parametrize("optimizer, scheduler, extra", [
    ("DAdaptAdam", "cosine", {"optimizer_args": '"decouple=True" "weight_decay=0.1" "betas=0.9,0.91"'}),
    ("Adafactor", "adafactor", {"optimizer_args": "scale_parameter=False relative_step=False warmup_init=False",
                                "learning_rate": 1e-3, "unet_lr": 1e-3, "text_encoder_lr": 0}),
    ("Prodigy", "constant", {"additional_parameters": '--lr_scheduler_type "CosineAnnealingLR" '
                                                       '--lr_scheduler_args "T_max=30" --network_train_unet_only'}),
])
def test_a_kohya_gui_preset_trains_with_the_settings_it_names(tiny_train_config, tmp_path, optimizer, scheduler,
                                                               extra):
    """Shaped like the GUI's SDXL presets (tests/unit/config/test_kohya_gui_fidelity.py), on the tiny SDXL."""
    import json

    from lorasmith.config.sources import resolve_config

    base_config = tiny_train_config(max_train_epochs=1)
    preset = {
        "LoRA_type": "Standard", "sdxl": True, "v2": False, "optimizer": optimizer, "lr_scheduler": scheduler,
        "learning_rate": 1.0, "unet_lr": 1.0, "text_encoder_lr": 1.0, "epoch": 2, "max_train_epochs": "",
        "max_train_steps": "", "max_resolution": "64,64", "min_bucket_reso": 64, "max_bucket_reso": 128,
        "bucket_reso_steps": 64, "enable_bucket": True, "train_batch_size": 2, "network_dim": 4, "network_alpha": 2,
        "noise_offset_type": "Original", "noise_offset": 0.0357, "adaptive_noise_scale": 0.00357,
        "min_snr_gamma": 5, "keep_tokens": "1", "shuffle_caption": True, "lr_warmup": 0, "seed": "1337",
        "sample_prompts": "mychar, 1girl --w 64 --h 64 --s 2 --d 1", "sample_every_n_epochs": 2,
        "sample_sampler": "euler_a", "save_every_n_epochs": 1, "save_precision": "fp16", "mixed_precision": "no",
        "train_data_dir": base_config.train_data_dir, "output_dir": base_config.output_dir, "output_name": "mychar",
        "num_cpu_threads_per_process": 1, "xformers": "xformers", "cache_latents": True, **extra,
    }
    path = tmp_path / "preset.json"
    path.write_text(json.dumps(preset))
    resolved = resolve_config(str(path))
    result = api.train(resolved.config, given=resolved.given, base=tiny_base_model("sdxl"))
    assert result.steps == 8 and not result.interrupted  # 2 epochs of 4 batches (4 images x 2 repeats / 2)
    tensors, metadata = load_lora_file(result.final_file)
    assert all(torch.isfinite(t).all() for t in tensors.values())
    assert metadata["ss_optimizer"].endswith(optimizer) or optimizer.lower() in metadata["ss_optimizer"].lower()
    assert metadata["ss_noise_offset"] == "0.0357" and metadata["ss_seed"] == "1337"
    samples = list((Path(result.output_dir) / "sample").glob("*.png"))
    assert len(samples) == 1 and (Path(result.output_dir) / "sample" / "prompt.txt").is_file()
    if "network_train_unet_only" in extra.get("additional_parameters", ""):
        assert not any(key.startswith("lora_te") for key in tensors)


def test_loss_and_noise_recipes_of_sd_scripts_train_and_are_recorded(tiny_train_config):
    config = tiny_train_config(max_train_epochs=1, loss_type="huber", huber_schedule="snr", huber_c=0.1,
                               ip_noise_gamma=0.1, zero_terminal_snr=True, v_parameterization=True)
    result = api.train(config, base=tiny_base_model("sd2", v_prediction=True))
    tensors, metadata = load_lora_file(result.final_file)
    assert all(math.isfinite(loss) for loss in result.losses) and result.steps == 4
    assert (metadata["ss_loss_type"], metadata["ss_huber_schedule"], metadata["ss_huber_c"]) == ("huber", "snr", "0.1")
    assert metadata["ss_ip_noise_gamma"] == "0.1" and metadata["ss_zero_terminal_snr"] == "True"


def test_cached_text_outputs_hold_the_captions_with_their_prefix_and_suffix(tiny_train_config):
    events = []
    config = tiny_train_config(max_train_epochs=1, cache_text_encoder_outputs=True, network_train_unet_only=True,
                               caption_prefix="mychar,", caption_suffix=", masterpiece")
    result = api.train(config, events=events.append, base=tiny_base_model("sd1"))
    assert result.steps == 4 and any("cached text-encoder outputs" in getattr(e, "text", "") for e in events)


def test_step_saves_keep_the_last_n_steps_and_the_end_state_and_first_samples_are_written(tiny_train_config,
                                                                                          tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("mychar --w 64 --h 64 --s 2 --d 1\n")
    config = tiny_train_config(max_train_epochs=2, save_every_n_epochs=0, save_every_n_steps=2,
                               save_last_n_steps=3, save_state_on_train_end=True, sample_prompts=str(prompts),
                               sample_at_first=True)
    result = api.train(config, base=tiny_base_model("sd1"))
    out = Path(result.output_dir)
    # steps 2, 4, 6 were saved (8 is the final file); at step 6 the last 3 steps reach back past step 3, so
    # step 2 went (sd-scripts' rule: it counts steps, not files)
    assert sorted(p.name for p in out.glob("mychar-step*.safetensors")) == ["mychar-step00000004.safetensors",
                                                                             "mychar-step00000006.safetensors"]
    assert (out / "mychar.safetensors").is_file() and (out / "mychar-state" / "trainer_state.json").is_file()
    assert [p.name.split("_")[1] for p in (out / "sample").glob("*.png")] == ["e000000"]  # before the first step


def test_validation_during_training_is_repeatable_stops_early_and_keeps_the_best_epoch(tiny_train_config, tmp_path,
                                                                                       make_dataset):
    """Few images, a learning rate far too high: the held-out loss climbs, the run stops, the best epoch stays."""
    from lorasmith.sampling.evaluate import evaluate_run
    from lorasmith.train.run import read_record

    root = make_dataset({"2_mychar": 8}, root=tmp_path / "few")
    settings = dict(train_data_dir=str(root), validation_split=0.25, validate_every_n_epochs=1,
                    early_stop_patience=2, max_train_epochs=12, learning_rate=0.2, save_precision="float")
    first = api.train(tiny_train_config(**settings), base=tiny_base_model("sd1"))
    record = read_record(first.output_dir)
    curve = {entry["epoch"]: entry["loss"] for entry in record.validation_losses}
    assert first.early_stopped and first.epochs_done < 12, curve
    best = min(curve, key=curve.get)
    assert first.best_epoch == best == record.best_epoch
    assert all(curve[e] > curve[best] for e in curve if e > best) and len([e for e in curve if e > best]) == 2
    best_file = Path(first.output_dir) / "mychar-best.safetensors"
    tensors, metadata = load_lora_file(best_file)
    epoch_tensors, _ = load_lora_file(Path(first.output_dir) / f"mychar-{best:06d}.safetensors")
    assert metadata["ss_best_epoch"] == str(best) and all(torch.equal(tensors[k], epoch_tensors[k]) for k in tensors)

    again = api.train(tiny_train_config(**settings, output_dir=str(tmp_path / "again")), base=tiny_base_model("sd1"))
    assert [e["loss"] for e in read_record(again.output_dir).validation_losses] == \
        [e["loss"] for e in record.validation_losses]  # the same seed: the same validation losses

    # `lorasmith evaluate` scores the saved files on the same batch: the same curve, the same bottom
    report = evaluate_run(first.output_dir, tiny_base_model("sd1"), [Path(p) for p in record.validation_images],
                          resolution=64, seed=0)
    for epoch, loss in report.losses.items():
        if epoch in curve and epoch <= max(curve):
            assert loss == pytest.approx(curve[epoch], rel=1e-3)
    assert min(report.losses, key=report.losses.get) == best


def test_the_ema_file_is_the_moving_average_of_the_weights_over_the_steps(tiny_train_config):
    config = tiny_train_config(max_train_epochs=2, save_every_n_epochs=0, save_every_n_steps=1,
                               save_precision="float", use_ema=True, ema_decay=0.9, ema_start_step=2,
                               ema_update_interval=2)
    result = api.train(config, base=tiny_base_model("sd1"))
    out = Path(result.output_dir)
    weights = {step: load_lora_file(out / f"mychar-step{step:08d}.safetensors")[0] for step in (2, 4, 6)}
    weights[8] = load_lora_file(out / "mychar.safetensors")[0]
    average = {key: value.clone() for key, value in weights[2].items()}  # the first update copies the weights
    for step in (4, 6, 8):
        for key in average:
            if not key.endswith(".alpha"):
                average[key] = 0.9 * average[key] + 0.1 * weights[step][key]
    saved, metadata = load_lora_file(out / "mychar-ema.safetensors")
    assert metadata["ss_ema_decay"] == "0.9" and saved.keys() == average.keys()
    for key in saved:
        torch.testing.assert_close(saved[key], average[key], rtol=1e-5, atol=1e-7)
    assert not torch.equal(saved["lora_unet_mid_block_attentions_0_proj_in.lora_up.weight"],
                           weights[8]["lora_unet_mid_block_attentions_0_proj_in.lora_up.weight"])
    assert (out / "mychar-step00000004-ema.safetensors").is_file()  # one beside every file


def test_masked_loss_trains_with_masks_and_refuses_an_image_without_one(tiny_train_config, tmp_path):
    from PIL import Image

    config = tiny_train_config(max_train_epochs=1, masked_loss=True)
    images = sorted(Path(config.train_data_dir).rglob("*.png"))
    cond = tmp_path / "cond"
    cond.mkdir()
    for image in images[:-1]:
        mask = Image.new("L", (64, 64), 0)
        mask.paste(255, (0, 0, 32, 64))
        mask.save(cond / image.name)
    with pytest.raises(TrainingError, match=r"masked_loss: 1 training image\(s\) have no mask .* img03.png"):
        api.train(with_values(config, {"conditioning_data_dir": str(cond)}), base=tiny_base_model("sd1"))
    Image.new("L", (64, 64), 255).save(cond / images[-1].name)
    result = api.train(with_values(config, {"conditioning_data_dir": str(cond), "output_dir": str(tmp_path / "m")}),
                       base=tiny_base_model("sd1"))
    assert result.steps == 4 and all(math.isfinite(loss) for loss in result.losses)


def test_a_kohya_gui_preset_with_block_weights_trains_them(tiny_train_config, tmp_path):
    import json

    from lorasmith.config.sources import resolve_config

    base_config = tiny_train_config(max_train_epochs=1)
    dims = ",".join(["4"] * 16 + ["2"] + ["4"] * 8)  # block 16: up_blocks_1_attentions_0
    preset = {"LoRA_type": "Standard", "epoch": 1, "max_resolution": "64,64", "min_bucket_reso": 64,
              "max_bucket_reso": 128, "train_batch_size": 2, "network_dim": 4, "network_alpha": 2,
              "optimizer": "AdamW", "learning_rate": 1e-3, "unet_lr": 1e-3, "text_encoder_lr": 5e-4,
              "block_dims": dims, "up_lr_weight": "1,1,1,1,0", "block_lr_zero_threshold": "",
              "train_data_dir": base_config.train_data_dir, "output_dir": base_config.output_dir,
              "output_name": "mychar", "num_cpu_threads_per_process": 1}
    path = tmp_path / "blocks.json"
    path.write_text(json.dumps(preset))
    resolved = resolve_config(str(path))
    assert set(resolved.config.network_args) == {f"block_dims={dims}", "up_lr_weight=1,1,1,1,0"}
    result = api.train(resolved.config, given=resolved.given, base=tiny_base_model("sd1"))
    tensors, metadata = load_lora_file(result.final_file)
    assert tensors["lora_unet_up_blocks_1_attentions_0_proj_in.lora_down.weight"].shape[0] == 2
    assert not any(key.startswith("lora_unet_up_blocks_1_attentions_1") for key in tensors)  # up block 17: weight 0
    assert json.loads(metadata["ss_network_args"])["up_lr_weight"] == "1,1,1,1,0"


def test_a_validation_folder_is_validated_on_without_taking_images_out_of_training(tiny_train_config, tmp_path,
                                                                                   make_dataset):
    from lorasmith.train.run import read_record

    validation = make_dataset({"1_mychar": 2}, root=tmp_path / "validation")
    config = tiny_train_config(max_train_epochs=2, validation_data_dir=str(validation))
    result = api.train(config, base=tiny_base_model("sd1"))
    record = read_record(result.output_dir)
    assert result.steps == 8  # all 4 training images still train
    assert sorted(Path(p).name for p in record.validation_images) == ["img00.png", "img01.png"]
    assert [entry["epoch"] for entry in record.validation_losses] == [1, 2]


def test_weighted_captions_train_through_both_text_paths(tiny_train_config, tmp_path):
    config = tiny_train_config(max_train_epochs=1, weighted_captions=True)
    for caption in Path(config.train_data_dir).rglob("*.txt"):
        caption.write_text("mychar, (red hair:1.5), [smile]", encoding="utf-8")
    weighted = api.train(config, base=tiny_base_model("sd1"))
    cached = api.train(with_values(config, {"output_dir": str(tmp_path / "cached"), "network_train_unet_only": True,
                                            "cache_text_encoder_outputs": True}), base=tiny_base_model("sd1"))
    plain = api.train(with_values(config, {"output_dir": str(tmp_path / "plain"), "weighted_captions": False}),
                      base=tiny_base_model("sd1"))
    a, b, c = (load_lora_file(r.final_file)[0] for r in (weighted, cached, plain))
    key = "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn2_to_k.lora_up.weight"
    assert all(torch.isfinite(t[key]).all() for t in (a, b, c))
    assert not torch.equal(a[key], c[key])  # the weights reach the cross-attention

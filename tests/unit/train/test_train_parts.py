"""The trainer's pure parts: optimizers and schedulers by name, the loss step, captions, the latent cache."""

from __future__ import annotations

import random

import pytest
import torch

from lorasmith.dataset.captions import prepare_caption, tag_frequency
from lorasmith.errors import ConfigError, TrainingError
from lorasmith.train.optim import (
    SchedulerSettings, build_optimizer, build_scheduler, optimizer_entry, parse_optimizer_args, warmup_step_count,
)
from lorasmith.train.step import NoiseRecipe, draw_noise, min_snr_weights


def params():
    return [torch.nn.Parameter(torch.ones(4, 4))]


@pytest.mark.parametrize("name", ["AdamW", "Lion", "Prodigy", "Adafactor", "DAdaptAdam", "dadaptlion",
                                  "DAdaptation", "AdamWScheduleFree", "RAdamScheduleFree", "CAME", "SGDNesterov",
                                  "torch.optim.RMSprop"])
def test_each_optimizer_builds_and_steps(name):
    weights = params()
    lr = 1.0 if optimizer_entry(name).adaptive else 1e-2  # the D-Adaptation family: lr is a multiplier
    optimizer = build_optimizer(name, [{"params": weights, "lr": lr}], lr, [])
    for _ in range(10):  # RAdam-style and D-Adaptation optimizers move little or nothing at first
        weights[0].grad = weights[0].detach() * 2  # the gradient of sum(w^2)
        optimizer.step()
    assert weights[0].detach().sum() < 16  # went downhill


def test_adamw8bit_on_cpu_says_what_to_do():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(TrainingError, match="needs a CUDA GPU .* use AdamW"):
        build_optimizer("AdamW8bit", [{"params": params()}], 1e-4, [])


@pytest.mark.parametrize("name", ["PagedAdamW8bit", "Lion8bit", "SGDNesterov8bit"])
def test_bitsandbytes_optimizers_name_cuda_when_there_is_none(name):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(TrainingError, match=f"optimizer_type {name} needs a CUDA GPU"):
        build_optimizer(name, [{"params": params()}], 1e-4, [])


def test_a_missing_package_or_an_unknown_name_is_one_line_naming_it():
    with pytest.raises(TrainingError, match="optimizer_type no_such_pkg.FancyOpt needs the no-such-pkg package"):
        build_optimizer("no_such_pkg.FancyOpt", [{"params": params()}], 1e-4, [])
    with pytest.raises(ConfigError, match="optimizer_type 'DAdaptAdamm' is not known; use one of"):
        build_optimizer("DAdaptAdamm", [{"params": params()}], 1e-4, [])


def test_adafactor_follows_sd_scripts_relative_step_default_and_its_schedule():
    weights = params()
    relative = build_optimizer("Adafactor", [{"params": weights, "lr": 5e-5}], 1e-4, [])
    assert relative.defaults["relative_step"] and relative.param_groups[0]["lr"] is None
    scheduler = build_scheduler(SchedulerSettings("constant"), relative, 100, "Adafactor", 1e-4)
    assert type(scheduler).__name__ == "AdafactorSchedule"
    fixed = build_optimizer("Adafactor", [{"params": params(), "lr": 5e-5}], 1e-4,
                            ["scale_parameter=False", "relative_step=False", "warmup_init=False"])
    assert fixed.param_groups[0]["lr"] == 5e-5
    named = build_scheduler(SchedulerSettings("adafactor"), fixed, 100, "Adafactor", 1e-4,
                            ("relative_step=False",))  # the presets' pairing: a fixed rate under its schedule
    assert type(named).__name__ == "AdafactorSchedule"
    with pytest.raises(ConfigError, match="lr_scheduler adafactor .* optimizer_type Adafactor"):
        build_scheduler(SchedulerSettings("adafactor"), torch.optim.SGD(params(), lr=1.0), 100, "AdamW")


def test_polynomial_power_custom_scheduler_types_and_schedule_free():
    def rates(scheduler, optimizer, steps=100):
        seen = []
        for _ in range(steps):
            seen.append(scheduler.get_last_lr()[0])
            optimizer.step()
            scheduler.step()
        return seen

    optimizer = torch.optim.SGD(params(), lr=1.0)
    squared = rates(build_scheduler(SchedulerSettings("polynomial", power=2.0), optimizer, 100), optimizer)
    assert squared[50] == pytest.approx((1 - 50 / 100) ** 2, rel=0.05)
    optimizer = torch.optim.SGD(params(), lr=1.0)
    custom = build_scheduler(SchedulerSettings(custom_type="CosineAnnealingLR", args=("T_max=10", "eta_min=0e-0")),
                             optimizer, 100)
    assert type(custom).__name__ == "CosineAnnealingLR" and rates(custom, optimizer, 11)[10] == pytest.approx(0.0)
    with pytest.raises(ConfigError, match="lr_scheduler_type 'NoSuchLR' is not a scheduler class"):
        build_scheduler(SchedulerSettings(custom_type="NoSuchLR"), optimizer, 100)
    free = build_optimizer("AdamWScheduleFree", [{"params": params()}], 1e-3, [])
    flat = build_scheduler(SchedulerSettings("cosine"), free, 100, "AdamWScheduleFree")
    assert set(rates(flat, free, 20)) == {1e-3}  # schedule-free: the schedule is its own


def test_optimizer_args_are_parsed_and_checked():
    assert parse_optimizer_args(["weight_decay=0.01", "betas=0.9,0.99"]) == {"weight_decay": 0.01, "betas": (0.9, 0.99)}
    optimizer = build_optimizer("AdamW", [{"params": params()}], 1e-4, ["weight_decay=0.05"])
    assert optimizer.param_groups[0]["weight_decay"] == 0.05
    with pytest.raises(ConfigError, match="name=value"):
        parse_optimizer_args(["0.01"])
    with pytest.raises(ConfigError, match="optimizer_args do not fit AdamW"):
        build_optimizer("AdamW", [{"params": params()}], 1e-4, ["no_such_option=1"])


@pytest.mark.parametrize("name,at_10,at_end", [
    ("constant", 1.0, 1.0), ("constant_with_warmup", 1.0, 1.0), ("linear", 1.0, 0.0),
    ("cosine", 1.0, 0.0), ("cosine_with_restarts", 1.0, 0.0),
])
def test_schedulers_warm_up_and_decay(name, at_10, at_end):
    optimizer = torch.optim.SGD(params(), lr=1.0)
    scheduler = build_scheduler(SchedulerSettings(name, warmup_steps=10, num_cycles=2), optimizer, total_steps=100)
    lrs = []
    for _ in range(100):
        lrs.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    if name != "constant":
        assert lrs[0] == 0.0 and lrs[5] == pytest.approx(0.5)
    assert lrs[10] == pytest.approx(at_10)
    assert lrs[-1] == pytest.approx(at_end, abs=0.02)
    if name == "cosine_with_restarts":
        assert max(lrs[60:]) > 0.9  # the second cycle starts high again


def test_warmup_below_one_is_a_fraction_of_the_total_steps():
    assert warmup_step_count(0.1, 200) == 20 and warmup_step_count(50, 200) == 50 and warmup_step_count(0, 200) == 0
    optimizer = torch.optim.SGD(params(), lr=1.0)
    scheduler = build_scheduler(SchedulerSettings("constant_with_warmup", warmup_steps=0.25), optimizer, total_steps=40)
    lrs = []
    for _ in range(12):
        lrs.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    assert lrs[5] == pytest.approx(0.5) and lrs[10] == 1.0  # 10 warm-up steps


def test_noise_is_replayable_and_offset_noise_shifts_channels():
    latents = torch.zeros(2, 4, 8, 8)
    a = draw_noise(latents, 1000, torch.Generator().manual_seed(3))
    b = draw_noise(latents, 1000, torch.Generator().manual_seed(3))
    assert torch.equal(a.noise, b.noise) and torch.equal(a.timesteps, b.timesteps)
    plain = draw_noise(latents, 1000, torch.Generator().manual_seed(3), NoiseRecipe(noise_offset=0.0)).noise
    offset = draw_noise(latents, 1000, torch.Generator().manual_seed(3), NoiseRecipe(noise_offset=0.5)).noise
    shift = (offset - plain).reshape(2, 4, -1)
    assert torch.allclose(shift, shift[..., :1].expand_as(shift))  # one constant per channel
    assert shift.abs().max() > 0


def test_pyramid_noise_adds_coarse_noise_and_timesteps_keep_to_their_range():
    latents = torch.zeros(8, 4, 32, 32)
    plain = draw_noise(latents, 1000, torch.Generator().manual_seed(3)).noise
    recipe = NoiseRecipe(multires_noise_iterations=6, multires_noise_discount=0.3)
    pyramid = draw_noise(latents, 1000, torch.Generator().manual_seed(3), recipe)
    again = draw_noise(latents, 1000, torch.Generator().manual_seed(3), recipe)
    assert torch.equal(pyramid.noise, again.noise)  # replayable
    assert pyramid.noise.std().item() == pytest.approx(1.0, abs=1e-4)

    def neighbour_correlation(noise):  # coarse noise makes neighbouring pixels alike
        return torch.corrcoef(torch.stack([noise[..., :-1].flatten(), noise[..., 1:].flatten()]))[0, 1].item()

    strong = draw_noise(latents, 1000, torch.Generator().manual_seed(3),
                        NoiseRecipe(multires_noise_iterations=6, multires_noise_discount=0.8)).noise
    assert abs(neighbour_correlation(plain)) < 0.01 < neighbour_correlation(pyramid.noise)
    assert neighbour_correlation(strong) > 0.2  # a higher discount weighs the coarse scales more
    limited = draw_noise(torch.zeros(256, 4, 2, 2), 1000, torch.Generator().manual_seed(1),
                         NoiseRecipe(min_timestep=200, max_timestep=400)).timesteps
    assert 200 <= limited.min() and limited.max() < 400


def test_debiased_estimation_weights_fall_with_snr():
    from diffusers import DDPMScheduler

    from lorasmith.models.tiny import noise_scheduler_config
    from lorasmith.train.step import debiased_weights, snr

    scheduler = DDPMScheduler(**noise_scheduler_config(False))
    timesteps = torch.tensor([0, 100, 500, 999])
    weights = debiased_weights(scheduler, timesteps, v_prediction=False)
    ratio = torch.clamp(snr(scheduler, timesteps), max=1000)
    torch.testing.assert_close(weights, 1 / ratio.sqrt())
    assert torch.all(weights[1:] > weights[:-1])  # noisier steps weigh more
    assert torch.all(debiased_weights(scheduler, timesteps, v_prediction=True) < weights)


def test_min_snr_weights_clip_high_snr_only():
    from lorasmith.models.tiny import noise_scheduler_config
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler(**noise_scheduler_config(False))
    timesteps = torch.tensor([0, 500, 999])
    weights = min_snr_weights(scheduler, timesteps, gamma=5.0, v_prediction=False)
    assert weights[0] < 0.05 and weights[2] == pytest.approx(1.0)
    v_weights = min_snr_weights(scheduler, timesteps, gamma=5.0, v_prediction=True)
    assert torch.all(v_weights < weights + 1e-6)


def test_caption_shuffle_keeps_the_first_tokens_and_dropout_empties():
    caption = "mychar, 1girl, red hair, smile, outdoors, hat"
    rng = random.Random(0)
    shuffled = {prepare_caption(caption, rng, shuffle=True, keep_tokens=2) for _ in range(20)}
    assert len(shuffled) > 1
    assert all(s.startswith("mychar, 1girl, ") and sorted(s.split(", ")) == sorted(caption.split(", "))
               for s in shuffled)
    assert prepare_caption(caption, random.Random(0), dropout_rate=1.0) == ""
    assert tag_frequency({"10_a": [caption, "mychar, smile"]})["10_a"]["smile"] == 2


def test_caption_tag_dropout_leaves_out_tags_but_never_the_kept_ones():
    from lorasmith.config.schema import TrainConfig

    caption = "mychar, 1girl, red hair, smile, outdoors, hat"
    assert prepare_caption(caption, random.Random(0), keep_tokens=1, tag_dropout_rate=1.0) == "mychar"
    rng = random.Random(0)
    lengths = [len(prepare_caption(caption, rng, keep_tokens=1, tag_dropout_rate=0.5).split(", ")) for _ in range(200)]
    assert 3.0 < sum(lengths) / len(lengths) < 4.0  # 1 kept + about half of the other 5
    for _ in range(20):
        tags = prepare_caption(caption, rng, shuffle=True, keep_tokens=2, tag_dropout_rate=0.3).split(", ")
        assert tags[:2] == ["mychar", "1girl"] and set(tags) <= set(caption.split(", "))
    assert not TrainConfig().captions_vary and TrainConfig(caption_tag_dropout_rate=0.1).captions_vary


def test_disk_latent_cache_is_reused_until_the_image_changes(tmp_path):
    from tests.conftest import write_image
    from lorasmith.dataset import latent_cache
    from lorasmith.models.tiny import tiny_base_model

    vae = tiny_base_model("sd1").vae
    image = write_image(tmp_path / "10_a" / "a.png", (64, 64), seed=1)
    buckets = {image: (64, 64)}
    first = latent_cache.cache_latents(vae, buckets, 0.18215, to_disk=True)
    entry = latent_cache.cache_path(image, (64, 64))
    assert entry.is_file() and entry.parent.name.startswith(".")
    encoded = []
    original = latent_cache.encode_latents
    latent_cache.encode_latents = lambda *a, **k: encoded.append(1) or original(*a, **k)
    try:
        again = latent_cache.cache_latents(vae, buckets, 0.18215, to_disk=True)
        assert encoded == [] and torch.equal(again[image].latents, first[image].latents)
        write_image(image, (64, 64), seed=2)  # the user edits the picture
        changed = latent_cache.cache_latents(vae, buckets, 0.18215, to_disk=True)
        assert encoded == [1] and not torch.equal(changed[image].latents, first[image].latents)
    finally:
        latent_cache.encode_latents = original


def test_gradient_checkpointing_of_the_text_encoder_warns_nothing():
    import warnings

    from lorasmith.config.schema import TrainConfig, with_values
    from lorasmith.models.tiny import tiny_base_model
    from lorasmith.train.setup import prepare_base_for_training

    base = tiny_base_model("sd1")
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # transformers' deprecated name printed one every run
        prepare_base_for_training(base, with_values(TrainConfig(), {"gradient_checkpointing": True}), True)
    assert base.unet.is_gradient_checkpointing and base.text_encoders[0].is_gradient_checkpointing


def test_flip_aug_caches_the_mirror_images_latents_and_collate_picks_half_at_random(tmp_path):
    from tests.conftest import write_image
    from lorasmith.dataset import latent_cache
    from lorasmith.dataset.batches import Sample
    from lorasmith.dataset.images import load_image
    from lorasmith.dataset.scan import ImageItem
    from lorasmith.models.tiny import tiny_base_model
    from lorasmith.train.batches import CaptionRules, collate

    vae = tiny_base_model("sd1").vae
    image = write_image(tmp_path / "10_a" / "a.png", (64, 64), seed=1)
    buckets = {image: (64, 64)}
    cache = latent_cache.cache_latents(vae, buckets, 0.18215, flip=True)
    pixels = load_image(image, (64, 64))[0]
    mirrored = latent_cache.encode_latents(vae, pixels.flip(-1)[None], 0.18215)[0]
    assert torch.equal(cache[image].flipped, mirrored) and not torch.equal(cache[image].flipped, cache[image].latents)
    # the disk cache of a run without flip_aug is encoded again, then kept with both
    latent_cache.cache_latents(vae, buckets, 0.18215, to_disk=True)
    assert latent_cache.cache_latents(vae, buckets, 0.18215, to_disk=True, flip=True)[image].flipped is not None
    assert torch.equal(latent_cache.cache_latents(vae, buckets, 0.18215, to_disk=True, flip=True)[image].flipped,
                       mirrored)

    samples = [Sample(ImageItem(image, "mychar, smile, hat", None), None, False)] * 40
    rules = CaptionRules(shuffle=True)
    flipped = collate(samples, (64, 64), random.Random(3), rules, 1.0, cache, flip=True)
    plain = collate(samples, (64, 64), random.Random(3), rules, 1.0, cache)
    mirrors = sum(torch.equal(latent, cache[image].flipped) for latent in flipped.latents)
    assert 10 < mirrors < 30  # about half
    assert all(torch.equal(latent, cache[image].latents) for latent in plain.latents)
    assert flipped.captions == plain.captions  # the flips are drawn after the captions
    cached = collate(samples[:8], (64, 64), random.Random(4), rules, 1.0, cache, flip=True)
    assert 0 < sum(torch.equal(latent, cache[image].flipped) for latent in cached.latents) < 8
    uncached = collate(samples[:8], (64, 64), random.Random(4), rules, 1.0, None, vae, 0.18215, flip=True)
    for got, expected in zip(uncached.latents, cached.latents):
        torch.testing.assert_close(got, expected)  # encoding now mirrors the same samples


def test_a_vae_held_in_fp16_encodes_in_fp32_when_its_config_says_so():
    from lorasmith.dataset import latent_cache
    from lorasmith.models.tiny import tiny_base_model

    vae = tiny_base_model("sdxl").vae
    pixels = torch.rand(1, 3, 64, 64) * 2 - 1
    reference = latent_cache.encode_latents(vae, pixels, 0.13025)
    vae.to(torch.float16)  # as mixed precision loads it on a GPU
    seen = []
    hook = vae.encoder.register_forward_pre_hook(lambda module, inputs: seen.append(inputs[0].dtype))
    assert vae.config.force_upcast  # diffusers' default, and SDXL's VAE config
    upcast = latent_cache.encode_latents(vae, pixels, 0.13025)
    hook.remove()
    assert seen == [torch.float32] and next(vae.parameters()).dtype == torch.float16  # back in fp16 after
    torch.testing.assert_close(upcast, reference, atol=2e-2, rtol=0)  # only the fp16 rounding of the weights
    vae.register_to_config(force_upcast=False)  # e.g. sdxl-vae-fp16-fix: its config says fp16 is safe
    seen.clear()
    hook = vae.encoder.register_forward_pre_hook(lambda module, inputs: seen.append(inputs[0].dtype))
    latent_cache.encode_latents(vae, pixels, 0.13025)
    hook.remove()
    assert seen == [torch.float16]


def test_huber_and_smooth_l1_match_their_formulas_and_the_thresholds_follow_the_schedule():
    from diffusers import DDPMScheduler

    from lorasmith.train.step import LossRecipe, elementwise_loss, huber_threshold

    prediction = torch.tensor([[[[0.0, 1.0], [3.0, -2.0]]], [[[0.5, 0.5], [0.5, 0.5]]]])
    target = torch.zeros_like(prediction)
    c = torch.tensor([0.1, 0.5])
    d = prediction - target
    huber = elementwise_loss(prediction, target, "huber", c)
    smooth = elementwise_loss(prediction, target, "smooth_l1", c)
    for index, threshold in enumerate(c.tolist()):
        expected = 2 * threshold * (torch.sqrt(d[index] ** 2 + threshold**2) - threshold)
        torch.testing.assert_close(huber[index], expected)
        torch.testing.assert_close(smooth[index], expected / threshold)
    assert elementwise_loss(prediction, target, "huber", c)[0, 0, 1, 0] == pytest.approx(2 * 0.1 * (3.0 - 0.1),
                                                                                         rel=1e-3)  # ~linear far out
    torch.testing.assert_close(elementwise_loss(prediction, target, "l2"), d**2)
    torch.testing.assert_close(elementwise_loss(prediction, target, "l1"), d.abs())

    scheduler = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    steps = torch.tensor([0, 500, 999])
    constant = huber_threshold(scheduler, steps, LossRecipe("huber", huber_c=0.2, huber_schedule="constant"))
    assert constant.tolist() == pytest.approx([0.2, 0.2, 0.2])
    exponential = huber_threshold(scheduler, steps, LossRecipe("huber", huber_c=0.1, huber_schedule="exponential"))
    assert exponential[0] == pytest.approx(1.0) and exponential[2] == pytest.approx(0.1, rel=0.01)
    by_snr = huber_threshold(scheduler, steps, LossRecipe("huber", huber_c=0.1, huber_schedule="snr"))
    assert 1.0 >= by_snr[0] > by_snr[1] > by_snr[2] >= 0.1  # clean inputs near 1, noisy ones near huber_c


def test_input_perturbation_noises_the_input_only_and_is_replayable():
    latents = torch.zeros(2, 4, 8, 8)
    plain = draw_noise(latents, 1000, torch.Generator().manual_seed(3))
    perturbed = draw_noise(latents, 1000, torch.Generator().manual_seed(3), NoiseRecipe(ip_noise_gamma=0.1))
    again = draw_noise(latents, 1000, torch.Generator().manual_seed(3), NoiseRecipe(ip_noise_gamma=0.1))
    assert plain.input_noise is None and torch.equal(perturbed.noise, plain.noise)  # the target is unchanged
    extra = (perturbed.input_noise - perturbed.noise) / 0.1
    assert 0.8 < extra.std().item() < 1.2 and torch.equal(perturbed.input_noise, again.input_noise)


def test_zero_terminal_snr_ends_the_schedule_at_pure_noise_and_v_prediction_trains(tmp_path):
    from lorasmith.config.schema import TrainConfig
    from lorasmith.models.tiny import tiny_base_model
    from lorasmith.train.setup import prepare_base_for_training
    from lorasmith.train.step import denoising_loss, min_snr_weights

    base = tiny_base_model("sd2", v_prediction=True)
    assert base.noise_scheduler.alphas_cumprod[-1] > 0
    prepare_base_for_training(base, TrainConfig(zero_terminal_snr=True), train_text_encoder=False)
    assert base.noise_scheduler.alphas_cumprod[-1].item() == pytest.approx(0.0, abs=1e-12)
    last = torch.tensor([999, 500])
    for v_prediction in (True, False):
        assert torch.isfinite(min_snr_weights(base.noise_scheduler, last, 5.0, v_prediction)).all()
    # v-prediction at the very last step: a finite loss that gradient steps lower
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    context = torch.randn(2, 77, base.unet.config.cross_attention_dim, generator=torch.Generator().manual_seed(1))
    draw = draw_noise(latents, 1000, torch.Generator().manual_seed(2), NoiseRecipe(min_timestep=990))
    weights = [p for p in base.unet.parameters()][:8]
    for p in weights:
        p.requires_grad_(True)
    optimizer = torch.optim.SGD(weights, lr=1e-2)
    losses = []
    for _ in range(5):
        loss = denoising_loss(base, latents, context, draw)  # plain L2: Min-SNR would weigh these steps ~0
        assert torch.isfinite(loss)
        losses.append(loss.item())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert losses[-1] < losses[0]


def test_caption_prefix_suffix_every_n_epochs_and_the_separators_as_sd_scripts_reads_them():
    rng = random.Random(0)
    assert prepare_caption("1girl, smile", rng, prefix="mychar,", suffix=", best quality") == \
        "mychar, 1girl, smile , best quality"
    assert prepare_caption("1girl", rng, epoch=3, dropout_every_n_epochs=3) == ""
    assert prepare_caption("1girl", rng, epoch=4, dropout_every_n_epochs=3) == "1girl"
    caption = "mychar, 1girl ||| red hair, smile, outdoors, sky ||| masterpiece"
    for _ in range(20):
        tags = prepare_caption(caption, rng, shuffle=True, keep_tokens_separator="|||").split(", ")
        assert tags[:2] == ["mychar", "1girl"] and tags[-1] == "masterpiece"
        assert sorted(tags[2:-1]) == ["outdoors", "red hair", "sky", "smile"]
    joined = {prepare_caption("mychar, red hair;;;long hair, smile", rng, shuffle=True, keep_tokens=1,
                              secondary_separator=";;;") for _ in range(20)}
    assert joined == {"mychar, red hair,long hair, smile", "mychar, smile, red hair,long hair"}  # moved as one

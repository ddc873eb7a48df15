"""Flux's flow-matching objective on the tiny Flux: packing, sigma draws, the loss and its options."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from lorasmith.errors import ConfigError
from lorasmith.families.flux.objective import (
    FlowDraw,
    FlowRecipe,
    draw_flow,
    draw_sigmas,
    flow_loss,
    flux_mu,
    image_ids,
    pack_latents,
    predict_velocity,
    text_ids,
    unpack_latents,
)
from lorasmith.families.flux.text import encode_flux_captions
from lorasmith.families.flux.tiny import tiny_flux_base_model
from lorasmith.train.step import LossRecipe

T5_LENGTH = 16  # short T5 states keep the transformer fast; the objective does not care


@pytest.fixture(scope="module")
def dev():
    return tiny_flux_base_model("dev")


@pytest.fixture(scope="module")
def dev_text(dev):
    with torch.no_grad():
        return encode_flux_captions(dev, ["a photo of mychar", "a red cube"], T5_LENGTH)


def _latents(seed: int = 0, batch: int = 2, height: int = 8, width: int = 8) -> torch.Tensor:
    return torch.randn(batch, 16, height, width, generator=torch.Generator().manual_seed(seed))


def _sigmas(method: str, tokens: int = 1024, count: int = 4000, **options) -> torch.Tensor:
    recipe = FlowRecipe(timestep_sampling=method, **options)
    return draw_sigmas(recipe, count, tokens, torch.Generator().manual_seed(0))


# --- packing ---------------------------------------------------------------------------------------------------------

def test_packing_is_flux_pipelines_layout_and_round_trips():
    from diffusers import FluxPipeline

    latents = _latents(batch=2, height=6, width=8)
    packed = pack_latents(latents)
    assert packed.shape == (2, 12, 64)
    assert torch.equal(packed, FluxPipeline._pack_latents(latents, 2, 16, 6, 8))
    assert torch.equal(unpack_latents(packed, 6, 8), latents)
    # the pipeline's unpack takes image pixels: 6 x 8 latents are 48 x 64 pixels at the AE's 8x
    assert torch.equal(FluxPipeline._unpack_latents(packed, 48, 64, 8), latents)
    assert torch.equal(image_ids(3, 4), FluxPipeline._prepare_latent_image_ids(1, 3, 4, "cpu", torch.float32))
    assert image_ids(3, 4)[5].tolist() == [0, 1, 1]  # row-major: token 5 is row 1, column 1
    assert torch.equal(text_ids(7), torch.zeros(7, 3))
    with pytest.raises(ValueError, match="even"):
        pack_latents(torch.zeros(1, 16, 5, 8))


# --- sigma draws -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["sigma", "uniform", "sigmoid", "shift", "flux_shift"])
def test_every_sampling_gives_sigmas_in_range(method):
    sigmas = _sigmas(method)
    assert sigmas.shape == (4000,)
    assert (sigmas > 0).all() and (sigmas <= 1).all()
    limited = _sigmas(method, min_timestep=200, max_timestep=600)
    assert (limited >= 0.2).all() and (limited <= 0.6).all()
    assert limited.std() > 0.05  # the range is filled, not collapsed


def test_sampling_statistics():
    assert _sigmas("uniform").mean() == pytest.approx(0.5, abs=0.02)
    assert _sigmas("sigmoid").median() == pytest.approx(0.5, abs=0.02)
    assert _sigmas("sigmoid", sigmoid_scale=3.0).std() > _sigmas("sigmoid").std() + 0.05
    # shift 3 moves the median from 0.5 to 3 * 0.5 / (1 + 2 * 0.5) = 0.75
    assert _sigmas("shift").median() == pytest.approx(0.75, abs=0.02)
    assert _sigmas("shift", discrete_flow_shift=1.0).median() == pytest.approx(0.5, abs=0.02)
    # flux_shift follows the resolution: median e^mu / (e^mu + 1), mu 0.5 at 256 tokens and 1.15 at 4096
    assert flux_mu(256) == pytest.approx(0.5) and flux_mu(4096) == pytest.approx(1.15)
    low, high = _sigmas("flux_shift", tokens=256).median(), _sigmas("flux_shift", tokens=4096).median()
    assert low == pytest.approx(0.6225, abs=0.02) and high == pytest.approx(0.7595, abs=0.02)


def test_sigma_sampling_draws_from_the_shifted_scheduler_table():
    from diffusers import FlowMatchEulerDiscreteScheduler

    table = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0).sigmas
    for scheme in ("uniform", "logit_normal", "mode"):
        sigmas = _sigmas("sigma", weighting_scheme=scheme)
        assert torch.isin(sigmas, table).all(), scheme
    # uniform indices into a table shifted by 3: the same median as "shift"
    assert _sigmas("sigma").median() == pytest.approx(0.75, abs=0.02)
    assert _sigmas("sigma", discrete_flow_shift=1.0).median() == pytest.approx(0.5, abs=0.02)
    # logit_normal with a positive mean favours small indices, which are the noisy end of the table
    assert _sigmas("sigma", weighting_scheme="logit_normal", logit_mean=1.0).median() < _sigmas("sigma").median()


def test_draws_replay_with_the_same_generator_and_use_the_packed_size():
    latents = _latents(height=32, width=32)
    for method in ("sigma", "flux_shift"):
        recipe = FlowRecipe(timestep_sampling=method)
        first, again = (draw_flow(latents, torch.Generator().manual_seed(7), recipe) for _ in range(2))
        other = draw_flow(latents, torch.Generator().manual_seed(8), recipe)
        assert torch.equal(first.noise, again.noise) and torch.equal(first.sigmas, again.sigmas)
        assert not torch.equal(first.noise, other.noise)
        assert torch.allclose(first.timesteps, first.sigmas * 1000)
        assert first.input_noise is None
    # 32 x 32 latents pack to 256 tokens: flux_shift draws with mu 0.5
    generator = torch.Generator().manual_seed(3)
    drawn = draw_flow(latents, generator, FlowRecipe(timestep_sampling="flux_shift"))
    generator = torch.Generator().manual_seed(3)
    torch.randn(latents.shape, generator=generator)
    assert torch.equal(drawn.sigmas, draw_sigmas(FlowRecipe(timestep_sampling="flux_shift"), 2, 256, generator))


def test_a_draw_at_given_timesteps():
    drawn = FlowDraw.at(torch.zeros(2, 16, 4, 4), torch.tensor([500, 250]))
    assert drawn.sigmas.tolist() == [0.5, 0.25] and drawn.timesteps.tolist() == [500.0, 250.0]


def test_input_perturbation():
    latents = _latents(batch=4, height=32, width=32)
    drawn = draw_flow(latents, torch.Generator().manual_seed(100), FlowRecipe(ip_noise_gamma=0.1))
    assert (drawn.input_noise - drawn.noise).std() == pytest.approx(0.1, rel=0.05)


# --- the loss --------------------------------------------------------------------------------------------------------

def _by_hand(base, latents, text, sigmas, guidance=3.5) -> torch.Tensor:
    """The transformer called the way FluxPipeline calls it, with no help from objective.py."""
    batch, _, height, width = latents.shape
    packed = latents.view(batch, 16, height // 2, 2, width // 2, 2).permute(0, 2, 4, 1, 3, 5)
    packed = packed.reshape(batch, height * width // 4, 64)
    from diffusers import FluxPipeline

    ids = FluxPipeline._prepare_latent_image_ids(batch, height // 2, width // 2, "cpu", torch.float32)
    out = base.unet(hidden_states=packed, encoder_hidden_states=text.t5, pooled_projections=text.clip_pooled,
                    timestep=sigmas, img_ids=ids, txt_ids=torch.zeros(text.t5.shape[1], 3),
                    guidance=torch.full((batch,), guidance), return_dict=False)[0]
    return FluxPipeline._unpack_latents(out, height * 8, width * 8, 8)


def test_raw_loss_at_sigma_zero_is_the_velocity_error(dev, dev_text):
    latents, noise = _latents(1), _latents(2)
    draw = FlowDraw(noise, torch.zeros(2), torch.zeros(2))
    with torch.no_grad():
        loss = flow_loss(dev, latents, dev_text, draw, FlowRecipe(model_prediction_type="raw"))
        expected = torch.nn.functional.mse_loss(_by_hand(dev, latents, dev_text, torch.zeros(2)), noise - latents)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_sigma_scaled_and_additive_relate_to_raw(dev, dev_text):
    latents, noise, sigmas = _latents(1), _latents(2), torch.tensor([0.3, 0.8])
    draw = FlowDraw(noise, sigmas, sigmas * 1000)
    noisy = (1 - sigmas.view(-1, 1, 1, 1)) * latents + sigmas.view(-1, 1, 1, 1) * noise
    target = noise - latents
    with torch.no_grad():
        pred = predict_velocity(dev, noisy, sigmas, dev_text, 3.5)
        assert torch.allclose(pred, _by_hand(dev, noisy, dev_text, sigmas), atol=1e-6)

        def loss(**options):
            return flow_loss(dev, latents, dev_text, draw, FlowRecipe(**options)).item()

        per_sample = ((pred * -sigmas.view(-1, 1, 1, 1) + noisy - target) ** 2).mean(dim=(1, 2, 3))
        assert loss() == pytest.approx(per_sample.mean().item(), rel=1e-5)
        assert loss(weighting_scheme="sigma_sqrt") == pytest.approx((per_sample / sigmas**2).mean().item(), rel=1e-5)
        # the weighting belongs to sigma_scaled only, as in sd-scripts
        raw = ((pred - target) ** 2).mean().item()
        assert loss(model_prediction_type="raw", weighting_scheme="sigma_sqrt") == pytest.approx(raw, rel=1e-5)
        additive = ((pred + noisy - target) ** 2).mean().item()
        assert loss(model_prediction_type="additive") == pytest.approx(additive, rel=1e-5)


def test_guidance_goes_only_to_dev(dev, dev_text):
    schnell = tiny_flux_base_model("schnell")
    with torch.no_grad():
        text = encode_flux_captions(schnell, ["a photo of mychar", "a red cube"], T5_LENGTH)
    seen = {}

    def spy(module, args, kwargs):
        seen["guidance"] = kwargs.get("guidance")

    latents = _latents()
    draw = draw_flow(latents, torch.Generator().manual_seed(100), FlowRecipe())
    for base, conditioning in ((dev, dev_text), (schnell, text)):
        handle = base.unet.register_forward_pre_hook(spy, with_kwargs=True)
        try:
            with torch.no_grad():
                flow_loss(base, latents, conditioning, draw, FlowRecipe(guidance_scale=1.0))
        finally:
            handle.remove()
        if base is dev:
            assert torch.equal(seen["guidance"], torch.ones(2))
        else:
            assert seen["guidance"] is None


def test_mask_and_sample_weights(dev, dev_text):
    latents = _latents()
    draw = draw_flow(latents, torch.Generator().manual_seed(100), FlowRecipe())
    recipe = FlowRecipe()
    with torch.no_grad():
        plain = flow_loss(dev, latents, dev_text, draw, recipe)
        assert flow_loss(dev, latents, dev_text, draw, recipe, loss_mask=torch.zeros(2, 1, 8, 8)) == 0
        half = torch.ones(2, 1, 8, 8)
        half[:, :, :, 4:] = 0
        assert flow_loss(dev, latents, dev_text, draw, recipe, loss_mask=half) < plain
        doubled = flow_loss(dev, latents, dev_text, draw, recipe, sample_weights=torch.full((2,), 2.0))
        assert doubled.item() == pytest.approx(2 * plain.item(), rel=1e-5)
        huber = flow_loss(dev, latents, dev_text, draw, recipe, LossRecipe("huber", huber_schedule="constant"))
        assert 0 < huber < plain  # pseudo-Huber with c 0.1 grows linearly past the threshold


def test_loss_falls_when_the_transformer_trains():
    base = tiny_flux_base_model("dev", seed=1)  # its own copy: this test changes the weights
    with torch.no_grad():
        text = encode_flux_captions(base, ["a photo of mychar", "a red cube"], T5_LENGTH)
    latents = _latents()
    draw = draw_flow(latents, torch.Generator().manual_seed(100), FlowRecipe())
    # the blocks a LoRA targets, and the output projection
    params = [p for name, p in base.unet.named_parameters() if "transformer_blocks" in name or "proj_out" in name]
    optimizer = torch.optim.Adam(params, lr=3e-3)
    losses = []
    for _ in range(8):
        loss = flow_loss(base, latents, text, draw, FlowRecipe(model_prediction_type="raw"))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[0] > 1  # the target noise - latents is not trivially zero
    assert losses[-1] < 0.8 * losses[0], losses


# --- the recipe ------------------------------------------------------------------------------------------------------

def test_recipe_reads_sd_scripts_option_names_and_checks_them():
    names = dict(timestep_sampling="flux_shift", sigmoid_scale=1.5, discrete_flow_shift=3.1582,
                 model_prediction_type="raw", guidance_scale=1.0, weighting_scheme="logit_normal", logit_mean=0.1,
                 logit_std=0.9, mode_scale=1.2, min_timestep=10, max_timestep=900, ip_noise_gamma=0.05,
                 ip_noise_gamma_random_strength=True)
    assert FlowRecipe.from_config(SimpleNamespace(**names)) == FlowRecipe(**names)
    assert FlowRecipe() == FlowRecipe(timestep_sampling="sigma", discrete_flow_shift=3.0,
                                      model_prediction_type="sigma_scaled", guidance_scale=3.5)
    for bad, option in ((dict(timestep_sampling="logit"), "timestep_sampling"),
                        (dict(model_prediction_type="eps"), "model_prediction_type"),
                        (dict(weighting_scheme="snr"), "weighting_scheme"), (dict(sigmoid_scale=0), "sigmoid_scale"),
                        (dict(min_timestep=500, max_timestep=400), "min_timestep"),
                        (dict(ip_noise_gamma=-1), "ip_noise_gamma")):
        with pytest.raises(ConfigError, match=option):
            FlowRecipe(**bad)


def test_huber_on_the_snr_schedule_is_refused(dev, dev_text):
    """It needs a DDPM schedule (sd-scripts raises too); min_snr_gamma and debiased estimation are dropped
    by the family's recipe instead, as sd-scripts' Flux path ignores them (the kohya_ss Flux preset sets one)."""
    latents = _latents()
    draw = draw_flow(latents, torch.Generator().manual_seed(100), FlowRecipe())
    with pytest.raises(ConfigError, match="huber_schedule"):
        flow_loss(dev, latents, dev_text, draw, FlowRecipe(), LossRecipe("huber"))

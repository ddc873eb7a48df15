"""Each sampler name gives its diffusers scheduler on the base model's own schedule."""

import pytest

from lorasmith.config.schema import SAMPLERS
from lorasmith.errors import ToolError
from lorasmith.models.tiny import noise_scheduler_config
from lorasmith.sampling.samplers import SAMPLER_TABLE, make_scheduler, sampler_from_label, sampler_label

EXPECTED = {
    "euler_a": "EulerAncestralDiscreteScheduler", "euler": "EulerDiscreteScheduler", "ddim": "DDIMScheduler",
    "dpmpp_2m": "DPMSolverMultistepScheduler", "dpmpp_2m_karras": "DPMSolverMultistepScheduler",
    "pndm": "PNDMScheduler", "lms": "LMSDiscreteScheduler",
}


def test_table_covers_the_schema_samplers():
    assert set(SAMPLER_TABLE) == set(SAMPLERS) == set(EXPECTED)


@pytest.mark.parametrize("name", SAMPLERS)
@pytest.mark.parametrize("v_prediction", [False, True])
def test_scheduler_class_and_schedule(name, v_prediction):
    from diffusers import DDPMScheduler

    training = DDPMScheduler(**noise_scheduler_config(v_prediction))
    scheduler = make_scheduler(name, training)
    assert type(scheduler).__name__ == EXPECTED[name]
    assert scheduler.config.prediction_type == ("v_prediction" if v_prediction else "epsilon")
    assert scheduler.config.beta_schedule == "scaled_linear" and scheduler.config.beta_end == 0.012
    if name.startswith("dpmpp_2m"):
        assert scheduler.config.use_karras_sigmas is (name == "dpmpp_2m_karras")
        assert scheduler.config.algorithm_type == "dpmsolver++"


def test_a1111_labels_round_trip():
    assert sampler_label("euler_a") == "Euler a" and sampler_label("dpmpp_2m_karras") == "DPM++ 2M Karras"
    assert all(sampler_from_label(sampler_label(name)) == name for name in SAMPLERS)
    assert sampler_from_label("Heun") is None


def test_unknown_sampler_is_a_tool_error():
    with pytest.raises(ToolError, match="unknown sampler 'k_heun'; use one of euler_a"):
        make_scheduler("k_heun", {})

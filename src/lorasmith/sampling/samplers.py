"""Sampler names (schema.SAMPLERS) -> diffusers schedulers, and their AUTOMATIC1111 labels.

Each scheduler is built from the base model's own training schedule (`noise_scheduler.config`)
so that the beta schedule and the prediction type (epsilon or v) carry over.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lorasmith.errors import ToolError


@dataclass(frozen=True)
class SamplerSpec:
    class_name: str  # a class in diffusers
    label: str  # AUTOMATIC1111's name, written into the PNG parameters
    options: dict = field(default_factory=dict)


SAMPLER_TABLE: dict[str, SamplerSpec] = {
    "euler_a": SamplerSpec("EulerAncestralDiscreteScheduler", "Euler a"),
    "euler": SamplerSpec("EulerDiscreteScheduler", "Euler"),
    "ddim": SamplerSpec("DDIMScheduler", "DDIM"),
    "dpmpp_2m": SamplerSpec("DPMSolverMultistepScheduler", "DPM++ 2M",
                            {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "dpmpp_2m_karras": SamplerSpec("DPMSolverMultistepScheduler", "DPM++ 2M Karras",
                                   {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": True}),
    "pndm": SamplerSpec("PNDMScheduler", "PLMS", {"skip_prk_steps": True}),
    "lms": SamplerSpec("LMSDiscreteScheduler", "LMS"),
}


def sampler_spec(name: str) -> SamplerSpec:
    spec = SAMPLER_TABLE.get(name)
    if spec is None:
        raise ToolError(f"unknown sampler '{name}'; use one of {', '.join(SAMPLER_TABLE)}")
    return spec


def sampler_label(name: str) -> str:
    """'euler_a' -> 'Euler a' (A1111's wording)."""
    return sampler_spec(name).label


def sampler_from_label(label: str) -> str | None:
    """'Euler a' -> 'euler_a'; None for a label we have no sampler for."""
    return next((name for name, spec in SAMPLER_TABLE.items() if spec.label == label), None)


def make_scheduler(name: str, training_scheduler: Any) -> Any:
    """A fresh scheduler of sampler `name` on the schedule of `training_scheduler` (or its config)."""
    import diffusers

    spec = sampler_spec(name)
    config = dict(getattr(training_scheduler, "config", training_scheduler))
    return getattr(diffusers, spec.class_name).from_config(config, **spec.options)

"""Optimizers and learning-rate schedulers by name: one table, with sd-scripts' names and rules.

Names match case-insensitively, as in sd-scripts; a dotted name (`pytorch_optimizer.CAME`,
`bitsandbytes.optim.AdEMAMix8bit`) names any optimizer class by its module. Each entry says which
PyPI package it comes from, so a missing one is a one-line error naming it, checked before a model loads.
"""

from __future__ import annotations

import ast
import importlib
from dataclasses import dataclass
from lorasmith.errors import ConfigError, TrainingError


@dataclass(frozen=True)
class OptimizerEntry:
    module: str  # where the class lives
    class_name: str
    package: str  # what to pip install when the module is missing
    cuda: bool = False  # bitsandbytes' 8-bit and paged optimizers run on CUDA only
    defaults: tuple = ()  # (name, value) pairs sd-scripts sets unless optimizer_args say otherwise
    adaptive: bool = False  # finds its own step size: learning_rate is a multiplier, about 1.0
    schedule_free: bool = False  # needs no scheduler, and train()/eval() around saving and sampling


def _bnb(class_name: str, **defaults) -> OptimizerEntry:
    return OptimizerEntry("bitsandbytes.optim", class_name, "bitsandbytes (pip install 'lorasmith[cuda]')", cuda=True,
                          defaults=tuple(defaults.items()))


def _dadapt(module: str, class_name: str) -> OptimizerEntry:
    return OptimizerEntry(module, class_name, "dadaptation", adaptive=True)


def _schedule_free(class_name: str) -> OptimizerEntry:
    return OptimizerEntry("schedulefree", class_name, "schedulefree", schedule_free=True)


OPTIMIZERS: dict[str, OptimizerEntry] = {
    "AdamW": OptimizerEntry("torch.optim", "AdamW", "torch"),
    "AdamW8bit": _bnb("AdamW8bit"),
    "PagedAdamW": _bnb("PagedAdamW"),
    "PagedAdamW8bit": _bnb("PagedAdamW8bit"),
    "PagedAdamW32bit": _bnb("PagedAdamW32bit"),
    "Lion": OptimizerEntry("lion_pytorch", "Lion", "lion-pytorch"),
    "Lion8bit": _bnb("Lion8bit"),
    "PagedLion8bit": _bnb("PagedLion8bit"),
    "SGDNesterov": OptimizerEntry("torch.optim", "SGD", "torch", defaults=(("nesterov", True), ("momentum", 0.9))),
    "SGDNesterov8bit": _bnb("SGD8bit", nesterov=True, momentum=0.9),
    "DAdaptation": _dadapt("dadaptation.experimental", "DAdaptAdamPreprint"),
    "DAdaptAdamPreprint": _dadapt("dadaptation.experimental", "DAdaptAdamPreprint"),
    "DAdaptAdaGrad": _dadapt("dadaptation", "DAdaptAdaGrad"),
    "DAdaptAdam": _dadapt("dadaptation", "DAdaptAdam"),
    "DAdaptAdan": _dadapt("dadaptation", "DAdaptAdan"),
    "DAdaptAdanIP": _dadapt("dadaptation.experimental", "DAdaptAdanIP"),
    "DAdaptLion": _dadapt("dadaptation", "DAdaptLion"),
    "DAdaptSGD": _dadapt("dadaptation", "DAdaptSGD"),
    "Prodigy": OptimizerEntry("prodigyopt", "Prodigy", "prodigyopt", adaptive=True),
    "Adafactor": OptimizerEntry("transformers.optimization", "Adafactor", "transformers"),
    "RAdamScheduleFree": _schedule_free("RAdamScheduleFree"),
    "AdamWScheduleFree": _schedule_free("AdamWScheduleFree"),
    "SGDScheduleFree": _schedule_free("SGDScheduleFree"),
    "CAME": OptimizerEntry("came_pytorch", "CAME", "came-pytorch"),
}
_BY_LOWER = {name.lower(): entry for name, entry in OPTIMIZERS.items()}


def optimizer_entry(name: str) -> OptimizerEntry:
    """The table's entry for a name (any case), or one made from a dotted 'module.ClassName'."""
    entry = _BY_LOWER.get(name.lower())
    if entry is not None:
        return entry
    module, dot, class_name = name.rpartition(".")
    if dot and module and class_name:
        return OptimizerEntry(module, class_name, module.split(".")[0].replace("_", "-"),
                              schedule_free=name.lower().endswith("schedulefree"))
    raise ConfigError(f"optimizer_type {name!r} is not known; use one of {', '.join(OPTIMIZERS)}, "
                      "or a class by its module path such as pytorch_optimizer.CAME")


def check_optimizer_available(name: str) -> None:
    """Raise now, before a model loads, for an optimizer this machine cannot run (the 8gb preset's AdamW8bit)."""
    entry = optimizer_entry(name)
    if entry.cuda:
        import torch

        if not torch.cuda.is_available():
            raise TrainingError(f"optimizer_type {name} needs a CUDA GPU (bitsandbytes); use AdamW on this machine")
    _optimizer_class(entry, name)


def _optimizer_class(entry: OptimizerEntry, name: str):
    try:
        module = importlib.import_module(entry.module)
    except ImportError:
        raise TrainingError(f"optimizer_type {name} needs the {entry.package} package: pip install "
                            f"{entry.package.split(' ')[0]}") from None
    try:
        return getattr(module, entry.class_name)
    except AttributeError:
        raise ConfigError(f"optimizer_type {name}: {entry.module} has no {entry.class_name}; check the name or "
                          f"update {entry.package}") from None


def optimizer_class(name: str):
    """The optimizer class a name stands for (raises the table's one-line errors)."""
    return _optimizer_class(optimizer_entry(name), name)


def parse_name_value_args(items: list[str], key: str = "optimizer_args") -> dict:
    """['weight_decay=0.01', 'betas=0.9,0.99'] -> {'weight_decay': 0.01, 'betas': (0.9, 0.99)}, as sd-scripts."""
    kwargs = {}
    for item in items:
        name, sep, text = item.partition("=")
        if not sep or not name.strip():
            raise ConfigError(f"{key} entries must look like name=value, got {item!r}")
        try:
            kwargs[name.strip()] = ast.literal_eval(text.strip())
        except (ValueError, SyntaxError):
            kwargs[name.strip()] = text.strip()  # e.g. a plain word
    return kwargs


parse_optimizer_args = parse_name_value_args


def adafactor_relative_step(name: str, args: list[str]) -> bool:
    """sd-scripts' Adafactor default: its own relative step size (and schedule) unless relative_step=False."""
    if optimizer_entry(name).class_name != "Adafactor":
        return False
    options = parse_name_value_args(args)
    return bool(options.get("relative_step", True)) or bool(options.get("warmup_init", False))


def build_optimizer(name: str, param_groups: list[dict], lr: float, args: list[str]):
    entry = optimizer_entry(name)
    check_optimizer_available(name)
    cls = _optimizer_class(entry, name)
    options = {**dict(entry.defaults), **parse_name_value_args(args)}
    if adafactor_relative_step(name, args):
        # sd-scripts: the learning rate becomes Adafactor's initial rate; its own schedule decides the steps
        param_groups = [{k: v for k, v in group.items() if k != "lr"} for group in param_groups]
        options = {"relative_step": True, **options}
        lr = None
    try:
        optimizer = cls(param_groups, lr=lr, **options)
    except TypeError as error:  # an optimizer_args name the optimizer does not take
        raise ConfigError(f"optimizer_args do not fit {name}: {error}") from None
    if entry.schedule_free:
        optimizer.train()
    return optimizer


def warmup_step_count(warmup_steps: float, total_steps: int) -> int:
    """lr_warmup_steps as sd-scripts reads it: a count of steps, or below 1 a fraction of the total."""
    return int(warmup_steps * total_steps) if 0 < warmup_steps < 1 else int(warmup_steps)


@dataclass(frozen=True)
class SchedulerSettings:
    name: str = "constant"
    warmup_steps: float = 0
    num_cycles: int = 1
    power: float = 1.0
    custom_type: str = ""  # lr_scheduler_type: any torch.optim.lr_scheduler class, or module.Class
    args: tuple = ()  # lr_scheduler_args, name=value


def scheduler_settings(config) -> SchedulerSettings:
    return SchedulerSettings(config.lr_scheduler, config.lr_warmup_steps, config.lr_scheduler_num_cycles,
                             config.lr_scheduler_power, config.lr_scheduler_type, tuple(config.lr_scheduler_args))


def build_scheduler(settings: SchedulerSettings, optimizer, total_steps: int, optimizer_name: str = "AdamW",
                    initial_lr: float = 0.0, optimizer_args: tuple = ()):
    """The scheduler sd-scripts would build for these settings (`get_scheduler_fix`)."""
    import torch

    entry = optimizer_entry(optimizer_name)
    extra = parse_name_value_args(list(settings.args), "lr_scheduler_args")
    if entry.schedule_free:  # its own averaging replaces the schedule
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    if settings.custom_type:
        return _custom_scheduler(settings.custom_type, optimizer, extra)
    if settings.name == "adafactor" or adafactor_relative_step(optimizer_name, list(optimizer_args)):
        return _adafactor_schedule(optimizer, initial_lr)
    return _diffusers_scheduler(settings, optimizer, total_steps, extra)


def _custom_scheduler(type_name: str, optimizer, extra: dict):
    import torch

    module_name, dot, class_name = type_name.rpartition(".")
    module = importlib.import_module(module_name) if dot else torch.optim.lr_scheduler
    cls = getattr(module, class_name or type_name, None)
    if cls is None:
        raise ConfigError(f"lr_scheduler_type {type_name!r} is not a scheduler class; give one of "
                          "torch.optim.lr_scheduler's (e.g. CosineAnnealingLR) or module.ClassName")
    try:
        return cls(optimizer, **extra)
    except TypeError as error:
        raise ConfigError(f"lr_scheduler_args do not fit {type_name}: {error}") from None


def _adafactor_schedule(optimizer, initial_lr: float):
    from transformers.optimization import Adafactor, AdafactorSchedule

    if not isinstance(optimizer, Adafactor):
        raise ConfigError("lr_scheduler adafactor is Adafactor's own schedule; use it with optimizer_type Adafactor")
    return AdafactorSchedule(optimizer, initial_lr=initial_lr)


def _diffusers_scheduler(settings: SchedulerSettings, optimizer, total_steps: int, extra: dict):
    from diffusers.optimization import get_scheduler

    name, kwargs = settings.name, dict(extra)
    if name not in ("constant", "piecewise_constant"):
        kwargs["num_warmup_steps"] = warmup_step_count(settings.warmup_steps, total_steps)
    if name in ("linear", "cosine", "cosine_with_restarts", "polynomial"):
        kwargs["num_training_steps"] = total_steps
    if name == "cosine_with_restarts":
        kwargs["num_cycles"] = settings.num_cycles
    if name == "polynomial":
        kwargs["power"] = settings.power
    try:
        return get_scheduler(name, optimizer, **kwargs)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"lr_scheduler {name} cannot be built with these settings: {error}") from None


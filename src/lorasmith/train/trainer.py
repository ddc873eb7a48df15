"""The training loop, top to bottom: set up, then epochs of batches, saving as it goes.

Runs on accelerate: one process by default, `accelerate launch --num_processes N` for several
GPUs (or CPU processes over gloo) with no change to the configuration. Each process takes
every N-th batch; only the main process writes files (train/saving.py writes them).
"""

from __future__ import annotations

import math
import random
import threading
import time
import uuid
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from lorasmith.config.schema import TrainConfig, to_dict
from lorasmith.dataset.batches import make_batches
from lorasmith.dataset.plan import epochs_and_steps
from lorasmith.errors import TrainingError
from lorasmith.events import EventSink, FileWritten, Message, Progress, ignore_events
from lorasmith.families import family_behaviour
from lorasmith.train import low_vram
from lorasmith.train import run as files
from lorasmith.train.batches import CaptionRules, collate
from lorasmith.train.ema import LoraEma
from lorasmith.train.optim import build_optimizer, build_scheduler, optimizer_entry, scheduler_settings
from lorasmith.train.saving import RunFiles
from lorasmith.train.setup import (
    TrainingData,
    allow_new_mixed_precision,
    cache_training_latents,
    cpu_only,
    weight_dtype,
)
from lorasmith.train.state import Position, load_state, start_afresh


@dataclass
class TrainResult:
    output_dir: str
    files: list[str] = field(default_factory=list)  # LoRA files written, in order
    final_file: str | None = None
    steps: int = 0
    epochs_done: int = 0
    interrupted: bool = False
    paused: bool = False  # stopped with the state saved, to be resumed
    early_stopped: bool = False  # the validation loss stayed above its best for early_stop_patience checks
    best_epoch: int | None = None  # the epoch of the lowest validation loss, with validation
    state_dir: str | None = None  # the last training state written, if any
    losses: list[float] = field(default_factory=list)  # loss of every optimizer step


class Trainer(RunFiles):
    def __init__(self, config: TrainConfig, data: TrainingData, base, events: EventSink = ignore_events,
                 stop: threading.Event | None = None, owns_base: bool = False, base_hashes: Future | None = None,
                 latents: Future | None = None, pause: threading.Event | None = None):
        from accelerate import Accelerator

        self.config, self.data, self.events, self.stop, self.pause = config, data, events, stop, pause
        self.output_dir = Path(config.output_dir).expanduser()
        allow_new_mixed_precision(config.mixed_precision)
        self.accelerator = Accelerator(
            cpu=cpu_only(), mixed_precision=config.mixed_precision, gradient_accumulation_steps=config.gradient_accumulation_steps,
            log_with="tensorboard", project_dir=config.effective_logging_dir,
        )
        self.base = base
        self.family = family_behaviour(base.family)  # what this model family does its own way
        self.owns_base = owns_base  # a base we loaded ourselves may drop parts it no longer needs
        self.result = TrainResult(output_dir=str(self.output_dir))
        self.session_id = uuid.uuid4().hex[:16]
        self.started_at = time.time()
        self.base_hashes = base_hashes  # the checkpoint's sha256, still being read: the first save waits for it
        self.early_latents = latents  # latents already being encoded while the model loaded
        self.norms: tuple[int, float, float] | None = None  # the last scale_weight_norms outcome
        self.text_encoders_parked = False  # on the CPU while their outputs are cached

    # ---- set-up -------------------------------------------------------------------------

    def setup(self) -> None:
        config, base, accelerator = self.config, self.base, self.accelerator
        spec = self.family.network_spec(config)
        low_vram.check_low_vram(config, on_gpu=accelerator.device.type != "cpu")
        self.family.prepare_for_training(base, config, spec.train_text_encoder)
        torch.manual_seed(config.seed)  # the LoRA's initial weights come from the seed
        self.network = self.family.create_network(base, spec)
        if config.network_weights:
            self._start_from(config.network_weights)
        low_vram.cast_network(self.network, config)  # full_bf16
        low_vram.store_marked_in_fp8([base.unet, *base.text_encoders])  # fp8_base: after the LoRA is made
        self.train_text_encoder = spec.train_text_encoder
        self.masks = self._masks()
        self.recipe = self.family.training_recipe(config)
        groups = self.network.param_groups(config.effective_unet_lr, config.effective_text_encoder_lr)
        optimizer = build_optimizer(config.optimizer_type, groups, config.learning_rate, config.optimizer_args)
        self.total_steps = self._total_steps()
        self.scheduler = build_scheduler(scheduler_settings(config), optimizer, self.total_steps, config.optimizer_type,
                                         config.learning_rate, tuple(config.optimizer_args))
        self.schedule_free = optimizer_entry(config.optimizer_type).schedule_free
        modules = [base.unet] + (list(base.text_encoders) if spec.train_text_encoder else [])
        prepared = low_vram.prepare_modules(accelerator, modules, optimizer)  # blocks_to_swap: not all at once
        self.modules, self.optimizer = list(prepared[:-1]), prepared[-1]
        self.model = replace(base, unet=self.modules[0],
                             text_encoders=self.modules[1:] if spec.train_text_encoder else base.text_encoders)
        self.ema = LoraEma(self.network.trainable_parameters(), config.ema_decay, config.ema_start_step,
                           config.ema_update_interval) if config.use_ema else None
        self.cache = self._cache_latents()
        self.validator = self._validator()
        self.text_cache = self._cache_text_outputs()
        self.position = self._resume() if config.resume else Position(0, 0, 0)
        earlier = self._earlier_files()
        # files this run wrote after the state (before it was stopped) are written again, the same
        files.guard_outputs(self.output_dir, config.output_name, config.overwrite, after_epoch=self.position.epoch,
                            after_step=self.position.step, own=frozenset(f["path"] for f in earlier))
        self.record = files.RunRecord(str(self.output_dir), config.output_name,
                                      config.pretrained_model_name_or_path, to_dict(config),
                                      [str(p) for p in self.data.validation],
                                      [f for f in earlier if f["step"] <= self.position.step])
        if accelerator.is_main_process:
            if not config.resume:
                for folder in start_afresh(self.output_dir, config.output_name, config.overwrite):
                    self.events(Message(f"removed {folder.name}, a training state of the earlier run (overwrite)"))
            self.output_dir.mkdir(parents=True, exist_ok=True)
            self.record.write()
            if config.sample_prompts:
                from lorasmith.sampling.prompts import run_prompts_file

                self.prompts_file = run_prompts_file(config.sample_prompts, self.output_dir)
            accelerator.init_trackers(config.output_name)

    def _total_steps(self) -> int:
        """The plan's steps; with N processes each makes 1/N of every epoch's batches."""
        plan, world = self.data.plan, self.accelerator.num_processes
        self.epochs = plan.epochs
        if world == 1:
            return plan.total_steps
        per_epoch = math.ceil(math.ceil(plan.batches_per_epoch / world) / plan.gradient_accumulation_steps)
        epochs, total = epochs_and_steps(per_epoch, self.config.max_train_epochs, self.config.max_train_steps)
        self.epochs = epochs
        self.events(Message(f"{world} processes: {per_epoch} steps per epoch each, {total} in all"))
        return total

    def _cache_latents(self):
        if not self.config.cache_latents:
            return None
        if self.early_latents is not None:
            cache = self.early_latents.result()
        else:
            cache = cache_training_latents(self.base.vae, self.base.family, self.config, self.data, self.events)
        if self.owns_base and not self.config.sample_prompts and not self._validates():
            self.base.vae = self.model.vae = None  # never needed again in this run: give its memory back
        else:
            self.base.vae.to("cpu")  # only needed again for samples
        return cache

    def _masks(self):
        """masked_loss: every training image needs its mask (the doctor lists them all)."""
        if not self.config.masked_loss:
            return None
        from lorasmith.dataset.masks import MaskSource

        source = MaskSource(self.config.train_data_dir, self.config.conditioning_data_dir, self.config.alpha_mask)
        missing = source.missing([item.path for _, item in self.data.train.items()])
        if missing:
            raise TrainingError(f"masked_loss: {len(missing)} training image(s) have no mask in "
                                f"{self.config.conditioning_data_dir}, e.g. {missing[0].name}; add them (same names) "
                                "or run lorasmith doctor with --conditioning_data_dir to list them")
        return source

    def _validates(self) -> bool:
        config = self.config
        return bool(self.data.validation) and bool(config.validate_every_n_epochs or config.validate_every_n_steps)

    def _validator(self):
        """The held-out images' fixed batch, encoded now while the VAE is at hand."""
        if not self._validates():
            return None
        from lorasmith.train.validation import Validator

        self.base.vae.to(self.accelerator.device)
        validator = Validator(self.model, self.config, self.data.validation)
        self.base.vae.to("cpu")
        return validator

    def _validate(self, epoch: int, step: int, at_epoch_end: bool) -> None:
        """Measure the validation loss when it is due; stop early when it stayed above its best long enough."""
        if self.validator is None or not self.validator.due(epoch if at_epoch_end else None, step):
            return
        with low_vram.text_encoders_at_hand(self.base, self.accelerator.device, self.text_encoders_parked):
            loss = self.validator.run(self.model, self.modules, epoch, step)
        self.accelerator.log({"loss/validation": loss}, step=step)
        self.events(Message(f"validation loss {loss:.6f} at epoch {epoch}, step {step}"))
        self.events(Progress("validation", step, self.total_steps, {"validation_loss": loss, "epoch": epoch}))
        self.record.validation_losses.append({"epoch": epoch, "step": step, "loss": loss})
        self.result.best_epoch = self.validator.history.best[0]
        if self.validator.history.should_stop():
            self.result.early_stopped = True
            self.events(Message(f"early stop: the validation loss stayed above its best (epoch "
                                f"{self.result.best_epoch}) for {self.config.early_stop_patience} checks"))

    def _cache_text_outputs(self) -> dict | None:
        """Encode each caption once when the text encoders are frozen and captions never change."""
        from lorasmith.train.text_cache import cache_text_outputs

        config = self.config
        to_disk = config.cache_text_encoder_outputs_to_disk  # implies cache_text_encoder_outputs
        if not ((config.cache_text_encoder_outputs or to_disk) and not self.train_text_encoder
                and not config.captions_vary):
            return None
        cache, read = cache_text_outputs(self.data.samples, CaptionRules.from_config(config), self._text_states,
                                         self.base, config, self.accelerator.device, to_disk)
        self.events(Message(f"cached text-encoder outputs of {len(cache)} captions"
                            + (f" ({read} images read from their files)" if to_disk else "")))
        self.text_encoders_parked = True  # only samples and validation need them: their VRAM is what caching is for
        low_vram.text_encoders_to(self.base, "cpu")
        return cache

    def _encode_captions(self, captions: list[str]):
        from lorasmith.models.text import TextEmbeddings

        if self.text_cache is None:
            with torch.set_grad_enabled(self.train_text_encoder):
                return self._text_states(captions)
        entries = [self.text_cache[c] for c in captions]
        pooled = None if entries[0][1] is None else torch.stack([p for _, p in entries])
        return TextEmbeddings(torch.stack([c for c, _ in entries]), pooled)

    def _text_states(self, captions: list[str]):
        """The text encoders' output for captions, as the family reads them."""
        return self.family.encode_captions(self.model, captions, self.config)

    def _start_from(self, path: str) -> None:
        """network_weights: begin with a LoRA already trained (its alphas too), as sd-scripts does."""
        from lorasmith.network.files import load_lora_file

        tensors, _ = load_lora_file(Path(path).expanduser())
        self.network.load_kohya_state_dict(tensors)
        self.events(Message(f"starting from the LoRA weights of {path}"))

    def _earlier_files(self) -> list[dict]:
        """The files a resumed run's record lists (the run goes on with those up to the state's step)."""
        if not self.config.resume:
            return []
        try:
            record = files.read_record(files.record_path(self.output_dir, self.config.output_name))
        except (OSError, ValueError, TypeError, TrainingError):
            return []
        return [f for f in record.files if Path(f["path"]).exists()]

    def _resume(self) -> Position:
        tensors, optim, position, _ = load_state(self.config.resume)
        self.network.load_kohya_state_dict(tensors)
        self.optimizer.load_state_dict(optim["optimizer"])
        self.scheduler.load_state_dict(optim["scheduler"])
        if self.ema is not None and optim.get("ema"):
            self.ema.load_state_dict(optim["ema"])
        self.events(Message(f"resumed from {self.config.resume} at step {position.step} (epoch {position.epoch})"))
        return position

    # ---- the loop -----------------------------------------------------------------------

    def train(self) -> TrainResult:
        config, accelerator = self.config, self.accelerator
        step, losses = self.position.step, deque(maxlen=50)
        rules = CaptionRules.from_config(config)
        self.events(Message(f"training {self.total_steps} steps over {self.epochs} epochs"))
        if self._stop_requested():  # asked before the first step (while loading): nothing to save
            self.result.interrupted = True
            self._finish(step, "interrupted")
            return self.result
        if config.sample_at_first and step == 0:
            self._sample(0, 0)
        try:
            for epoch in range(self.position.epoch, self.epochs):
                batches = self._epoch_batches(epoch)
                start = self.position.batch_in_epoch if epoch == self.position.epoch else 0
                for index in range(start, len(batches)):
                    loss = self._train_batch(batches[index], epoch, index, step, rules)
                    self.position = Position(step, epoch, index + 1)
                    if not accelerator.sync_gradients:
                        continue
                    step += 1
                    self.position = Position(step, epoch, index + 1)
                    if self.ema is not None:
                        self.ema.update(step)
                    losses.append(loss)
                    self.result.losses.append(loss)
                    self._report(step, epoch, loss, sum(losses) / len(losses))
                    if self._should_stop() or self.result.early_stopped or step >= self.total_steps:
                        break
                if self.position.batch_in_epoch >= len(batches):  # the whole epoch was trained
                    self.position = Position(step, epoch + 1, 0)
                    self._end_of_epoch(epoch + 1, step)
                if self.result.interrupted or self.result.early_stopped or step >= self.total_steps:
                    break
        except KeyboardInterrupt:
            if self._stop_requested():  # a second interrupt after a stop request: quit now, save nothing more
                raise
            self.result.interrupted = True
        except BaseException:
            self._finish(step, "failed")
            raise
        if self.result.interrupted:
            self._save_partial(step)
        else:
            self._save_lora(files.final_file(self.output_dir, config.output_name), self.position.epoch, step, "final")
            if config.save_state_on_train_end:
                self._save_state(files.final_state_folder(self.output_dir, config.output_name))
            self._keep_best()
        self._finish(step, "paused" if self.result.paused else "interrupted" if self.result.interrupted
                     else "finished")
        return self.result

    def _epoch_batches(self, epoch: int) -> list:
        """This process's share of the epoch, in an order fixed by (seed, epoch)."""
        batches = make_batches(self.data.samples, self.data.bucket_of, self.config.train_batch_size,
                               random.Random(f"{self.config.seed}-{epoch}"))
        world, rank = self.accelerator.num_processes, self.accelerator.process_index
        if world > 1:  # every process makes the same number of steps: pad by wrapping around
            per_process = math.ceil(len(batches) / world)
            batches = [batches[(i * world + rank) % len(batches)] for i in range(per_process)]
        return batches

    def _train_batch(self, batch, epoch: int, index: int, step: int, rules: CaptionRules) -> float:
        config, accelerator, model = self.config, self.accelerator, self.model
        seed = hash((config.seed, epoch, index, accelerator.process_index)) & 0x7FFFFFFF
        torch.manual_seed(seed)  # LoRA dropout draws from the global generator
        bucket = self.data.bucket_of[batch[0].item.path]
        tensors = collate(batch, bucket, random.Random(seed), rules, config.prior_loss_weight, self.cache,
                          self.base.vae, self.base.family.latent_scale, config.flip_aug, epoch + 1, self.masks)
        device = accelerator.device
        latents = tensors.latents.to(device, weight_dtype(config.mixed_precision, device))
        with accelerator.accumulate(*self.modules):
            with accelerator.autocast():
                text = self._encode_captions(tensors.captions)
                loss = self.family.training_loss(model, latents, text, tensors, torch.Generator().manual_seed(seed),
                                                 self.recipe)
            if not torch.isfinite(loss):
                raise TrainingError(self._nan_message(step + 1))
            accelerator.backward(loss)
            if accelerator.sync_gradients and config.max_grad_norm > 0:
                accelerator.clip_grad_norm_(self.network.trainable_parameters(), config.max_grad_norm)
            self.optimizer.step()
            if accelerator.sync_gradients:
                self.scheduler.step()
                if config.scale_weight_norms:
                    self.norms = self.network.apply_max_norm(config.scale_weight_norms)
            self.optimizer.zero_grad(set_to_none=True)
        return loss.detach().item()

    def _nan_message(self, step: int) -> str:
        kept = f"; the last good file is {self.result.files[-1]}" if self.result.files else ""
        return (f"the loss became NaN or infinite at step {step}; lower the learning rate "
                f"or use bf16 instead of fp16{kept}")

    def _stop_requested(self) -> bool:
        return any(event is not None and event.is_set() for event in (self.stop, self.pause))

    def _should_stop(self) -> bool:
        if self._stop_requested():
            self.result.interrupted = True
            self.result.paused = self.pause is not None and self.pause.is_set()
        return self.result.interrupted

    def _report(self, step: int, epoch: int, loss: float, average: float) -> None:
        # the groups are named (text encoder first, as in sd-scripts): log each rate under its part
        rates = {group.get("name", "unet"): lr for group, lr in zip(self.optimizer.param_groups,
                                                                    self.scheduler.get_last_lr())}
        lr = rates.get("unet", next((r for name, r in rates.items() if name.startswith("unet")),
                                    next(iter(rates.values()))))
        metrics = {"loss": loss, "avg_loss": average, "lr": lr, "epoch": epoch + 1}
        logs = {"loss/current": loss, "loss/average": average}
        logs.update({f"lr/{name if name.startswith('unet') else 'text_encoder'}": rate for name, rate in rates.items()})
        if self.norms is not None:  # scale_weight_norms: sd-scripts shows these two beside the loss
            keys_scaled, mean_norm, _ = self.norms
            metrics.update(keys_scaled=keys_scaled, avg_norm=mean_norm)
            logs.update({"norm/keys_scaled": keys_scaled, "norm/average": mean_norm})
        self.events(Progress("train", step, self.total_steps, metrics))
        self.accelerator.log(logs, step=step)
        every = self.config.save_every_n_steps
        if every and step % every == 0 and step < self.total_steps:
            self._save_lora(files.step_file(self.output_dir, self.config.output_name, step), epoch, step, "step")
            if self.config.save_last_n_steps:  # sd-scripts counts steps, not files
                self._remove_older_files("step", lambda f: f["step"] <= step - self.config.save_last_n_steps,
                                         "save_last_n_steps")
            if self.config.save_state:
                self._save_state(files.step_state_folder(self.output_dir, self.config.output_name, step))
        every = self.config.sample_every_n_steps
        if every and step % every == 0:
            self._sample(epoch + 1, step)
        self._validate(epoch + 1, step, at_epoch_end=False)

    # ---- saving -------------------------------------------------------------------------

    def _end_of_epoch(self, epoch: int, step: int) -> None:
        config = self.config
        self._validate(epoch, step, at_epoch_end=True)
        last = epoch == self.epochs or self.result.early_stopped
        if config.save_every_n_epochs and epoch % config.save_every_n_epochs == 0 and not last:
            self._save_lora(files.epoch_file(self.output_dir, config.output_name, epoch), epoch, step, "epoch")
            self._keep_last_epoch_files()
            if config.save_state:
                self._save_state(files.state_folder(self.output_dir, config.output_name, epoch))
        if config.sample_every_n_epochs and epoch % config.sample_every_n_epochs == 0:
            self._sample(epoch, step)

    def _sample(self, epoch: int, step: int) -> None:
        if not self.config.sample_prompts or not self.accelerator.is_main_process:
            return
        from lorasmith.sampling.generate import sample_during_training
        from lorasmith.sampling.prompts import read_prompts_file

        self.base.vae.to(self.accelerator.device)
        with low_vram.text_encoders_at_hand(self.base, self.accelerator.device, self.text_encoders_parked), \
                self._averaged_weights():
            written = sample_during_training(self.base, read_prompts_file(self.prompts_file),
                                             self.output_dir, self.config.output_name, epoch, step,
                                             self.config.sample_sampler, clip_skip=self.config.clip_skip,
                                             events=self.events)
        for path in written:
            self.events(FileWritten(str(path), "sample"))
        if self.cache is not None:
            self.base.vae.to("cpu")

    def _finish(self, step: int, status: str) -> None:
        self.result.steps = step
        self.result.epochs_done = self.position.epoch
        self.result.final_file = self.result.files[-1] if self.result.files else None
        if self.accelerator.is_main_process:
            self.record.status = status
            self.record.write()
        self.accelerator.end_training()

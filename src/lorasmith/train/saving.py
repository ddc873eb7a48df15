"""The files a training run writes as it goes: LoRA files (and their EMA twins), states, the best epoch's copy.

A part of `Trainer` of its own (the loop lives in trainer.py): it reads the trainer's network, optimizer,
scheduler, record and result, and writes only on the main process. Every file is written atomically.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import torch

from lorasmith.config.schema import to_dict
from lorasmith.dataset.captions import tag_frequency
from lorasmith.events import FileWritten, Message
from lorasmith.train import run as files
from lorasmith.train.state import KEEP_STATES, prune_states, save_state


class RunFiles:
    """Saving for `Trainer`: mixed in, it uses the trainer's attributes (config, network, record, ...)."""

    def _keep_last_epoch_files(self) -> None:
        """save_last_n_epochs: delete this run's older epoch files (only files its record lists)."""
        keep = self.config.save_last_n_epochs
        if keep:
            newest = [f["path"] for f in self.record.files if f["kind"] == "epoch"][-keep:]
            self._remove_older_files("epoch", lambda f: f["path"] not in newest, "save_last_n_epochs")

    def _remove_older_files(self, kind: str, is_old, setting: str) -> None:
        """Delete the LoRA files of `kind` this run's record lists and `is_old` picks (never another run's)."""
        if not self.accelerator.is_main_process:
            return
        old = [Path(f["path"]) for f in self.record.files if f["kind"] == kind and is_old(f)]
        old += [files.ema_file(path) for path in old if any(f["path"] == str(files.ema_file(path))
                                                                for f in self.record.files)]
        for path in old:
            path.unlink(missing_ok=True)
            self.record.remove_file(path)
            if str(path) in self.result.files:
                self.result.files.remove(str(path))
            self.events(Message(f"removed {path.name} ({setting} {getattr(self.config, setting)})"))
        if old:
            self.record.write()

    def _keep_best(self) -> None:
        """With early stopping: `<name>-best.safetensors`, the file of the best validation epoch, its metadata
        naming it (ss_best_epoch), and the run record's best_epoch."""
        if self.result.best_epoch is None or not self.accelerator.is_main_process:
            return
        from lorasmith.network.files import load_lora_file, save_lora_file

        self.record.best_epoch = self.result.best_epoch
        best = [f for f in self.record.files
                if f["epoch"] == self.result.best_epoch and f["kind"] in ("epoch", "final")]
        if self.config.early_stop_patience and best:
            tensors, metadata = load_lora_file(Path(best[0]["path"]))
            path = files.best_file(self.output_dir, self.config.output_name)
            save_lora_file(path, tensors, {**metadata, "ss_best_epoch": str(self.result.best_epoch)})
            self.record.add_file(path, self.result.best_epoch, best[0]["step"], "best")
            self.events(FileWritten(str(path), "lora"))
        self.record.write()

    def _save_partial(self, step: int) -> None:
        """A stop (Ctrl-C, a signal, Stop in the GUI) or a pause: the LoRA of the step reached, and the state
        with save_state (always for a pause, which exists to be resumed)."""
        if step == 0:
            return  # stopped before the first step ended: nothing was trained
        keeps_state = self.config.save_state or self.result.paused
        self.events(Message(f"{'pausing' if self.result.paused else 'stopping'} at step {step}: saving the LoRA"
                            + (" and the training state" if keeps_state else "")))
        path = files.step_file(self.output_dir, self.config.output_name, step)
        self._save_lora(path, self.position.epoch, step, "interrupted")
        if keeps_state:
            self._save_state(files.step_state_folder(self.output_dir, self.config.output_name, step))

    def _save_lora(self, path: Path, epoch: int, step: int, kind: str) -> None:
        from lorasmith.network.files import save_lora_file

        if not self.accelerator.is_main_process:
            return
        dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "float": torch.float32}[self.config.save_precision]
        with self._averaged_weights():
            tensors = self.network.kohya_state_dict(dtype)
        metadata = self._metadata(epoch, step)
        save_lora_file(path, tensors, metadata)
        self.result.files.append(str(path))
        self.record.add_file(path, epoch, step, kind)
        if self.ema is not None and self.ema.shadow is not None:  # the moving average, beside the plain file
            with self.ema.swapped_in():
                averaged = self.network.kohya_state_dict(dtype)
            ema_path = files.ema_file(path)
            save_lora_file(ema_path, averaged, {**metadata, "ss_ema_decay": str(self.config.ema_decay)})
            self.record.add_file(ema_path, epoch, step, "ema")
            self.events(FileWritten(str(ema_path), "lora"))
        self.record.write()
        self.events(FileWritten(str(path), "lora"))

    @contextmanager
    def _averaged_weights(self):
        """A schedule-free optimizer trains at one point and keeps its averaged weights at another: saving and
        sampling see the averaged ones, as sd-scripts does (optimizer.eval(), then train() again)."""
        optimizer = getattr(self.optimizer, "optimizer", self.optimizer)  # accelerate's wrapper holds it
        if self.schedule_free:
            optimizer.eval()
        try:
            yield
        finally:
            if self.schedule_free:
                optimizer.train()

    def _save_state(self, folder: Path) -> None:
        if not self.accelerator.is_main_process:
            return
        save_state(folder, self.network.kohya_state_dict(torch.float32), self.optimizer, self.scheduler,
                   self.position, to_dict(self.config), ema=self.ema.state_dict() if self.ema is not None else None)
        self.result.state_dir = str(folder)
        self.events(FileWritten(str(folder), "state"))
        for old in prune_states(self.output_dir, self.config.output_name):
            self.events(Message(f"removed the older training state {old.name} (the newest {KEEP_STATES} are kept)"))

    def _metadata(self, epoch: int, step: int) -> dict:
        from lorasmith.network.metadata import build_metadata

        data = self.data
        captions: dict[str, list[str]] = {}
        for subset, item in data.train.items():
            captions.setdefault(subset.folder.name, []).append(item.caption)
        dirs = {s.folder.name: {"n_repeats": s.repeats, "img_count": len(s.images)} for s in data.train.subsets}
        return build_metadata(
            self.config, family=self.base.family, v_prediction=self.base.v_prediction,
            # sd-scripts records the checkpoint's file name, extension included
            base_model_name=Path(self.config.pretrained_model_name_or_path).name or self.base.name,
            base_model_hashes={**self.base.info, **(self.base_hashes.result() if self.base_hashes else {})},
            epoch=epoch, steps=step,
            max_steps=self.total_steps, num_train_images=data.train.samples_per_epoch,
            num_reg_images=data.reg.samples_per_epoch if data.reg else 0, dataset_dirs=dirs,
            tag_frequency=tag_frequency(captions), bucket_info=_bucket_info(data.plan.bucket_counts),
            session_id=self.session_id, training_started_at=self.started_at,
        )


def _bucket_info(counts: dict) -> dict:
    """sd-scripts' ss_bucket_info shape: {"buckets": {i: {"resolution": [w, h], "count": n}}}."""
    ordered = sorted(counts.items())
    return {"buckets": {str(i): {"resolution": list(wh), "count": n} for i, (wh, n) in enumerate(ordered)},
            "mean_img_ar_error": 0.0}

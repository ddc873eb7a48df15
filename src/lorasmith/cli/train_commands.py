"""`lorasmith train` and `lorasmith demo`: run training with a progress bar in the terminal."""

from __future__ import annotations

import sys
import threading

from lorasmith.cli.config_commands import add_config_source, print_event, resolve_config

# Shown after the bar (the loss of the step itself jumps about too much to read).
_SHOWN_METRICS = ("avg_loss", "lr", "epoch", "keys_scaled", "avg_norm")


class TerminalProgress:
    """Renders the library's events: a tqdm bar per task (loss, lr, it/s, ETA), lines for the rest.

    Events may come from two threads at once (latents are encoded while the model loads): one at a time.
    """

    def __init__(self):
        self.bars: dict = {}
        self.lock = threading.Lock()

    def __call__(self, event) -> None:
        with self.lock:
            self._show(event)

    def _show(self, event) -> None:
        from tqdm import tqdm

        from lorasmith.events import Progress

        if not isinstance(event, Progress):
            for bar in self.bars.values():
                bar.clear()
            print_event(event)
            for bar in self.bars.values():
                bar.refresh()
            return
        bar = self.bars.get(event.task)
        if bar is None:
            bar = self.bars[event.task] = tqdm(total=event.total, desc=event.task, unit="step", dynamic_ncols=True,
                                               file=sys.stdout, disable=None)
        bar.total = event.total
        bar.update(event.done - bar.n)
        metrics = event.metrics
        if metrics:
            bar.set_postfix({k: (f"{v:.4g}" if isinstance(v, float) else v)
                             for k, v in metrics.items() if k in _SHOWN_METRICS}, refresh=False)
        if event.done >= event.total:
            bar.close()
            del self.bars[event.task]

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()
        self.bars.clear()


def _report(result) -> int:
    if result.interrupted:
        print(f"stopped after {result.steps} steps; saved {result.final_file}")
        return 130
    print(f"finished {result.steps} steps; LoRA: {result.final_file}")
    return 0


def _train(args, extra) -> int:
    from lorasmith import api

    config = resolve_config(args.config, extra, args.preset)
    progress = TerminalProgress()
    try:
        return _report(api.train(config, events=progress))
    finally:
        progress.close()


def _demo(args, extra) -> int:
    from lorasmith import api
    from lorasmith.config.files import parse_overrides

    overrides = parse_overrides(extra)
    output_dir = overrides.pop("output_dir", "lorasmith-demo")
    progress = TerminalProgress()
    try:
        result = api.demo(output_dir, events=progress, **overrides)
    finally:
        progress.close()
    print(f"demo files are in {result.output_dir}")
    return _report(result)


def add_commands(subparsers) -> None:
    train = subparsers.add_parser(
        "train", help="train a LoRA from a configuration file and/or --key value options",
        description="Train a LoRA. Every configuration key can be given as --<key> <value>; "
        "for several GPUs run it under `accelerate launch --num_processes N -m lorasmith train ...`.",
    )
    add_config_source(train)
    train.set_defaults(handler=_train)
    demo = subparsers.add_parser(
        "demo", help="train the embedded tiny model on the bundled dataset (CPU, a few minutes)",
        description="Trains a tiny Stable Diffusion model with random weights on the bundled 'smithy' "
        "dataset end to end, to show the whole workflow. Options: --output_dir DIR and any --<key> <value>.",
    )
    demo.set_defaults(handler=_demo, accepts_overrides=True)

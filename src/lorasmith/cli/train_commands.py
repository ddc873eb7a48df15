"""`lorasmith train` and `lorasmith demo`: run training with a progress bar in the terminal."""

from __future__ import annotations

import shlex
import sys
import threading

from lorasmith.cli.config_commands import add_config_source, print_event, resolve_config
from lorasmith.stop_signals import StopOnSignals

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

        if isinstance(event, Progress) and "validation_loss" in event.metrics:
            return  # a point on the validation curve: its Message line says it
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


def _without_resume(extra: list[str]) -> list[str]:
    """The `--key value` options given, less any --resume (and its value)."""
    kept, skipping = [], False
    for token in extra:
        if token.startswith("--"):
            skipping = token.split("=")[0] == "--resume"
            if skipping:
                continue
        elif skipping:
            continue
        kept.append(token)
    return kept


def _report(result, signals: StopOnSignals, command: list[str]) -> int:
    if not result.interrupted:
        print(f"finished {result.steps} steps; LoRA: {result.final_file}")
        return 0
    why = f" ({signals.name})" if signals.signum else ""
    if not result.final_file:
        print(f"stopped{why} before the first step ended; nothing was saved")
    else:
        print(f"stopped{why} after {result.steps} steps; saved {result.final_file}")
    if result.state_dir:
        print(f"to resume: {shlex.join([*command, '--resume', 'auto'])}")
    elif result.final_file:
        print("no training state was saved (save_state is off), so this run cannot be resumed exactly; "
              "add --save_state next time, or start a new run from this LoRA with --network_weights")
    return signals.exit_code


def _run(command: list[str], start) -> int:
    """Run `start(events, stop)` with stop signals turned into a clean stop, and report how it ended."""
    progress, stop = TerminalProgress(), threading.Event()
    with StopOnSignals(stop) as signals:
        try:
            result = start(progress, stop)
        except KeyboardInterrupt:
            if not signals.signum:
                raise
            progress.close()
            print(f"quit at once on a second {signals.name}; the files written before are intact", file=sys.stderr)
            return signals.exit_code
        finally:
            progress.close()
    return _report(result, signals, command)


def _train(args, extra) -> int:
    from lorasmith import api

    resolved = resolve_config(args.config, extra, args.preset)
    command = ["lorasmith", "train", *([args.config] if args.config else []),
               *(["--preset", args.preset] if args.preset else []), *_without_resume(extra)]
    return _run(command, lambda events, stop: api.train(resolved.config, events=events, stop=stop,
                                                         given=resolved.given))


def _demo(args, extra) -> int:
    from lorasmith import api
    from lorasmith.config.files import parse_overrides

    overrides = parse_overrides(extra)
    output_dir = overrides.pop("output_dir", "lorasmith-demo")
    results = []

    def start(events, stop):
        results.append(api.demo(output_dir, events=events, stop=stop, family=args.family, **overrides))
        return results[-1]

    family = ["--family", args.family] if args.family != "sd1" else []
    code = _run(["lorasmith", "demo", *family, *_without_resume(extra)], start)
    if results:
        print(f"demo files are in {results[-1].output_dir}")
    return code


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
        "dataset end to end, to show the whole workflow (--family flux: a tiny Flux.1-dev). Options: "
        "--output_dir DIR and any --<key> <value>.",
    )
    demo.add_argument("--family", choices=("sd1", "flux"), default="sd1",
                      help="sd1 (default, fastest) or flux: the tiny model's family")
    demo.set_defaults(handler=_demo, accepts_overrides=True)

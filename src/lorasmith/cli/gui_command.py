"""`lorasmith gui`: serve the web GUI on this computer (127.0.0.1) unless --listen is given."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from lorasmith.errors import ConfigError


def add_commands(subparsers) -> None:
    parser = subparsers.add_parser(
        "gui", help="open the web GUI: training, dataset utilities and testing in the browser",
        description="Serve the web GUI at http://127.0.0.1:PORT (this computer only). There is never a "
                    "public share link; --listen opens it to your network, best with --username/--password.")
    parser.add_argument("--port", type=int, default=7860, help="port to serve on (default 7860)")
    parser.add_argument("--listen", action="store_true",
                        help="accept connections from other computers (binds 0.0.0.0 instead of 127.0.0.1)")
    parser.add_argument("--username", help="require this user name to log in (with --password)")
    parser.add_argument("--password", help="require this password to log in (with --username)")
    parser.add_argument("--inbrowser", action="store_true", help="open the page in your web browser")
    parser.add_argument("--browse-root", default=str(Path.home()),
                        help="folder the GUI's file and folder choosers start in (default: your home folder)")
    parser.set_defaults(handler=_gui)


def auth_pair(args: argparse.Namespace) -> tuple[str, str] | None:
    if bool(args.username) != bool(args.password):
        raise ConfigError("give both --username and --password, or neither")
    return (args.username, args.password) if args.username else None


def _gui(args: argparse.Namespace, extra: list[str]) -> int:
    auth = auth_pair(args)
    if not Path(args.browse_root).expanduser().is_dir():
        raise ConfigError(f"--browse-root '{args.browse_root}' is not a folder")
    # This shell (not the library) decides that the GUI sends no usage statistics.
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    from lorasmith.gui.app import build_app, launch
    from lorasmith.gui.runner import TrainingRunner

    from lorasmith.stop_signals import interrupt_on_signals

    host = "0.0.0.0" if args.listen else "127.0.0.1"
    runner = TrainingRunner()
    interrupt_on_signals()  # `kill` or a closed terminal end the GUI through the `finally` below, as Ctrl-C does
    try:
        launch(build_app(runner, browse_root=args.browse_root), host=host, port=args.port, auth=auth,
               inbrowser=args.inbrowser)
    except OSError as error:
        raise ConfigError(f"cannot serve on {host}:{args.port} ({error}); try another --port") from None
    finally:
        runner.shutdown()  # a run still going saves its LoRA before the GUI exits
    return 0

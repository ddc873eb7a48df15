"""`lorasmith gui`: serves the page on 127.0.0.1 only, with no public link; bad options are one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request

from lorasmith.cli import main
from tests.gui.conftest import _free_port


def test_gui_serves_the_page_on_localhost(tmp_path):
    port = _free_port()
    env = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False")
    process = subprocess.Popen(
        [sys.executable, "-m", "lorasmith", "gui", "--port", str(port), "--browse-root", str(tmp_path)],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline, page = time.monotonic() + 60, None
        while page is None and time.monotonic() < deadline and process.poll() is None:
            try:
                page = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/config", timeout=2))
            except OSError:
                time.sleep(0.5)
        assert page is not None, "the GUI did not answer on 127.0.0.1"
        assert page["title"] == "lorasmith"
        assert page["analytics_enabled"] is False
    finally:
        process.terminate()
        output = process.communicate(timeout=30)[0]
    assert f"http://127.0.0.1:{port}" in output
    assert "gradio.live" not in output


def test_username_without_password_is_refused(capsys):
    assert main(["gui", "--username", "me"]) == 2
    assert capsys.readouterr().err.strip() == "error: give both --username and --password, or neither"


def test_the_models_libraries_are_resolved_before_the_page_is_served():
    """Handlers run in threads side by side, and diffusers resolves its names lazily and not thread-safely:
    a "Load demo" racing the page's first estimate failed with "cannot import name 'AutoencoderKL'"."""
    script = (
        "import diffusers, transformers\n"
        "from lorasmith.gui.app import build_app, launch\n"
        "from tests.gui.conftest import _free_port\n"
        "app = build_app()\n"
        "names = ('AutoencoderKL', 'UNet2DConditionModel', 'FluxTransformer2DModel')\n"
        "before = [name in vars(diffusers) for name in names]\n"
        "launch(app, port=_free_port(), block=False, quiet=True)\n"
        "print(before, [name in vars(diffusers) for name in names], 'CLIPTextModel' in vars(transformers))\n"
        "app.close()\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=180,
                            env=dict(os.environ, GRADIO_ANALYTICS_ENABLED="False"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "[False, False, False] [True, True, True] True" in result.stdout.splitlines()

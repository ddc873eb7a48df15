"""Plan every kohya_ss GUI preset in a folder (bmaltais/kohya_ss `presets/lora/*.json`), by hand.

    python scripts/plan_kohya_presets.py PRESETS_DIR

Each preset is opened as `lorasmith plan` opens it, with a small dataset of its own in place of the
preset's placeholder folders, and a line says whether it plans (with the notes and the refusal `train`
would give, if any) or the one-line error it stops with. The presets themselves are not shipped.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from PIL import Image

from lorasmith import api
from lorasmith.config.sources import resolve_config
from lorasmith.errors import LorasmithError


def _dataset(root: Path) -> Path:
    folder = root / "img" / "10_mychar"
    folder.mkdir(parents=True)
    for index in range(4):
        Image.new("RGB", (512 + 64 * index, 512), (index * 60, 90, 160)).save(folder / f"{index}.png")
    return root / "img"


def main(presets_dir: str) -> int:
    work = Path(tempfile.mkdtemp(prefix="kohya-presets-"))
    images = _dataset(work)
    planned = 0
    paths = sorted(Path(presets_dir).glob("*.json"))
    for path in paths:
        values = json.loads(path.read_text(encoding="utf-8"))
        values.update(train_data_dir=str(images), output_dir=str(work / "out" / path.stem), reg_data_dir="",
                      pretrained_model_name_or_path="")
        copy = work / path.name
        copy.write_text(json.dumps(values), encoding="utf-8")
        lines = []
        try:
            resolved = resolve_config(str(copy))
            step_plan = api.plan(resolved.config, given=resolved.given,
                                 events=lambda event: lines.append(getattr(event, "text", "")))
        except LorasmithError as error:
            print(f"FAILS  {path.name}: {error}")
            continue
        planned += 1
        refusal = [line for line in lines if line.startswith("train will refuse")]
        print(f"plans  {path.name}: {step_plan.total_steps} steps" + (f"; {refusal[0]}" if refusal else ""))
        for note in resolved.notes:
            print(f"         note: {note}")
    print(f"{planned} of {len(paths)} presets plan")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))

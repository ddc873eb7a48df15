"""`lora convert` against diffusers itself: bit-exact round trips, and diffusers loads our files fully."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from lorasmith.cli import main
from lorasmith.errors import LorasmithError, ToolError
from lorasmith.network.apply import apply_loras
from lorasmith.network.files import save_lora_file
from lorasmith.tools.lora.consumers import architecture
from lorasmith.tools.lora.convert import convert_lora
from tests.unit.network.helpers import max_diff, model_inputs, outputs
from tests.unit.network.test_diffusers_compat import pipeline
from tests.unit.tools.lora.lora_builders import random_lora, tiny_checkpoint_file


def tiny(family):
    from lorasmith.models.tiny import tiny_base_model

    return tiny_base_model(family, seed=0)


def kohya_tensors(base) -> dict:
    """A LoCon in fp16 whose alphas differ per module: 0.1 (no short decimal), float32, of shape [1], absent."""
    tensors = {k: v.half() for k, v in random_lora(base, rank=4, alpha=2.0, conv_rank=2, seed=3).items()}
    for key in [k for k in tensors if k.endswith(".lora_down.weight") and tensors[k].shape[-1] == 3]:
        tensors[key.replace("lora_down.weight", "alpha")] = torch.tensor(1.0, dtype=torch.float16)
    names = sorted(k[:-len(".alpha")] for k in tensors if k.endswith(".alpha"))
    tensors[f"{names[0]}.alpha"] = torch.tensor(0.1, dtype=torch.float16)
    tensors[f"{names[1]}.alpha"] = torch.tensor(3.0, dtype=torch.float32)
    tensors[f"{names[3]}.alpha"] = torch.tensor([2.0], dtype=torch.float16)
    del tensors[f"{names[2]}.alpha"]
    return tensors


METADATA = {"ss_network_module": "networks.lora", "ss_network_dim": "4", "ss_network_alpha": "2.0",
            "ss_tag_frequency": json.dumps({"10_smithy": {"smithy": 10, "red hair": 7}}),
            "ss_training_comment": "a character", "modelspec.title": "smithy"}


@pytest.fixture(scope="module")
def kohya_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("kohya")
    files = {}
    for family in ("sd1", "sd2", "sdxl"):
        metadata = {**METADATA, "ss_sd_model_name": f"tiny-{family}"}
        files[family] = save_lora_file(folder / f"{family}.safetensors", kohya_tensors(tiny(family)), metadata)
    return files


def read(path):
    with safe_open(str(path), framework="pt") as file:
        return {k: file.get_tensor(k) for k in file.keys()}, dict(file.metadata())


def same_bits(a, b) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a.reshape(-1).view(torch.uint8),
                                                                       b.reshape(-1).view(torch.uint8))


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_kohya_to_diffusers_and_back_is_bit_exact(kohya_files, tmp_path, family):
    convert_lora(kohya_files[family], "diffusers", tmp_path / "d.safetensors")
    report = convert_lora(tmp_path / "d.safetensors", "kohya", tmp_path / "k.safetensors")
    (original, meta), (back, meta_back) = read(kohya_files[family]), read(tmp_path / "k.safetensors")
    assert back.keys() == original.keys()
    assert all(same_bits(back[k], original[k]) for k in original)
    assert meta_back == meta  # ss_* kept, our own keys gone, the file hashes the same
    assert report.architecture == f"{family}-tiny" and report.modules == len({k.split(".")[0] for k in original})
    converted, _ = read(tmp_path / "d.safetensors")
    assert any(".resnets." in k and k.endswith("conv1.lora_A.weight") for k in converted)  # LoCon modules too


class Collect(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def load_in_diffusers(base, path):
    """The pipeline with the file loaded, and what diffusers, peft and transformers logged of keys."""
    handler, loggers = Collect(), [logging.getLogger(n) for n in ("diffusers", "peft", "transformers")]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        pipe = pipeline(base)
        pipe.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name="mine")
    finally:
        for logger in loggers:
            logger.removeHandler(handler)
    return pipe, [m for m in handler.messages if "unexpected" in m.lower() or "missing" in m.lower()]


@pytest.fixture(scope="module")
def loaded(kohya_files, tmp_path_factory):
    """family -> (tiny model, its pipeline with the converted file loaded, what it logged, the file); built once."""
    found = {}

    def load(family):
        if family not in found:
            path = tmp_path_factory.mktemp("diffusers") / f"{family}.safetensors"
            convert_lora(kohya_files[family], "diffusers", path)
            base = tiny(family)
            found[family] = (base, *load_in_diffusers(base, path), path)
        return found[family]
    return load


def adapter_state(module) -> dict:
    from peft import get_peft_model_state_dict

    return get_peft_model_state_dict(module, adapter_name="mine")


def components(pipe) -> dict:
    names = ("unet", "text_encoder", "text_encoder_2")
    return {n: getattr(pipe, n) for n in names if getattr(pipe, n, None) is not None}


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_diffusers_loads_the_converted_file_fully_with_each_alpha(kohya_files, loaded, family):
    from peft.tuners.lora import LoraLayer

    base, pipe, complaints, path = loaded(family)
    assert complaints == []
    (kohya, _), (converted, _) = read(kohya_files[family]), read(path)
    arch = architecture(f"{family}-tiny")
    for component, module in components(pipe).items():
        # What diffusers holds is the file, exactly (transformers 5 has no text_model. in CLIPTextModel).
        flat = not hasattr(module, "text_model") and component != "unet"
        file_keys = {k.split(".", 1)[1] for k in converted if k.startswith(f"{component}.")}
        held = adapter_state(module)
        assert set(held) == {k.removeprefix("text_model.") if flat else k for k in file_keys}
        layers = [(n, m) for n, m in module.named_modules() if isinstance(m, LoraLayer)]
        assert len(layers) == len(file_keys) // 2
        for name, layer in layers:  # each module at its own alpha / rank
            slot = arch.by_peft[f"{component}.{'text_model.' if flat else ''}{name}"]
            down = kohya[f"{slot.kohya}.lora_down.weight"]
            alpha = float(kohya[f"{slot.kohya}.alpha"]) if f"{slot.kohya}.alpha" in kohya else down.shape[0]
            assert layer.scaling["mine"] == pytest.approx(alpha / down.shape[0], rel=1e-12)

    ours = tiny(family)
    inputs = model_inputs(ours)
    before = outputs(ours, inputs)
    apply_loras(ours, [(str(kohya_files[family]), 1.0)])
    assert max_diff(before, outputs(ours, inputs)) > 1e-2  # the LoRA really changes the outputs
    assert max_diff(outputs(base, inputs), outputs(ours, inputs)) < 1e-4


# diffusers' own kohya loader drops text-encoder alpha patterns under transformers 5 (named with text_model.).
@pytest.mark.filterwarnings("ignore:The following alpha_pattern keys")
def test_diffusers_names_the_modules_as_its_own_kohya_loader_does(kohya_files, loaded):
    _, ours, _, _ = loaded("sdxl")
    theirs, _ = load_in_diffusers(tiny("sdxl"), kohya_files["sdxl"])
    for component, module in components(theirs).items():
        held, ours_held = adapter_state(module), adapter_state(getattr(ours, component))
        assert held.keys() == ours_held.keys()
        assert all(torch.equal(held[k], ours_held[k]) for k in held)


def test_a_file_diffusers_wrote_converts_to_the_kohya_lora(kohya_files, loaded, tmp_path):
    from diffusers import StableDiffusionPipeline

    _, pipe, _, _ = loaded("sd1")
    StableDiffusionPipeline.save_lora_weights(
        tmp_path / "theirs", weight_name="theirs.safetensors",
        unet_lora_layers=adapter_state(pipe.unet), text_encoder_lora_layers=adapter_state(pipe.text_encoder),
        unet_lora_adapter_metadata=pipe.unet.peft_config["mine"].to_dict(),
        text_encoder_lora_adapter_metadata=pipe.text_encoder.peft_config["mine"].to_dict())
    convert_lora(tmp_path / "theirs" / "theirs.safetensors", "kohya", tmp_path / "k.safetensors")
    (original, _), (back, metadata) = read(kohya_files["sd1"]), read(tmp_path / "k.safetensors")
    for key, tensor in original.items():  # diffusers saved float32 weights; alphas (as 0-d) from its LoraConfig
        assert torch.equal(back[key].float().reshape(-1), tensor.float().reshape(-1)), key
    absent = next(k for k in back if k.endswith(".alpha") and k not in original)
    assert float(back[absent]) == back[absent.replace("alpha", "lora_down.weight")].shape[0]
    assert metadata["ss_base_model_version"] == "sd_v1" and metadata["ss_network_dim"] == "4"


def test_older_diffusers_names_convert_with_alpha_as_rank(kohya_files, loaded, tmp_path):
    peft, _ = read(loaded("sd1")[3])
    old = {}
    for key, tensor in peft.items():  # the attn-procs names of diffusers' first LoRA scripts
        key = key.replace(".lora_A.weight", ".lora.down.weight").replace(".lora_B.weight", ".lora.up.weight")
        for q in ("to_q", "to_k", "to_v"):
            key = key.replace(f".{q}.lora.", f".processor.{q}_lora.")
        old[key.replace(".to_out.0.lora.", ".processor.to_out_lora.")] = tensor
    old = {k.replace("q_proj.lora.", "q_proj.lora_linear_layer.").replace("fc1.lora.", "fc1.lora_linear_layer."): v
           for k, v in old.items() if not k.startswith("text_encoder") or "q_proj" in k or "fc1" in k}
    save_file(old, tmp_path / "old.safetensors")
    convert_lora(tmp_path / "old.safetensors", "kohya", tmp_path / "k.safetensors")
    (original, _), (back, _) = read(kohya_files["sd1"]), read(tmp_path / "k.safetensors")
    downs = [k for k in back if k.endswith(".lora_down.weight")]
    assert len(downs) == len([k for k in original if k.endswith(".lora_down.weight")]) - 4 * 3  # k/v/out/fc2 of TE
    for key in downs:
        assert same_bits(back[key], original[key])
        assert float(back[key.replace("lora_down.weight", "alpha")]) == back[key].shape[0]


def lycoris_file(kohya_file, path, suffixes):
    tensors, _ = read(kohya_file)
    name = min(k for k in tensors if k.startswith("lora_unet_")).split(".")[0]
    for suffix in suffixes:
        tensors[f"{name}.{suffix}"] = torch.ones(2, 2)
    if "hada_w1_a" in suffixes:
        del tensors[f"{name}.lora_up.weight"], tensors[f"{name}.lora_down.weight"]
    save_file(tensors, path)
    return path


@pytest.mark.parametrize("case, said", [
    ("loha", "LoHa module, which has no diffusers/peft form"),
    ("dora", "DoRA module"),
    ("checkpoint", "holds no LoRA weights"),
    ("text", "not a readable safetensors file"),
    ("missing", "does not exist"),
    ("already", "already in kohya format"),
    ("other model", "names no layer of an SD1.x/SD2.x/SDXL model"),
    ("exists", "already exists; pick another --save_to or add --overwrite"),
])
def test_bad_inputs_say_what_to_do_in_one_line(kohya_files, tmp_path, case, said):
    to, source = "diffusers", tmp_path / "in.safetensors"
    if case == "loha":
        lycoris_file(kohya_files["sd1"], source, ["hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"])
    elif case == "dora":
        lycoris_file(kohya_files["sd1"], source, ["dora_scale"])
    elif case == "checkpoint":
        tiny_checkpoint_file(source)
    elif case == "text":
        source.write_text("not a LoRA")
    elif case == "already":
        source, to = kohya_files["sd1"], "kohya"
    elif case == "other model":
        save_file({"lora_unet_down_blocks_7_attentions_0_proj_in.lora_down.weight": torch.ones(2, 8),
                   "lora_unet_down_blocks_7_attentions_0_proj_in.lora_up.weight": torch.ones(8, 2)}, source)
    elif case == "exists":
        source = kohya_files["sd1"]
        (tmp_path / "out.safetensors").write_bytes(b"")
    if case == "missing":
        source = tmp_path / "nowhere.safetensors"
    with pytest.raises(LorasmithError) as error:
        convert_lora(source, to, tmp_path / "out.safetensors")
    assert said in str(error.value) and "\n" not in str(error.value)


def test_unknown_target_is_refused():
    with pytest.raises(ToolError, match="--to must be one of diffusers, kohya"):
        convert_lora("x.safetensors", "comfy", "y.safetensors")


def test_command_line(kohya_files, tmp_path, capsys):
    code = main(["lora", "convert", str(kohya_files["sd1"]), "--to", "diffusers", "--save_to",
                 str(tmp_path / "d.safetensors")])
    out = capsys.readouterr().out
    assert code == 0 and "converted 97 modules of a sd1-tiny LoRA from kohya to diffusers keys" in out
    assert main(["lora", "convert", str(tmp_path / "d.safetensors"), "--to", "diffusers", "--save_to",
                 str(tmp_path / "again.safetensors")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "already in diffusers format" in err and err.count("\n") == 1

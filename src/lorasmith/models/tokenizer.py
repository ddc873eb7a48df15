"""The CLIP and T5 tokenizers, built offline from files that ship with lorasmith.

SD1.x, SD2.x and SDXL all use OpenAI CLIP's byte-level BPE (49,408 tokens). Only the merges
list ships (`assets/clip_bpe_merges.txt.gz`, the file OpenAI published with CLIP); the vocabulary
is derived from it exactly as CLIP does: the 256 byte symbols, the same with an end-of-word
marker, one token per merge, then the start and end tokens.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import json
import os
import tempfile
from importlib import resources
from pathlib import Path

VOCAB_SIZE = 49408
MAX_LENGTH = 77
_MERGE_COUNT = VOCAB_SIZE - 2 * 256 - 2


def _byte_symbols() -> list[str]:
    """CLIP's (and GPT-2's) mapping of the 256 bytes to printable unicode characters."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    codes = list(printable)
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return [chr(c) for c in codes]


@functools.lru_cache(maxsize=1)
def _vocab_files() -> tuple[str, str]:
    """vocab.json and merges.txt in a temporary folder named by their content, shared by processes."""
    raw = resources.files("lorasmith.models").joinpath("assets/clip_bpe_merges.txt.gz").read_bytes()
    folder = Path(tempfile.gettempdir()) / f"lorasmith-clip-{hashlib.sha256(raw).hexdigest()[:16]}"
    vocab_path, merges_path = folder / "vocab.json", folder / "merges.txt"
    if vocab_path.is_file() and merges_path.is_file():
        return str(vocab_path), str(merges_path)
    merges = gzip.decompress(raw).decode("utf-8").split("\n")[1 : _MERGE_COUNT + 1]
    symbols = _byte_symbols()
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    folder.mkdir(exist_ok=True)
    _write_atomically(merges_path, "#version: 0.2\n" + "\n".join(merges) + "\n")
    _write_atomically(vocab_path, json.dumps({token: i for i, token in enumerate(vocab)}))
    return str(vocab_path), str(merges_path)


def _write_atomically(path: Path, text: str) -> None:
    """Another process may be writing the same file: write aside, then rename into place."""
    handle, temp = tempfile.mkstemp(dir=path.parent)
    with os.fdopen(handle, "w", encoding="utf-8") as file:
        file.write(text)
    os.replace(temp, path)


def clip_tokenizer(pad_token: str = "<|endoftext|>"):
    """A transformers CLIPTokenizer; SD2's and SDXL's second encoder pad with '!' (id 0)."""
    from transformers import CLIPTokenizer

    vocab, merges = _vocab_files()
    return CLIPTokenizer(vocab, merges, pad_token=pad_token, model_max_length=MAX_LENGTH)


@functools.lru_cache(maxsize=1)
def _t5_folder() -> str:
    return str(resources.files("lorasmith.models").joinpath("assets/t5_tokenizer"))


def t5_tokenizer(max_length: int = 512):
    """T5 v1.1's SentencePiece tokenizer (Flux.1's T5-XXL: 32,000 pieces + 100 extra ids), from the
    files that ship with lorasmith (assets/t5_tokenizer, Apache-2.0; see its NOTICE)."""
    from transformers import T5TokenizerFast

    return T5TokenizerFast.from_pretrained(_t5_folder(), model_max_length=max_length, local_files_only=True)

"""weighted_captions: AUTOMATIC1111's attention syntax read into per-token weights of the text encoder's output."""

from __future__ import annotations

import pytest
import torch

from lorasmith.models.text import encode_prompts, tokenize
from lorasmith.models.tiny import tiny_base_model
from lorasmith.models.weighted_text import parse_attention, tokenize_weighted


@pytest.mark.parametrize("text, expected", [
    ("normal text", [("normal text", 1.0)]),
    ("an (important) word", [("an ", 1.0), ("important", 1.1), (" word", 1.0)]),
    ("(unbalanced", [("unbalanced", 1.1)]),
    ("\\(literal\\]", [("(literal]", 1.0)]),
    # AUTOMATIC1111's own example: the first "(" never closes, so everything after it counts 1.1 more
    ("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
     [("a ", 1.0), ("house", 1.573), (" ", 1.1), ("on", 1.0), (" a ", 1.1), ("hill", 0.55), (", sun, ", 1.1),
      ("sky", 1.4641), (".", 1.1)]),
])
def test_the_attention_syntax_is_read_as_automatic1111_reads_it(text, expected):
    parsed = parse_attention(text)
    assert [piece for piece, _ in parsed] == [piece for piece, _ in expected]
    assert [weight for _, weight in parsed] == pytest.approx([weight for _, weight in expected])


@pytest.mark.parametrize("family, length", [("sd1", 75), ("sdxl", 150)])
def test_weights_sit_on_their_tokens_and_plain_text_tokenizes_as_usual(family, length):
    base = tiny_base_model(family)
    ids, weights = tokenize_weighted(base, ["mychar, (red hair:1.5), smile"], length)
    plain = tokenize(base, ["mychar, red hair, smile"], length)
    assert all(torch.equal(a, b) for a, b in zip(ids, plain))  # the brackets are syntax, not tokens
    tokens = base.tokenizers[0]("mychar, red hair, smile", add_special_tokens=False).input_ids
    red = tokens.index(base.tokenizers[0]("red", add_special_tokens=False).input_ids[0])
    assert weights.shape == (1, length + 2)
    assert weights[0, 1 + red].item() == pytest.approx(1.5) and weights[0, 1 + red + 1].item() == pytest.approx(1.5)
    assert weights[0, 0] == 1.0 and weights[0, 1].item() == 1.0 and weights[0, -1] == 1.0
    context = encode_prompts(base, ["mychar, red hair, smile"], max_token_length=length).context
    assert context.shape[1] == weights.shape[1]  # one weight per position of the encoder's output

import torch

from lorasmith.models.text import encode_prompts, encode_tokens, sdxl_time_ids, tokenize
from lorasmith.models.tiny import tiny_base_model
from lorasmith.models.tokenizer import VOCAB_SIZE, clip_tokenizer


def test_offline_clip_tokenizer_matches_openai_clip_ids():
    tokenizer = clip_tokenizer()
    assert tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert len(tokenizer) == VOCAB_SIZE and tokenizer.model_max_length == 77
    padded = tokenizer("a cat", padding="max_length", max_length=77).input_ids
    assert len(padded) == 77 and padded[-1] == 49407  # SD1 pads with the end token
    assert clip_tokenizer("!")("a cat", padding="max_length", max_length=77).input_ids[-1] == 0  # SD2 / SDXL te2


def test_long_captions_are_truncated_to_77_tokens():
    base = tiny_base_model("sd1")
    ids = tokenize(base, ["tag, " * 200])[0]
    assert ids.shape == (1, 77) and ids[0, -1].item() == 49407


def test_long_captions_read_in_windows_of_75_tokens():
    for family in ("sd1", "sd2"):
        base = tiny_base_model(family)
        tokenizer = base.tokenizers[0]
        caption = "mychar, " + ", ".join(f"tag{i}" for i in range(30))  # 112 tokens
        windows = tokenize(base, [caption, "a cat"], max_token_length=150)[0]
        assert windows.shape == (2, 2, 77)
        start, end = tokenizer.bos_token_id, tokenizer.eos_token_id
        assert (windows[:, :, 0] == start).all() and (windows == end).any(dim=2).all()  # every window ends
        full = tokenize(base, [caption], max_token_length=225)[0][0]
        plain = tokenizer(caption).input_ids[1:-1]
        assert torch.cat([w[1:-1] for w in full]).tolist()[: len(plain)] == plain  # nothing lost or reordered
        assert full[0, -1] == end  # the caption goes on: the first window still closes


def test_long_captions_encode_to_start_windows_and_end_states():
    caption = "mychar, " + ", ".join(f"tag{i}" for i in range(30))  # 112 tokens: tag25 lies past 75
    for family in ("sd1", "sdxl"):
        base = tiny_base_model(family)
        with torch.no_grad():
            short = encode_prompts(base, ["mychar, 1girl", caption])
            long = encode_prompts(base, ["mychar, 1girl", caption], max_token_length=150)
            other_tail = encode_prompts(base, [caption.replace("tag25", "hat")], max_token_length=150)
            other_tail_75 = encode_prompts(base, [caption.replace("tag25", "hat")])
        assert long.context.shape[:2] == (2, 152)
        torch.testing.assert_close(long.context[0, :76], short.context[0, :76])  # a short caption reads the same
        assert not torch.allclose(other_tail.context, long.context[1:])  # tags past 75 tokens now count
        torch.testing.assert_close(other_tail_75.context, short.context[1:])  # at 75 they are cut
        if family == "sdxl":
            assert long.pooled.shape == short.pooled.shape


def test_clip_skip_takes_an_earlier_layer_with_the_final_norm():
    base = tiny_base_model("sd1")
    ids = tokenize(base, ["mychar, 1girl"])
    with torch.no_grad():
        last = encode_tokens(base, ids, clip_skip=1).context
        skip2 = encode_tokens(base, ids, clip_skip=2).context
        hidden = base.text_encoders[0](ids[0], output_hidden_states=True).hidden_states[-2]
        expected = base.text_encoders[0].final_layer_norm(hidden)
    assert not torch.allclose(last, skip2)
    torch.testing.assert_close(skip2, expected)


def test_sdxl_concatenates_both_encoders_and_pools_the_second():
    base = tiny_base_model("sdxl")
    with torch.no_grad():
        text = encode_prompts(base, ["mychar", "1girl"])
    width = sum(e.config.hidden_size for e in base.text_encoders)
    assert text.context.shape == (2, 77, width)
    assert text.pooled.shape == (2, base.text_encoders[1].config.projection_dim)
    assert sdxl_time_ids((768, 512), (0, 32), (512, 512)).tolist() == [768, 512, 0, 32, 512, 512]

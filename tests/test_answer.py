"""Streaming an answer (runtime/src/answer.h through Session.generate): stop
strings cut the answer before them and no piece shows a part of one that is
cut later; closing the stream early ends the answer as "cancelled" with the
turn closed, so the conversation goes on; pieces are whole characters."""

import pytest

from htsparse_llama import Model

pytestmark = pytest.mark.real_model

QUESTION = "Write the numbers from one to twenty in words, separated by commas."


@pytest.fixture(scope="module")
def smollm(smollm_gguf):
    return Model(smollm_gguf, n_ctx=1024, n_threads=2)


def answer(model, max_tokens=48, **kwargs):
    s = model.session()
    s.add_message("user", QUESTION)
    pieces = list(s.generate(max_tokens=max_tokens, temperature=0, **kwargs))
    return s, pieces


def test_stop_string_is_never_streamed(smollm):
    _, pieces = answer(smollm)
    full = "".join(pieces)
    assert len(full) > 20
    stop = full[len(full) // 2 : len(full) // 2 + 4]  # spans token boundaries somewhere in the middle
    s, cut = answer(smollm, stop=[stop])
    assert "".join(cut) == full[: full.index(stop)] and s.finish_reason == "stop"
    shown = ""
    for piece in cut:  # every prefix shown so far is a prefix of the final answer: nothing taken back
        shown += piece
        assert stop not in shown and full.startswith(shown)


def test_closing_the_stream_cancels_and_the_conversation_goes_on(smollm):
    s = smollm.session()
    s.add_message("user", QUESTION)
    stream = s.generate(max_tokens=48, temperature=0)
    first = next(stream)
    stream.close()
    assert first and s.finish_reason == "cancelled"
    n_past = s.n_past
    s.add_message("user", "Thanks.")
    assert s.n_past > n_past and s.generate(max_tokens=4, temperature=0, stream=False) is not None
    tail = smollm.detokenize(s.tokens(), special=True)
    assert tail.count("<|im_end|>") >= 3  # user, the cancelled answer's closed turn, user


def test_length_and_whole_characters(smollm):
    s, pieces = answer(smollm, max_tokens=5)
    assert s.finish_reason == "length" and "\ufffd" not in "".join(pieces)
    assert s.stats().decode_tok_s and s.stats().ttft_ms > 0

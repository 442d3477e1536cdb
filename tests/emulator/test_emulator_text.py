"""Issue 12: the text parameters (numerals, smart_format, redact, replace, search, filler_words,
profanity_filter, dictation, keyterm, keywords) change the words as the service documents, or are refused
at the handshake with its 400 body; seen through the real deepgram-sdk over loopback."""
from __future__ import annotations

import asyncio
import warnings

import pytest
from helpers.emulator import BOUND, SDK_PARAMS, call_audio, env_for, finals, refused, sdk_stream

from rtaa_cli.emulator.textfmt import number_digits

with warnings.catch_warnings():  # the SDK imports websockets.legacy (DeprecationWarning)
    warnings.simplefilter("ignore", DeprecationWarning)
    from deepgram import AsyncDeepgramClient
    from deepgram.listen.v1.types import ListenV1Configure, ListenV1ConfigureFailure, ListenV1ConfigureSuccess


# English number words, written out here (not imported) so the test does not share the emulator's table.
SPOKEN_NUMBERS = {"zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
                  "twenty", "hundred", "thousand"}


@pytest.mark.parametrize("spoken, digits", [
    ("four one one", "411"), ("nine hundred", "900"), ("twenty twenty four", "2024"), ("twelve", "12"),
    ("nineteen eighty four", "1984"), ("two hundred thousand", "200000"), ("four oh four", "404"),
    ("three thousand two hundred five", "3205"), ("ninety nine", "99"),
])
def test_number_words_are_read_as_their_digits(spoken, digits):
    assert number_digits(spoken.split()) == digits


def test_a_run_of_scales_stays_a_bounded_number():
    # 2200 "hundred"s would be 100**2200 (4400 digits: str() refuses it); read as many numbers instead.
    digits = number_digits(["one"] + ["hundred"] * 2200)
    assert digits.isdigit() and len(digits) < 20000


def query(**params) -> dict:
    """Parameters the SDK's connect() does not name (filler_words), sent as its extra query parameters."""
    return {"request_options": {"additional_query_parameters": params}}


def final_words(messages: list) -> list:
    return [w for m in finals(messages) for w in m.channel.alternatives[0].words]


def texts(messages: list) -> list[str]:
    return [w.word for w in final_words(messages)]


def test_keyterm_is_heard_and_numerals_turn_number_words_into_digits(emu_factory):
    emu = emu_factory(text_mark=False)
    audio = call_audio(8.0)
    plain = sdk_stream(emu, audio, keyterm="four one one")
    words = final_words(plain)
    at = [i for i in range(len(words) - 2) if [w.word for w in words[i:i + 3]] == ["four", "one", "one"]]
    assert at, "the keyterm is recognised in the windows with room for it"
    for option in ({"numerals": True}, {"smart_format": True}):
        formatted = final_words(sdk_stream(emu, audio, keyterm="four one one", **option))
        assert not SPOKEN_NUMBERS & {w.word for w in formatted}, option
        for i in at:  # the run became one word of digits, spanning the spoken words' time
            match = [w for w in formatted if w.start == words[i].start]
            assert match and match[0].word.startswith("411") and match[0].word.isdigit(), (option, match)
    if "punctuated_word" in {k for w in words for k in w.model_dump(exclude_none=True)}:
        raise AssertionError("no punctuation asked for, none given")


def test_redact_numbers_pci_and_ssn(emu_factory):
    emu = emu_factory(text_mark=False)
    audio = call_audio(8.0)
    card = "4111 1111 1111 1111"
    assert "4111" in texts(sdk_stream(emu, audio, keyterm=card))
    for redact in ("pci", "numbers", "true"):
        received = sdk_stream(emu, audio, keyterm=card, redact=redact, punctuate=True)
        words = final_words(received)
        assert "*" in [w.word for w in words] and not any(w.word.isdigit() for w in words), redact
        assert all("1111" not in m.channel.alternatives[0].transcript for m in finals(received))
        assert all(w.punctuated_word.startswith("*") for w in words if w.word == "*")
    # Three digits are a number to redact, not a card number or an SSN.
    short = "two three four"
    assert texts(sdk_stream(emu, audio, keyterm=short, redact="ssn")).count("two") >= 1
    assert texts(sdk_stream(emu, audio, keyterm=short, redact="pci")).count("two") >= 1
    assert "two" not in texts(sdk_stream(emu, audio, keyterm=short, redact="numbers"))


@pytest.mark.parametrize("params, fragment", [
    ({"redact": "pii"}, "not supported by the rtaa emulator"),
    ({"redact": "phi"}, "not supported by the rtaa emulator"),
    ({"redact": "secret"}, "Invalid 'redact' value of 'secret'."),
    ({"redact": "pci", "language": "es"}, "only supported for English"),
    ({"replace": "nocolon"}, "Invalid 'replace' value"),
    ({"callback": "http://127.0.0.1:9/cb"}, "Callbacks are not supported"),
    ({"version": "1999-01-01.0"}, "No such model"),
    ({"model": "nova-2", "keywords": "refund:high"}, "Invalid 'keywords' value"),
    ({"keyterm": ["word " * 300, "word " * 201]}, "limited to 500 tokens"),
    ({"search": [f"term{i}" for i in range(51)]}, "at most 50"),
])
def test_text_parameters_the_emulator_cannot_honour_are_refused_with_the_services_400(emu_factory, params, fragment):
    status, body, dg_error = refused(emu_factory(), **params)
    assert status == 400 and body["err_code"] == "Bad Request" and fragment in body["err_msg"], body
    assert dg_error == body["err_msg"]


def test_keyterms_are_refused_by_the_sphinx_engine(emu_factory):
    # pocketsphinx decodes with its own fixed language model: no effect is possible, so no silent accept.
    status, body, _ = refused(emu_factory(engine="sphinx"), keyterm="rtaa")
    assert status == 400 and "sphinx engine" in body["err_msg"]


def test_version_latest_and_the_models_own_version_are_accepted(emu_factory):
    emu = emu_factory(text_mark=False)
    for version in ("latest", "2025-07-31.0"):
        assert finals(sdk_stream(emu, call_audio(2.0), version=version))


def test_replace_rewrites_whole_words_and_phrases(emu_factory):
    emu = emu_factory(text_mark=False)
    audio = call_audio(8.0)
    words = final_words(sdk_stream(emu, audio))
    common = max({w.word for w in words}, key=[w.word for w in words].count)
    replaced = final_words(sdk_stream(emu, audio, replace=f"{common}:Rtaa"))
    assert common not in [w.word for w in replaced]
    assert [(w.start, w.end) for w in replaced if w.word == "Rtaa"] == \
        [(w.start, w.end) for w in words if w.word == common]
    # A phrase: its words become the replacement, spanning their time.
    phrase = f"{words[0].word} {words[1].word}"
    replaced = final_words(sdk_stream(emu, audio, replace=f"{phrase}:one-two"))
    first = replaced[0]
    assert first.word == "one-two" and first.start == words[0].start and first.end == words[1].end
    assert len(replaced) < len(words)


def test_search_reports_hits_with_their_times(emu_factory):
    emu = emu_factory(text_mark=False)
    audio = call_audio(8.0)
    words = final_words(sdk_stream(emu, audio))
    target = words[2].word
    received = sdk_stream(emu, audio, search=[target, "epistemology"])
    for m in finals(received):
        search = m.channel.model_extra["search"]  # not in the SDK's live model; kept as an extra field
        assert [s["query"] for s in search] == [target, "epistemology"] and search[1]["hits"] == []
        alt_words = m.channel.alternatives[0].words
        assert [(h["start"], h["end"]) for h in search[0]["hits"]] == \
            [(w.start, w.end) for w in alt_words if w.word == target]
        assert all(h["snippet"] == target and 0 < h["confidence"] <= 1 for h in search[0]["hits"])
    assert sum(len(m.channel.model_extra["search"][0]["hits"]) for m in finals(received)) >= 1
    assert all("search" not in (m.channel.model_extra or {}) for m in finals(sdk_stream(emu, call_audio(3.0))))


def test_filler_words_only_with_filler_words_true_on_nova(emu_factory):
    emu = emu_factory(text_mark=False)
    audio = call_audio()
    assert {"uh", "um"} & set(texts(sdk_stream(emu, audio, **query(filler_words="true"))))
    assert not {"uh", "um"} & set(texts(sdk_stream(emu, audio)))
    assert not {"uh", "um"} & set(texts(sdk_stream(emu, audio, model="base", **query(filler_words="true"))))


def test_profanity_filter_masks_with_asterisks(emu_factory):
    emu = emu_factory(text_mark=False)
    audio = call_audio(8.0)
    assert "damn" in texts(sdk_stream(emu, audio, keyterm="damn"))
    masked = texts(sdk_stream(emu, audio, keyterm="damn", profanity_filter=True))
    assert "damn" not in masked and "****" in masked


def test_dictation_turns_spoken_punctuation_into_marks(emu_factory):
    emu = emu_factory(text_mark=False)
    audio = call_audio(8.0)
    assert "comma" in texts(sdk_stream(emu, audio, keyterm="okay comma sure", punctuate=True))
    received = sdk_stream(emu, audio, keyterm="okay comma sure", punctuate=True, dictation=True)
    words = final_words(received)
    assert "comma" not in [w.word for w in words]
    assert any(w.word == "okay" and w.punctuated_word.endswith(",") for w in words)
    assert any(", sure" in m.channel.alternatives[0].transcript.lower() for m in finals(received))


def test_keywords_boost_and_suppress(emu_factory):
    emu = emu_factory(text_mark=False)
    audio = call_audio()
    plain = texts(sdk_stream(emu, audio, model="nova-2"))
    common = max(set(plain), key=plain.count)
    boosted = texts(sdk_stream(emu, audio, model="nova-2", keywords=["refund:2", f"{common}:-5"]))
    assert "refund" in boosted and common not in boosted and "refund" not in plain


def test_configure_replaces_keyterms_and_toggles_numerals_mid_stream(emu_factory):
    """The SDK's ListenV1Configure: ``keyterms`` replace the stream's list, ``features.numerals`` toggles
    numerals; audio before the Configure is formatted as before it."""
    emu = emu_factory(text_mark=False)
    audio = call_audio(16.0)
    half = 8 * 16000  # 8 s of 8 kHz linear16

    async def run() -> list:
        client = AsyncDeepgramClient(api_key="k", environment=env_for(emu))
        got = []
        async with client.listen.v1.connect(**SDK_PARAMS, keyterm="refund") as conn:
            for off in range(0, half, 5760):
                await conn.send_media(audio[off:min(off + 5760, half)])
            await conn.send_finalize()
            await conn.send_configure(ListenV1Configure(keyterms=["four one one"], features={"numerals": True}))
            for off in range(half, len(audio), 5760):
                await conn.send_media(audio[off:off + 5760])
            too_many = ListenV1Configure(keyterms=["word " * 300, "word " * 201])
            await conn.send_configure(too_many)
            await conn.send_close_stream()
            async for message in conn:
                got.append(message)
        return got

    got = asyncio.run(asyncio.wait_for(run(), BOUND))
    cut = next(i for i, m in enumerate(got) if isinstance(m, ListenV1ConfigureSuccess))
    assert got[cut].keyterms == ["four one one"]
    before = [w.word for m in finals(got[:cut]) for w in m.channel.alternatives[0].words]
    after = [w.word for m in finals(got[cut:]) for w in m.channel.alternatives[0].words]
    assert "refund" in before and not any(w.isdigit() for w in before)
    assert "refund" not in after and any(w.startswith("411") for w in after)
    assert not SPOKEN_NUMBERS & set(after)
    failure = [m for m in got if isinstance(m, ListenV1ConfigureFailure)]
    assert [f.code for f in failure] == ["CONFIGURE_KEYTERM_LIMIT_EXCEEDED"]


def test_hostile_text_parameter_values_are_transcribed_not_crashed_on(emu_factory):
    """Control characters, emoji and separators in keyterm/replace/search/keywords values: the stream runs
    and closes 1000 (no internal error), and what the client asked for comes back as sent."""
    emu = emu_factory(text_mark=False)
    odd = "a\x00b\r\n\u2028\U0001f600"
    first = odd.split()[0]  # "a\x00b": CR/LF and U+2028 separate a keyterm's words
    received = sdk_stream(emu, call_audio(8.0), keyterm=odd, replace=[f"{first}:Z\x00\U0001f600", "x:"],
                          search=[odd, "\ufffd"], numerals=True, redact="numbers", punctuate=True)
    words = [w.word for w in final_words(received)]
    assert first not in words and "Z\x00\U0001f600" in words and "\U0001f600" in words  # heard, then replaced
    assert [s["query"] for s in finals(received)[0].channel.model_extra["search"]] == [odd, "\ufffd"]
    emu.wait_quiet()
    totals = emu.stats()["totals"]
    assert totals["closes_1000"] == 1 and totals["close_codes"] == {"1000": 1}

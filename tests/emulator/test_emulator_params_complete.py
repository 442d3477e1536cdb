"""Issue 12: every query parameter the installed deepgram-sdk can send to ``/v1/listen`` is handled.

The parameters come from the SDK itself (the live client's ``connect`` signature, and the pre-recorded
client's, whose extra parameters a client can still put on the live URL through ``additional_query_parameters``),
not from a list written here: a parameter a future SDK adds fails these tests until params.py handles it and
docs/emulator.md's fidelity table has a row for it.
"""
from __future__ import annotations

import inspect
import re
import typing
import warnings

import pytest

from rtaa_cli.emulator.params import NO_EFFECT_PARAMS, HandshakeRejected, StreamParams, parse_listen_params
from helpers.paths import ROOT

with warnings.catch_warnings():  # the SDK imports websockets.legacy (DeprecationWarning)
    warnings.simplefilter("ignore", DeprecationWarning)
    from deepgram.listen.v1.client import AsyncV1Client, V1Client
    from deepgram.listen.v1.media.client import MediaClient

NOT_QUERY = {"self", "authorization", "request_options", "url", "request"}  # headers, options, the REST body


def _query_names(fn) -> set[str]:
    return set(inspect.signature(fn).parameters) - NOT_QUERY


LIVE = _query_names(AsyncV1Client.connect)
PRERECORDED_ONLY = (_query_names(MediaClient.transcribe_url) & _query_names(MediaClient.transcribe_file)) - LIVE
SDK_PARAMS = sorted(LIVE | PRERECORDED_ONLY)
HINTS = {**typing.get_type_hints(MediaClient.transcribe_url), **typing.get_type_hints(AsyncV1Client.connect)}
BASE = [("model", "nova-3"), ("encoding", "linear16"), ("sample_rate", "8000")]


def _fidelity_rows() -> list[tuple[set[str], str]]:
    """(parameter names in the first column, the emulator's column) for each row of the fidelity table."""
    text = (ROOT / "docs" / "emulator.md").read_text()
    section = text.split("\n## Fidelity", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        if line.startswith("| ") and not line.startswith("| parameter"):
            cells = line.split(" | ")  # a `|` inside a cell is escaped (`\|`), never spaced
            rows.append((set(re.findall(r"`([a-z_]+)", cells[0])), cells[-1]))
    return rows


ROWS = _fidelity_rows()


def _literals(hint) -> list[str]:
    """The string values a typed SDK option allows (its ``Literal`` members), in order."""
    if typing.get_origin(hint) is typing.Literal:
        return [str(v) for v in typing.get_args(hint)]
    return [v for arg in typing.get_args(hint) for v in _literals(arg)]


def _sample(name: str) -> str:
    """A value the SDK's type for ``name`` allows."""
    literals = _literals(HINTS.get(name))
    if literals:
        return literals[0]
    args = typing.get_args(HINTS.get(name))
    return "1" if float in args or int in args else "true"


def test_the_sdk_enumeration_is_not_empty_and_both_live_clients_agree():
    assert _query_names(V1Client.connect) == LIVE
    # Anchors that the introspection reads what it should (a rename in the SDK must not empty the check).
    assert {"model", "encoding", "diarize_model", "keyterm", "utterance_end_ms"} <= LIVE and len(LIVE) >= 30
    assert {"summarize", "topics", "intents", "sentiment", "detect_language"} <= PRERECORDED_ONLY


@pytest.mark.parametrize("name", SDK_PARAMS)
def test_every_sdk_parameter_has_a_fidelity_row(name):
    assert any(name in names for names, _ in ROWS), f"docs/emulator.md Fidelity has no row for `{name}`"


@pytest.mark.parametrize("name", SDK_PARAMS)
def test_every_sdk_parameter_has_an_effect_a_refusal_or_is_declared_without_effect(name):
    """An effect: some value changes the parsed stream or is refused at the handshake. A parameter
    params.py does not know is accepted and changes nothing, which only NO_EFFECT_PARAMS may do."""
    if name in NO_EFFECT_PARAMS:
        return
    try:
        parsed = parse_listen_params([*BASE, (name, "bogus\u00e9")])
    except HandshakeRejected:
        return
    assert parsed != parse_listen_params(BASE), f"`{name}` is accepted and does nothing, undeclared"


@pytest.mark.parametrize("name", sorted(NO_EFFECT_PARAMS))
def test_parameters_declared_without_effect_are_accepted_change_nothing_and_say_so(name):
    assert parse_listen_params([*BASE, (name, _sample(name))]) == parse_listen_params(BASE)
    emulator_cells = [cell for names, cell in ROWS if name in names]
    assert emulator_cells and all("accepted without effect" in cell for cell in emulator_cells), name


def test_rows_saying_accepted_without_effect_name_only_declared_parameters():
    for names, cell in ROWS:
        if "accepted without effect" in cell:
            assert names & set(SDK_PARAMS) <= NO_EFFECT_PARAMS, (names, cell)


@pytest.mark.parametrize("name", [n for n in SDK_PARAMS if _literals(HINTS.get(n))])
def test_every_value_the_sdk_types_allow_is_accepted_or_refused_as_an_emulator_limit(name):
    """model, encoding, redact, diarize_model, ...: a value the SDK offers is one the service takes, so the
    emulator accepts it, or refuses it saying that the refusal is its own limit (never as if the value were
    wrong), or gives the service's answer for a pre-recorded-only feature."""
    for value in _literals(HINTS[name]):
        try:
            parsed = parse_listen_params([*BASE, (name, value)])
        except HandshakeRejected as exc:
            assert "rtaa emulator" in exc.err_msg or "not available for streaming" in exc.err_msg \
                or exc.status == 403, (name, value, exc.err_msg)
        else:
            assert isinstance(parsed, StreamParams)

"""Query-string validation for ``/v1/listen``, as Deepgram does it at the handshake (docs/deepgram-protocol.md §1).

Pure code: ``parse_listen_params(pairs)`` returns a :class:`StreamParams` or raises
:class:`HandshakeRejected` carrying the HTTP status and Deepgram's error body fields.
Parameters the emulator does not know are accepted unchecked, as Deepgram accepts them. What each known
parameter does is in docs/emulator.md (Fidelity); text parameters become a :class:`TextOptions`
(textfmt.py), engine-dependent refusals are :func:`engine_refusal`.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from rtaa_cli.emulator.textfmt import TextOptions

BAD_REQUEST = "Bad Request"

# Encodings the emulator decodes (raw, sample-based) vs. encodings Deepgram knows but the emulator does not.
DECODABLE_ENCODINGS = {"linear16": 2, "mulaw": 1, "alaw": 1}
OTHER_DEEPGRAM_ENCODINGS = {"linear32", "flac", "amr-nb", "amr-wb", "opus", "ogg-opus", "speex", "g729"}

# model name -> (model_info.name, version, arch). The uuids are derived from the name (see messages.py).
# Assumption [??]: names/versions imitate the wire capture in docs/deepgram-protocol.md §3; exact values are not contractual.
MODELS: dict[str, tuple[str, str, str]] = {
    "nova-3": ("general-nova-3", "2025-07-31.0", "nova-3"),
    "nova-3-general": ("general-nova-3", "2025-07-31.0", "nova-3"),
    "nova-3-medical": ("medical-nova-3", "2025-07-31.0", "nova-3"),
    "nova-2": ("general-nova", "2024-01-18.26916", "nova-2"),
    "nova": ("general-nova", "2023-11-14.3290", "nova"),
    "enhanced": ("general-enhanced", "2022-05-18.0", "enhanced"),
    "base": ("general", "2021-11-10.1", "base"),
}
for _domain in ("general", "meeting", "phonecall", "finance", "conversationalai", "voicemail", "video",
                "medical", "drivethru", "automotive", "atc"):
    MODELS.setdefault(f"nova-2-{_domain}", (f"2-{_domain}-nova", "2024-02-07.20824", "nova-2"))
for _domain in ("general", "meeting", "phonecall", "finance"):
    MODELS.setdefault(f"enhanced-{_domain}", (f"{_domain}-enhanced", "2022-05-18.0", "enhanced"))
    MODELS.setdefault(f"base-{_domain}", (f"{_domain}", "2021-11-10.1", "base"))
for _domain in ("general", "phonecall", "medical"):
    MODELS.setdefault(f"nova-{_domain}", (f"{_domain}-nova", "2023-11-14.3290", "nova"))
# The SDK's model names without a tier are the base tier's domain models.
for _domain in ("meeting", "phonecall", "finance", "conversationalai", "voicemail", "video"):
    MODELS.setdefault(_domain, (_domain, "2021-11-10.1", "base"))
# Assumption [??]: the real default when `model` is absent; the SDK always sends one.
DEFAULT_MODEL = "base"

# BCP-47-looking tags (en, en-US, pt-BR, zh-Hant...). Anything else (e.g. "english") is a 400.
_LANGUAGE_RE = re.compile(r"^[a-z]{2,3}(-[A-Za-z0-9]{2,8})*$")
# Models that only do English (domain-tuned nova-2/enhanced/base and nova-3-medical).
_ENGLISH_ONLY = re.compile(r"^(nova-2-(?!general).+|nova-3-medical|nova-(phonecall|medical)|enhanced-.+|base-.+"
                           r"|meeting|phonecall|finance|conversationalai|voicemail|video)$")

_BOOL_PARAMS = ("interim_results", "punctuate", "smart_format", "multichannel", "vad_events", "numerals",
                "profanity_filter", "dictation", "diarize", "mip_opt_out", "detect_entities", "paragraphs",
                "utterances", "filler_words", "no_delay", "topics", "intents", "sentiment", "measurements")
# Parameters accepted (and validated) that change nothing in the emulator's messages; why, for each, is in
# docs/emulator.md (Fidelity). Every other parameter a Deepgram SDK can send has an effect or a refusal
# (tests/emulator/test_emulator_params_complete.py holds the SDK's parameters against this).
NO_EFFECT_PARAMS = frozenset({"mip_opt_out", "no_delay", "paragraphs", "utterances", "utt_split", "callback_method",
                              "sentiment", "custom_topic", "custom_topic_mode", "custom_intent", "custom_intent_mode",
                              "measurements"})
_CALLBACK_METHODS = ("POST", "GET", "PUT", "DELETE")  # the SDK's ListenV1CallbackMethod
_CUSTOM_MODES = ("extended", "strict")
# redact values -> the emulator's rules (textfmt.REDACT_RULES); "false" is none.
_REDACT_RULES = {"true": "numbers", "numbers": "numbers", "aggressive_numbers": "numbers", "pci": "pci",
                 "ssn": "ssn", "credit_card": "pci", "cvv": "pci"}
# Values the service accepts that need a named-entity recogniser the emulator does not have (groups and
# entity types of Deepgram's Supported Entity Types page; the list there is longer [??]).
_REDACT_UNSUPPORTED = {"pii", "phi", "account_number", "age", "bank_account", "blood_type", "condition",
                       "credit_card_expiration", "date", "date_interval", "dob", "driver_license", "drug",
                       "email_address", "healthcare_number", "injury", "ip_address", "location",
                       "location_address", "location_city", "location_state", "location_zip", "medical_process",
                       "money", "name", "name_family", "name_given", "numerical_pii", "organization",
                       "passport_number", "password", "phone_number", "routing_number", "statistics", "time",
                       "url", "username", "vehicle_id"}
_NOVA = ("nova", "nova-2", "nova-3")
DEFAULT_ENDPOINTING_MS = 10
KEYTERM_TOKEN_LIMIT = 500  # the keyterm query parameter's limit (deepgram-sdk 7.16, ListenV1Configure)
SEARCH_LIMIT = 50  # "You can include up to 50 search terms per request" (Deepgram's Search docs)


class HandshakeRejected(Exception):
    """A handshake Deepgram would refuse: HTTP ``status``, body ``err_code``/``err_msg``."""

    def __init__(self, status: int, err_code: str, err_msg: str) -> None:
        super().__init__(err_msg)
        self.status = status
        self.err_code = err_code
        self.err_msg = err_msg


def _bad(msg: str) -> HandshakeRejected:
    return HandshakeRejected(400, BAD_REQUEST, msg)


def _invalid(name: str, value: str) -> HandshakeRejected:
    # Same wording as the real dg-error seen for utterance_end_ms (docs/deepgram-protocol.md §1).
    return _bad(f"Invalid '{name}' value of '{value}'.")


@dataclass(frozen=True)
class StreamParams:
    model: str = DEFAULT_MODEL
    language: str = "en"
    encoding: str | None = None  # None = containerised audio (only WAV is understood)
    sample_rate: int | None = None
    channels: int = 1
    multichannel: bool = False
    interim_results: bool = False
    punctuate: bool = False
    smart_format: bool = False
    endpointing_ms: int | None = DEFAULT_ENDPOINTING_MS  # None = endpointing=false
    utterance_end_ms: int | None = None
    vad_events: bool = False
    keyterms: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    extra: dict[str, str] = field(default_factory=dict)
    diarize: bool = False  # diarize=true or diarize_model=v1|latest: words[].speaker
    language_hints: tuple[str, ...] = ()  # language_hint, normalised (with language=multi)
    detect_entities: bool = False  # entities[] on finals
    alternatives: int = 1  # alternatives=N (models before nova-2 only)
    text: TextOptions = TextOptions()  # filler_words, profanity_filter, numerals, dictation, redact, replace
    search: tuple[str, ...] = ()  # channel.search queries
    boosted: tuple[tuple[str, ...], ...] = ()  # keyterm phrases and keywords with a positive (or no) boost
    suppressed: frozenset[str] = frozenset()  # keywords with a negative boost

    @property
    def multilingual(self) -> bool:
        return self.language == "multi"

    @property
    def interaction_id(self) -> str | None:
        """rtaa's convention: ``tag``, else ``extra=interaction_id:<id>``."""
        if self.tags:
            return self.tags[0]
        return self.extra.get("interaction_id")

    @property
    def punctuated(self) -> bool:
        # Entity detection turns punctuation on by default (Deepgram's Entity Detection docs).
        return self.punctuate or self.smart_format or self.detect_entities


def _one(pairs: dict[str, list[str]], name: str) -> str | None:
    values = pairs.get(name)
    if not values:
        return None
    return values[-1]


def _bool(pairs: dict[str, list[str]], name: str, default: bool = False) -> bool:
    value = _one(pairs, name)
    if value is None:
        return default
    if value == "true":
        return True
    if value == "false":
        return False
    raise _invalid(name, value)  # "True"/"False"/"1" are rejected: Deepgram wants lowercase literals


def _int(pairs: dict[str, list[str]], name: str, lo: int, hi: int) -> int | None:
    value = _one(pairs, name)
    if value is None:
        return None
    # ASCII digits only ("²".isdigit() is true, int("²") raises), and short enough for int() (4300 digits)
    if not (value.isascii() and value.isdigit() and len(value) <= 9) or not lo <= int(value) <= hi:
        raise _invalid(name, value)
    return int(value)


def parse_listen_params(query: list[tuple[str, str]]) -> StreamParams:
    """Validate a decoded query string (``urllib.parse.parse_qsl`` pairs, repeats kept)."""
    pairs: dict[str, list[str]] = {}
    for key, value in query:
        pairs.setdefault(key, []).append(value)

    for name in _BOOL_PARAMS:
        _bool(pairs, name)

    model = _one(pairs, "model") or DEFAULT_MODEL
    if model == "custom":
        # The SDK lists it for a project's own trained models; the emulator has none.
        raise _bad("Custom models are not available in the rtaa emulator.")
    if model not in MODELS:
        raise _bad("No such model/language/tier combination found.")
    language = _one(pairs, "language") or "en"
    if language != "multi" and not _LANGUAGE_RE.match(language):
        raise _bad("No such model/language/tier combination found.")
    if language == "multi" and model not in ("nova-3", "nova-3-general", "nova-2", "nova-2-general"):
        raise _bad("No such model/language/tier combination found.")
    if _ENGLISH_ONLY.match(model) and not (language == "en" or language.startswith("en-")):
        raise _bad("No such model/language/tier combination found.")

    encoding = _one(pairs, "encoding")
    if encoding is not None and encoding not in DECODABLE_ENCODINGS:
        if encoding in OTHER_DEEPGRAM_ENCODINGS:
            # Deepgram accepts these; the emulator cannot decode them, so it says so at the handshake.
            raise _bad(f"Encoding '{encoding}' is not supported by the rtaa emulator "
                       f"(use linear16, mulaw or alaw).")
        raise _invalid("encoding", encoding)
    sample_rate = _int(pairs, "sample_rate", 1000, 192000)
    if encoding is not None and sample_rate is None:
        raise _bad("Missing 'sample_rate': it is required when 'encoding' is set.")
    channels = _int(pairs, "channels", 1, 8) or 1

    endpointing_ms: int | None = DEFAULT_ENDPOINTING_MS
    raw_endpointing = _one(pairs, "endpointing")
    if raw_endpointing == "false":
        endpointing_ms = None
    elif raw_endpointing == "true":
        endpointing_ms = DEFAULT_ENDPOINTING_MS
    elif raw_endpointing is not None:
        endpointing_ms = _int(pairs, "endpointing", 0, 60000)

    interim = _bool(pairs, "interim_results")
    utterance_end_ms = _int(pairs, "utterance_end_ms", 0, 60000)
    if utterance_end_ms is not None and utterance_end_ms < 1000:
        raise _invalid("utterance_end_ms", str(utterance_end_ms))
    if utterance_end_ms is not None and not interim:
        raise _bad("'utterance_end_ms' requires 'interim_results=true'.")

    keyterms = tuple(pairs.get("keyterm", ()))
    if pairs.get("keywords") and MODELS[model][2] == "nova-3":
        raise _bad("Keywords are not supported with Nova-3; use 'keyterm' instead.")
    if keyterms and MODELS[model][2] != "nova-3":
        raise _bad("Keyterm prompting is only supported with Nova-3 models.")
    if sum(len(term.split()) for term in keyterms) > KEYTERM_TOKEN_LIMIT:
        raise _bad(f"Keyterm prompting is limited to {KEYTERM_TOKEN_LIMIT} tokens.")  # text [??]
    boosted = [tuple(term.lower().split()) for term in keyterms if term.split()]
    suppressed = set()
    for kw in pairs.get("keywords", ()):
        word, sep, boost = kw.rpartition(":")
        if not sep:
            word, boost = kw, ""
        elif not re.fullmatch(r"-?\d+(\.\d+)?", boost) or not word:
            raise _invalid("keywords", kw)
        if boost.startswith("-"):
            suppressed.update(word.lower().split())  # a negative intensifier suppresses the word
        elif word.split():
            boosted.append(tuple(word.lower().split()))

    rules = set()
    for value in pairs.get("redact", ()):
        if value in _REDACT_UNSUPPORTED:
            # The service redacts these with an entity recogniser; the emulator has none, so it says so.
            raise _bad(f"Redaction of '{value}' is not supported by the rtaa emulator (use numbers, pci or ssn).")
        if value != "false" and value not in _REDACT_RULES:
            raise _invalid("redact", value)
        if value != "false":
            rules.add(_REDACT_RULES[value])
    english = language == "en" or language.startswith("en-")
    if rules and not english:
        raise _bad("Redaction is only supported for English when streaming.")  # Redaction docs; text [??]
    replace = []
    for item in pairs.get("replace", ()):
        find, sep, repl = item.partition(":")
        if not sep or not find.split():
            raise _invalid("replace", item)
        replace.append((tuple(find.lower().split()), tuple(repl.split())))
    search = tuple(q for q in pairs.get("search", ()) if q.split())
    if len(search) > SEARCH_LIMIT:
        raise _bad(f"Too many search terms: at most {SEARCH_LIMIT} are accepted.")  # text [??]
    if _one(pairs, "callback") is not None:
        raise _bad("Callbacks are not supported by the rtaa emulator (it does not POST results anywhere).")
    callback_method = _one(pairs, "callback_method")
    if callback_method is not None and callback_method not in _CALLBACK_METHODS:
        raise _invalid("callback_method", callback_method)
    _refuse_prerecorded_only(pairs)
    version = _one(pairs, "version")
    if version is not None and version not in ("latest", MODELS[model][1]):
        raise _bad("No such model/language/tier combination found.")
    diarize_model = _one(pairs, "diarize_model")
    if diarize_model is not None and diarize_model not in ("v1", "latest"):
        raise _invalid("diarize_model", diarize_model)

    # Features with an effect on the messages (docs/deepgram-protocol.md §3, the SDK's result models): what the service
    # refuses is refused here with the same kind of 400; the rest is emulated (messages.py).
    diarize = _bool(pairs, "diarize") or diarize_model is not None
    hints = []
    for hint in pairs.get("language_hint", ()):
        if not _LANGUAGE_RE.match(hint.lower()):
            raise _invalid("language_hint", hint)
        base, _, region = hint.partition("-")
        hints.append(f"{base.lower()}-{region.upper()}" if region else base.lower())  # ES -> es, zh-hk -> zh-HK
    arch = MODELS[model][2]
    detect_entities = _bool(pairs, "detect_entities")
    if detect_entities and (arch == "base" or not (language == "en" or language.startswith("en-"))):
        # Streaming entity detection: Nova, Nova-2, Nova-3 and Enhanced models, English only (Deepgram docs).
        raise _bad("Entity detection is only supported for English with Nova, Nova-2, Nova-3 and Enhanced "
                   "models.")
    alternatives = _int(pairs, "alternatives", 1, 10) or 1
    if alternatives > 1 and arch in ("nova-2", "nova-3"):
        # [3P] Deepgram (discussion #823): "Alternatives is no longer supported in nova-2"; requests fail.
        raise _bad(f"Alternatives are not supported by {arch} models.")

    extra: dict[str, str] = {}
    for item in pairs.get("extra", ()):
        key, sep, value = item.partition(":")
        if not sep or not key:
            raise _invalid("extra", item)  # Deepgram's extra is key:value metadata
        extra[key] = value

    arch_nova = arch in _NOVA
    smart_format = _bool(pairs, "smart_format")
    punctuated = _bool(pairs, "punctuate") or smart_format or detect_entities
    text = TextOptions(
        # Filler words: Nova models only (Filler Words docs); elsewhere fillers stay stripped.
        filler_words=_bool(pairs, "filler_words") and arch_nova,
        profanity_filter=_bool(pairs, "profanity_filter"), numerals=_bool(pairs, "numerals") or smart_format,
        dictation=_bool(pairs, "dictation") and punctuated,  # dictation formats punctuation: needs punctuate
        redact=frozenset(rules), replace=tuple(replace))
    return StreamParams(
        model=model, language=language, encoding=encoding, sample_rate=sample_rate, channels=channels,
        multichannel=_bool(pairs, "multichannel"), interim_results=interim, punctuate=_bool(pairs, "punctuate"),
        smart_format=smart_format, endpointing_ms=endpointing_ms,
        utterance_end_ms=utterance_end_ms, vad_events=_bool(pairs, "vad_events"), keyterms=keyterms,
        tags=tuple(pairs.get("tag", ())), extra=extra, diarize=diarize, language_hints=tuple(hints),
        detect_entities=detect_entities, alternatives=alternatives, text=text, search=search,
        boosted=tuple(boosted), suppressed=frozenset(suppressed),
    )


def _refuse_prerecorded_only(pairs: dict[str, list[str]]) -> None:
    """Pre-recorded features on the live endpoint, as the service answers them (Deepgram's streaming feature
    overview lists only entity detection under Intelligence; docs/emulator.md, Fidelity, has the sources)."""
    summarize = _one(pairs, "summarize")
    if summarize is not None and summarize != "false":
        raise _bad("Summarization is not available for streaming.")
    if any(value != "false" for value in pairs.get("detect_language", ())):
        raise _bad("Language detection is not available for streaming; use language=multi.")  # text [??]
    unauthorized = [name for name in ("topics", "intents") if _bool(pairs, name)]
    if unauthorized:
        # The service's answer is a 403 that reads like a missing entitlement (its text, verbatim).
        raise HandshakeRejected(403, "UNAUTHORIZED_FEATURES_REQUESTED",
                                f"Project does not have access to the requested feature/s {json.dumps(unauthorized)}.")
    for name in ("custom_topic_mode", "custom_intent_mode"):
        mode = _one(pairs, name)
        if mode is not None and mode not in _CUSTOM_MODES:
            raise _invalid(name, mode)
    utt_split = _one(pairs, "utt_split")
    if utt_split is not None and not re.fullmatch(r"\d{1,4}(\.\d{1,6})?", utt_split):
        raise _invalid("utt_split", utt_split)  # seconds (the pre-recorded API's number)


def engine_refusal(params: StreamParams, engine: str) -> HandshakeRejected | None:
    """What one engine cannot do with otherwise valid parameters (the sphinx engine decodes with its own
    fixed language model: it cannot boost or suppress terms)."""
    if engine == "sphinx" and (params.boosted or params.suppressed):
        return _bad("Keyterm prompting and keywords are not supported by the rtaa emulator's sphinx engine "
                    "(use the segmenter engine).")
    return None

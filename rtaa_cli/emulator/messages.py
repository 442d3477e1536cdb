"""What the emulator puts into Deepgram's server -> client messages: uuids, model info, and the fidelity
effects of a stream's parameters (punctuation, diarization, languages, entities, alternatives, keyterms).
The messages' types and fields are :mod:`rtaa_cli.protocols.deepgram`'s."""
from __future__ import annotations

import uuid
from collections.abc import Sequence

from rtaa_cli.emulator.features import alternative_words, find_entities
from rtaa_cli.emulator.params import MODELS, StreamParams
from rtaa_cli.emulator.transcribers import Word
from rtaa_cli.protocols import deepgram as dg

# Reason of the injected mid-stream 1011 fault (Deepgram's own internal-error texts vary).
INTERNAL_FAULT = "Deepgram encountered an internal error while processing the stream (rtaa fault injection)."

_UUID_NS = uuid.UUID("6f1c1d8e-1d7c-4a39-9d5e-2b7b0c6a9e11")


def model_uuid(model: str) -> str:
    return str(uuid.uuid5(_UUID_NS, model))


def model_info(model: str) -> dict[str, str]:
    name, version, arch = MODELS[model]
    return {"name": name, "version": version, "arch": arch}


class MessageFactory:
    """Builds one stream's messages; the per-stream parts (metadata block, features) are made once."""

    def __init__(self, request_id: str, params: StreamParams) -> None:
        self.request_id = request_id
        self.model = params.model
        self.punctuated = params.punctuated
        self._metadata: dict = {"request_id": request_id, "model_info": model_info(params.model),
                                "model_uuid": model_uuid(params.model)}
        if params.diarize:  # "the diarizer that produced the speaker labels" (SDK: ListenV1ResultsMetadata)
            self._metadata["diarize_info"] = {"model_uuid": model_uuid("diarizer-v1"), "arch": "v1"}
        self._multilingual = params.multilingual
        # languages_hinted: "present on interim and final results of every Nova-3 multilingual stream"
        self._hinted = list(params.language_hints) if params.multilingual and MODELS[params.model][2] == "nova-3" \
            else None
        self._entities = params.detect_entities
        self._alternatives = params.alternatives

    def _alternative(self, words: Sequence[Word], speakers: Sequence[int] | None, speech_final: bool,
                     sentence_start: bool, marks: Sequence[str] | None) -> dict:
        word_objs = []
        texts = []
        last = len(words) - 1
        for i, (word, w_start, w_end, conf) in enumerate(words):
            shown: str | None = None
            if self.punctuated:
                # Capitalised only where a sentence starts: the stream's first result, or after a
                # speech_final (which ends its sentence with a full stop).
                shown = word.capitalize() if i == 0 and sentence_start else word
                if marks is not None and marks[i]:
                    shown += marks[i]  # dictated punctuation ("comma" -> ",")
                if i == last and speech_final and not shown.endswith((".", "?", "!")):
                    shown += "."
            texts.append(word if shown is None else shown)
            word_objs.append(dg.build_word(
                word, w_start, w_end, conf, punctuated_word=shown,
                speaker=None if speakers is None else speakers[i],
                language="en" if self._multilingual else None))  # the emulator's words are English
        # ``languages`` is absent without words: the SDK's model says it "can be absent", and LiveKit's plugin
        # reads alt["languages"][0] whenever the key is there (an empty list crashed its message handler).
        return dg.build_alternative(
            " ".join(texts), round(sum(w[3] for w in words) / len(words), 4) if words else 0.0, word_objs,
            languages=["en"] if self._multilingual and words else None, languages_hinted=self._hinted)

    def results(self, *, channel: int, channels: int, start: float, end: float, words: Sequence[Word],
                is_final: bool, speech_final: bool, from_finalize: bool, speakers: Sequence[int] | None = None,
                sentence_start: bool = True, marks: Sequence[str] | None = None,
                search: list[dict] | None = None) -> bytes:
        variants = alternative_words(words, self._alternatives) if self._alternatives > 1 else [words]
        # channel.search as in the service's responses ([??] on interims too); entities "only present in
        # is_final messages", [] when none (SDK model)
        return dg.build_results(
            channel=channel, channels=channels, start=round(start, 3), duration=round(end - start, 3),
            is_final=is_final, speech_final=speech_final, from_finalize=from_finalize,
            alternatives=[self._alternative(v, speakers, speech_final, sentence_start, marks) for v in variants],
            metadata=self._metadata, search=search,
            entities=find_entities(words) if self._entities and is_final else None)

    def metadata(self, *, sha256: str, created: str, duration: float, channels: int) -> bytes:
        # models/model_info only when audio was processed (docs/deepgram-protocol.md §3)
        info = {model_uuid(self.model): model_info(self.model)} if duration > 0 else None
        return dg.build_metadata(request_id=self.request_id, sha256=sha256, created=created,
                                 duration=round(duration, 6), channels=channels, model_info=info)

    def configure_failure(self, code: str, description: str) -> bytes:
        return dg.build_configure_failure(self.request_id, code, description)

    def configure_reply(self, keyterms: list | None, nova3: bool, boostable: bool = True) -> bytes:
        # Assumption [??]: known only from the SDK 7.16 types (docs/deepgram-protocol.md §2).
        if keyterms is not None and (not nova3 or not boostable):
            why = "Keyterms are only supported with Nova-3 models." if not nova3 else \
                "Keyterms are not supported by the rtaa emulator's sphinx engine."
            return self.configure_failure("CONFIGURE_KEYTERMS_NOT_SUPPORTED", why)
        return dg.build_configure_success(self.request_id, keyterms)

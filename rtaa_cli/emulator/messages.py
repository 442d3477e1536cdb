"""Server -> client JSON messages of Deepgram's live API (docs/deepgram-protocol.md §3), serialised with orjson."""
from __future__ import annotations

import uuid
from collections.abc import Sequence

import orjson

from rtaa_cli.emulator.features import alternative_words, find_entities
from rtaa_cli.emulator.params import MODELS, StreamParams
from rtaa_cli.emulator.transcribers import Word

NET0001 = ("Deepgram did not receive audio data or a text message within the timeout window. "
           "See https://dpgr.am/net0001")
# Assumption [??]: docs/deepgram-protocol.md §4: no source confirmed the current DATA-0000 code/text; 1008 as the current docs reportedly say.
DATA0000 = "DATA-0000: The payload cannot be decoded as audio. See https://dpgr.am/data0000"
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
            obj: dict = {"word": word, "start": w_start, "end": w_end, "confidence": conf}
            if self.punctuated:
                # Capitalised only where a sentence starts: the stream's first result, or after a
                # speech_final (which ends its sentence with a full stop).
                shown = word.capitalize() if i == 0 and sentence_start else word
                if marks is not None and marks[i]:
                    shown += marks[i]  # dictated punctuation ("comma" -> ",")
                if i == last and speech_final and not shown.endswith((".", "?", "!")):
                    shown += "."
                obj["punctuated_word"] = shown
                texts.append(shown)
            else:
                texts.append(word)
            if speakers is not None:
                obj["speaker"] = speakers[i]
            if self._multilingual:
                obj["language"] = "en"  # the emulator's words are English
            word_objs.append(obj)
        alt: dict = {"transcript": " ".join(texts),
                     "confidence": round(sum(w[3] for w in words) / len(words), 4) if words else 0.0}
        if self._multilingual and words:
            # Absent without words: the SDK's model says it "can be absent", and LiveKit's plugin reads
            # alt["languages"][0] whenever the key is there (an empty list crashed its message handler).
            alt["languages"] = ["en"]
        if self._hinted is not None:
            alt["languages_hinted"] = self._hinted
        alt["words"] = word_objs
        return alt

    def results(self, *, channel: int, channels: int, start: float, end: float, words: Sequence[Word],
                is_final: bool, speech_final: bool, from_finalize: bool, speakers: Sequence[int] | None = None,
                sentence_start: bool = True, marks: Sequence[str] | None = None,
                search: list[dict] | None = None) -> bytes:
        variants = alternative_words(words, self._alternatives) if self._alternatives > 1 else [words]
        body: dict = {"alternatives": [self._alternative(v, speakers, speech_final, sentence_start, marks)
                                       for v in variants]}
        if search is not None:  # channel.search, as in the service's responses ([??] on interims too)
            body["search"] = search
        msg: dict = {
            "type": "Results",
            "channel_index": [channel, channels],
            "duration": round(end - start, 3),
            "start": round(start, 3),
            "is_final": is_final,
            "speech_final": speech_final,
            "channel": body,
            "metadata": self._metadata,
            "from_finalize": from_finalize,
        }
        if self._entities and is_final:  # "only present in is_final messages", [] when none (SDK model)
            msg["entities"] = find_entities(words)
        return orjson.dumps(msg)

    def metadata(self, *, sha256: str, created: str, duration: float, channels: int) -> bytes:
        msg: dict = {"type": "Metadata", "transaction_key": "deprecated", "request_id": self.request_id,
                     "sha256": sha256, "created": created, "duration": round(duration, 6), "channels": channels}
        if duration > 0:  # models/model_info only when audio was processed (docs/deepgram-protocol.md §3)
            uid = model_uuid(self.model)
            msg["models"] = [uid]
            msg["model_info"] = {uid: model_info(self.model)}
        return orjson.dumps(msg)

    @staticmethod
    def utterance_end(channel: int, channels: int, last_word_end: float) -> bytes:
        return orjson.dumps({"type": "UtteranceEnd", "channel": [channel, channels], "last_word_end": last_word_end})

    @staticmethod
    def speech_started(channel: int, channels: int, timestamp: float) -> bytes:
        return orjson.dumps({"type": "SpeechStarted", "channel": [channel, channels], "timestamp": round(timestamp, 3)})

    @staticmethod
    def schema_error(description: str, original: str) -> bytes:
        return orjson.dumps({"type": "Error", "variant": "SchemaError", "description": description,
                             "message": original})

    def configure_failure(self, code: str, description: str) -> bytes:
        return orjson.dumps({"type": "ConfigureFailure", "request_id": self.request_id, "code": code,
                             "description": description})

    def configure_reply(self, keyterms: list | None, nova3: bool, boostable: bool = True) -> bytes:
        # Assumption [??]: known only from the SDK 7.16 types (docs/deepgram-protocol.md §2).
        if keyterms is not None and (not nova3 or not boostable):
            why = "Keyterms are only supported with Nova-3 models." if not nova3 else \
                "Keyterms are not supported by the rtaa emulator's sphinx engine."
            return self.configure_failure("CONFIGURE_KEYTERMS_NOT_SUPPORTED", why)
        msg: dict = {"type": "ConfigureSuccess", "request_id": self.request_id}
        if keyterms is not None:
            msg["keyterms"] = keyterms
        return orjson.dumps(msg)

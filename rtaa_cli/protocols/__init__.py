"""The wire protocols rtaa speaks, one sans-I/O module each (no sockets, no clock): message types,
builders and parsers, used by every side that speaks the protocol.

- :mod:`.exotel`: Exotel's Voicebot/AgentStream stream messages (docs/exotel-protocol.md), written by the
  callers and read by the ingest (and the callers, for what a target sends back).
- :mod:`.deepgram`: Deepgram's live ``/v1/listen`` messages (docs/deepgram-protocol.md), written by the
  emulator and read by the pipeline's Deepgram provider; the control messages the other way.
- :mod:`.feed`: rtaa's transcript-feed schema (docs/transcript-feed.md), written by the pipeline and read
  by every feed reader.
- :mod:`.closecodes`: the one RFC 6455 close-code table.

What a side *decides* about a protocol's messages lives with that side: the ingest's stream rules in
:mod:`rtaa_cli.pipeline.ingest_rules`, the emulator's results in :mod:`rtaa_cli.emulator.session`.
"""

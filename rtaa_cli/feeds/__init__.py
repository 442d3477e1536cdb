"""Transcript feeds: how rtaa's callers learn what the target transcribed (docs/transcript-feed.md).

Sans-I/O cores: :mod:`.url` (the one ``--transcripts`` URL rule), :mod:`.parse` (a feed message ->
a normalised :class:`~.parse.FeedEvent`, for rtaa's schema, Deepgram's and any schema through a
:class:`~.parse.FieldMapping`), :mod:`.recorder` (one call's feed bookkeeping: counts, transcripts,
latency samples by :mod:`rtaa_cli.latency`). The callers' asyncio and gevent drivers only move
bytes into :class:`~.recorder.FeedRecorder`.
"""

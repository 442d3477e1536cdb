"""The virtual Exotel caller: one core for ``rtaa replay``, ``rtaa smoke`` and the soak's Locust users.

- :mod:`.script` (sans-I/O): what a call sends and when -- :class:`~.script.CallScript` (start, media
  frames, DTMF, holds, stream switches, stop, built by the Exotel codec) and
  :class:`~.script.BadInputScript`.
- :mod:`.recorder` (sans-I/O): what happened -- :class:`~.recorder.CallRecorder` turns what a driver
  saw (messages sent, closes, feed messages, errors) into one :class:`~.recorder.CallResult`, with
  the one latency definition (:mod:`rtaa_cli.latency`) and the one feed-URL rule
  (:mod:`rtaa_cli.feeds.url`).
- Drivers, thin: :mod:`.asyncio_driver` (websockets' asyncio client; replay and smoke) and
  :mod:`.gevent_driver` (websockets' sync client under gevent; the soak), whose media frames go out
  through :mod:`.frame_scheduler` (one sender per process).

Nothing here imports Locust; :mod:`.gevent_driver` expects a gevent-patched process for concurrency.
"""

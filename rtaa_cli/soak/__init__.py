"""`rtaa soak`: Locust-driven soak tests of a transcription pipeline.

Sans-I/O cores: :mod:`.scenario` (TOML loader), :mod:`.stats` (metrics, thresholds, verdict),
:mod:`.schedule` (the run's clock), :mod:`.report` (the report document; JSON/JUnit/HTML/CSV). I/O shells:
:mod:`.target` (the target's lifecycle), :mod:`.poller` (polling it during the run, the live view),
:mod:`.locustfile` (its users play calls with :mod:`rtaa_cli.call.gevent_driver`), :mod:`.session` and :mod:`.runner`
(these three import Locust, which monkey-patches the process: never import them from this package's
``__init__`` or from code that runs outside a soak).
"""

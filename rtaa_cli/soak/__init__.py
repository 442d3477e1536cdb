"""`rtaa soak`: Locust-driven soak tests of a transcription pipeline.

Sans-I/O cores: :mod:`.scenario` (TOML loader), :mod:`.stats` (metrics, thresholds, verdict),
:mod:`.report` (JSON/JUnit/HTML). I/O shells:
:mod:`.sync_caller` (a gevent-friendly virtual caller), :mod:`.locustfile` and :mod:`.runner` (these
two import Locust, which monkey-patches the process: never import them from this package's
``__init__`` or from code that runs outside a soak).
"""

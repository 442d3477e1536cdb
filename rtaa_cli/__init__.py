"""rtaa: replay, emulate, serve and soak-test real-time call transcription pipelines."""

__version__ = "0.1.0"

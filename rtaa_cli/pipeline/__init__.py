"""`rtaa serve`: Exotel ingest -> bus -> ASR worker (one provider stream per call) -> transcript feeds.
See docs/serve.md. Entry point: :class:`rtaa_cli.pipeline.server.PipelineServer`."""

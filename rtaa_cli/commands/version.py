"""`rtaa version`."""
import typer

from rtaa_cli import __version__


def register(app: typer.Typer) -> None:
    @app.command()
    def version() -> None:
        """Print rtaa's version."""
        typer.echo(__version__)

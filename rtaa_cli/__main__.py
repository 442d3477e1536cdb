"""``python -m rtaa_cli ...`` is the ``rtaa`` console script (e.g. where no script is on PATH)."""
from rtaa_cli.cli import main

if __name__ == "__main__":
    main()

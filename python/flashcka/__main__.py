"""``python -m flashcka``: the command-line interface (see ``flashcka.cli``)."""
from .cli.main import main

if __name__ == "__main__":
    raise SystemExit(main())

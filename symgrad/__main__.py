"""``python -m symgrad``: the command line (``symgrad --help``)."""

from .cli import main

if __name__ == "__main__":
    main()

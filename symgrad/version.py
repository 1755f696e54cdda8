"""symgrad's version (a module of its own: the JSON report and the disk cache read it without
importing the package's top, which imports them)."""

__version__ = "0.1.0"

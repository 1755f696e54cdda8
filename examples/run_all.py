"""Run every examples/*.py in turn (from the repository root) and print a summary table.

The same as ``symgrad examples`` (``symgrad.cli.run_examples``).  Exits nonzero if any script ended
unexpectedly (a traceback or a nonzero exit status).  A report that records a seed's own mistake
is not a failure: the scripts exit 0 then.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this checkout's symgrad, also when it is not installed

from symgrad.cli import main  # noqa: E402

if __name__ == "__main__":
    main(["examples", "--dir", str(ROOT / "examples")])

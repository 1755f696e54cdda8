"""Run every examples/seed*.py in turn (from the repository root) and print each one's summary.

Exits nonzero if any script crashed (a traceback or a nonzero exit status).  A report that records
a seed's own mistake is not a crash: the scripts exit 0 then.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    scripts = sorted((ROOT / "examples").glob("seed*.py"))
    failed = []
    for script in scripts:
        rel = script.relative_to(ROOT)
        proc = subprocess.run([sys.executable, str(rel)], cwd=ROOT, capture_output=True, text=True)
        summary = proc.stdout.strip().splitlines()
        print(f"[{'ok' if proc.returncode == 0 else f'exit {proc.returncode}'}] {rel}")
        for line in summary[-3:]:
            print(f"    {line}")
        if proc.returncode != 0:
            failed.append(str(rel))
            tail = proc.stderr.strip().splitlines()[-5:]
            for line in tail:
                print(f"    ! {line}")
    print(f"{len(scripts) - len(failed)} of {len(scripts)} example scripts ran cleanly"
          + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

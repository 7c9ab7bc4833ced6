"""Re-execute examples/classic_lab.ipynb in place, so its outputs come from a real run.

    pip install -e '.[notebook]'
    python examples/run_notebook.py            # CPU: about 10 minutes on 2 cores

Measurements start from scratch (the notebook's results folder is cleared first); the executed
notebook replaces the committed one.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
NOTEBOOK = HERE / "classic_lab.ipynb"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebook", nargs="?", type=Path, default=NOTEBOOK)
    parser.add_argument("--timeout", type=int, default=3600, help="seconds per cell")
    parser.add_argument("--keep-results", action="store_true",
                        help="resume from the results the notebook wrote last time")
    args = parser.parse_args()
    try:
        import nbformat
        from nbclient import NotebookClient
    except ImportError:
        print("error: needs nbclient, nbformat and ipykernel: pip install -e '.[notebook]'", file=sys.stderr)
        return 2
    folder = args.notebook.resolve().parent
    if not args.keep_results:
        shutil.rmtree(folder / "results", ignore_errors=True)
    notebook = nbformat.read(args.notebook, as_version=4)
    start = time.perf_counter()
    NotebookClient(notebook, timeout=args.timeout, kernel_name="python3",
                   resources={"metadata": {"path": str(folder)}}).execute()
    nbformat.write(notebook, args.notebook)
    print(f"executed {args.notebook} in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

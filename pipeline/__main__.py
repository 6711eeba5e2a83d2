"""`python -m pipeline` is `infmask`. Also runnable as a script, `python pipeline/__main__.py --benchmark=...`,
which is how W&B's default sweep command (`${env} ${interpreter} ${program} ${args}`) starts a sweep's program."""
import sys

if not __package__:  # run as a file: put the repository root (not pipeline/) on the path and import the package
    from pathlib import Path

    here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != here]
    sys.path.insert(0, str(here.parent))

from pipeline.cli import main  # noqa: E402

sys.exit(main())

"""`python -m infmask` is `infmask` (and so is `python -m pipeline` from a checkout). Also runnable as a file,
`python pipeline/__main__.py --benchmark=...`, which is how W&B's default sweep command
(`${env} ${interpreter} ${program} ${args}`) starts a sweep's program."""
import sys

if not __package__:  # run as a file: this folder must not be on the path (its modules would shadow top-level ones)
    from pathlib import Path

    here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != here]

from infmask.cli import main  # noqa: E402

sys.exit(main())

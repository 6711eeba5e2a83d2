"""Errors the CLI maps to exit codes (see pipeline/cli.py)."""

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_EMPTY = 3


class InfmaskError(Exception):
    exit_code = EXIT_FAILED


class UsageError(InfmaskError):
    """Bad input: unknown name, missing file, corrupt checkpoint. Exit code 2."""
    exit_code = EXIT_USAGE


class NothingToReport(InfmaskError):
    """The results store has no rows for the request. Exit code 3."""
    exit_code = EXIT_EMPTY


class RunFailed(InfmaskError):
    """Training failed (e.g. non-finite loss); state is saved and the run is marked failed. Exit code 1."""
    exit_code = EXIT_FAILED


class Preempted(InfmaskError):
    """Stopped by SIGTERM/SIGUSR1 after saving last.ckpt; exit code 128 + signal."""

    def __init__(self, signum: int):
        super().__init__(f"preempted by signal {signum}; state saved, rerun the same command to resume")
        self.exit_code = 128 + signum


def first_line(exc: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message (its type's name when the message is empty), for one-line errors."""
    text = str(exc).strip()
    return text.splitlines()[0][:limit] if text else type(exc).__name__

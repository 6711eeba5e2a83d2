"""One import namespace: the package installs as `infmask` (pipeline/), `infmask.models` and `infmask.data`, so a
user's own `data/`, `models/` or `pipeline/` package in the working directory neither breaks it nor is taken
for it."""
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent


@pytest.fixture
def user_project(tmp_path):
    """A folder with its own top-level packages of the generic names; importing any of them fails loudly."""
    for name in ("data", "models", "pipeline"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text(f"raise ImportError('the user\\'s own {name} package')\n")
    return tmp_path


@pytest.mark.parametrize("cmd", [[sys.executable, "-m", "infmask"], [str(BIN / "infmask")]], ids=["-m", "script"])
def test_cli_works_beside_a_users_own_data_and_models_packages(user_project, cmd):
    out = subprocess.run(cmd + ["config", "trifeatures", "--preset", "smoke"], cwd=user_project,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "benchmark: trifeatures" in out.stdout and "user's own" not in out.stderr


def test_the_users_packages_stay_theirs(user_project):
    """Importing infmask does not occupy the names `data` or `models`: the user's own packages still import."""
    (user_project / "data" / "__init__.py").write_text("WHOSE = 'user'\n")
    code = "import infmask.data.registry, infmask.models.losses, data; print(data.WHOSE)"
    out = subprocess.run([sys.executable, "-c", code], cwd=user_project, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "user", out.stderr[-2000:]

"""The console shows our lines: other libraries' import-time chatter is silenced at its source (etc_core.quiet)."""
import pytest

from tests.conftest import run_python

pytestmark = pytest.mark.integration

NOISE = ("alt_cuda_corr is not compiled", "xFormers not available", "timm.models.layers is deprecated")
IMPORT = "import logging; logging.basicConfig(level=logging.INFO); {quiet}import ptlflow; print('imported')"


@pytest.mark.slow
def test_ptlflow_import_is_quiet_after_quiet_libraries():
    loud = run_python("-c", IMPORT.format(quiet=""))
    quiet = run_python("-c", IMPORT.format(quiet="from etc_core.quiet import quiet_libraries; quiet_libraries(); "))
    assert loud.returncode == 0 and quiet.returncode == 0, quiet.stderr[-2000:]
    assert all(n in loud.stdout + loud.stderr for n in NOISE)  # the control: ptlflow does print these
    assert quiet.stdout.strip() == "imported" and not [n for n in NOISE if n in quiet.stderr], quiet.stderr

"""Shared by the kernel tests: the instruction sets this CPU runs, and an `isa`
fixture that runs a test once under each."""

import pytest

try:
    import higgs_kernels as hk
except ImportError:  # not Linux: the workspace does not install the package
    hk = None
    collect_ignore_glob = ["test_*.py"]


def runnable_isas():
    """Every instruction set this CPU runs, the best last."""
    if hk is None or not hk.available():
        return []
    found = []
    for name in ("generic", "avx2", "avx512"):
        try:
            hk._ext.set_isa(name)
        except ValueError:
            continue
        found.append(name)
    hk._ext.set_isa("auto")
    return found


RUNNABLE_ISAS = runnable_isas()


@pytest.fixture
def isas():
    return RUNNABLE_ISAS


@pytest.fixture(params=RUNNABLE_ISAS)
def isa(request):
    hk._ext.set_isa(request.param)
    yield request.param
    hk._ext.set_isa("auto")

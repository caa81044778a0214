"""quantsim.run.distribute.Session on a local cluster it starts itself (in the background, as
`pareto --ray local` does): results handed worker to worker (Result), a forwarding job's two
parts, an object put once (Shared), and one error naming each failed point with its cause or
the point whose result it needed. The jobs are builtins (divmod, operator.*), which every
worker can import."""
from __future__ import annotations

import operator
import os

import pytest

from quantsim.errors import QuantsimError
from quantsim.run import distribute
from quantsim.run.distribute import Job, Result

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'quantsim[ray]')")


@pytest.fixture
def no_cluster():
    if ray.is_initialized():
        pytest.skip("a Ray cluster is already running in this process")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def test_session_forwards_results_and_names_failed_points(no_cluster):
    """One cluster start for every check (seconds on a busy machine)."""
    got: dict = {}
    with pytest.raises(QuantsimError) as err:
        with distribute.session("local", retries=0, warm_up="operator") as s:
            hundred = s.put(100)
            # divmod(17, 5) = (3, 2): 3 to the jobs that take Result("a"), 2 to the driver
            s.submit(Job("a", divmod, (17, 5), forward=True))
            s.submit(Job("a@0", operator.add, (Result("a"), 10), point="a"))
            s.submit(Job("b", operator.mul, (Result("a", part=1), hundred)))
            s.submit(Job("c", operator.truediv, (1, 0)))
            s.submit(Job("c@0", operator.add, (Result("c"), 1), point="c"))
            s.submit(Job("d", operator.neg, (Result("c"),)))
            with pytest.raises(ValueError, match="'d' submitted twice"):
                s.submit(Job("d", operator.neg, (1,)))
            s.wait(lambda key, result: got.__setitem__(key, result), progress=False)
    assert not ray.is_initialized()  # the session started the cluster, and shut it down
    assert got == {"a": 2, "a@0": 13, "b": 200}
    msg = str(err.value)
    # one entry per point: c's own cause (not its chunk's), d's missing input
    assert msg == ("--ray: point c failed after 1 attempts (ZeroDivisionError: division by zero); "
                   "point d not run: its input c failed"), msg


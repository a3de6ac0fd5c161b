"""The local transport: a runner in a subprocess of this host, its output read whatever it prints."""

from __future__ import annotations

import sys

import pytest
from conftest import signal_when

from latbench.profiles import load_profile
from latbench.transports import open_transport

#: A native library's message in a legacy encoding: not UTF-8.
LATIN1 = "b'temp\\xe9rature \\xff\\n'"


def local_transport(name: str):
    transport = open_transport(load_profile(name))
    transport.connect()
    return transport


def test_a_byte_that_is_not_utf8_in_the_runners_stderr_keeps_its_results(fast_profile):
    transport = local_transport(fast_profile)
    res = transport.run([sys.executable, "-c", "import sys; print('{\"id\": \"m0\", \"ok\": true}'); "
                         f"sys.stdout.flush(); sys.stderr.buffer.write({LATIN1})"], 30)
    assert res.exit_code == 0
    assert res.stdout == '{"id": "m0", "ok": true}\n'
    assert res.stderr == "temp\ufffdrature \ufffd\n"


def test_a_stopped_run_after_a_byte_that_is_not_utf8_hands_on_its_lines(fast_profile, tmp_path):
    """Ctrl-C (or SIGTERM in a collection) mid-batch: the results printed so far are kept."""
    transport = local_transport(fast_profile)
    ready = tmp_path / "printed"
    with signal_when(ready, settle_s=0.1), pytest.raises(KeyboardInterrupt) as stopped:
        transport.run([sys.executable, "-c", "import pathlib, sys, time; print('done', flush=True); "
                       f"sys.stdout.buffer.write({LATIN1}); sys.stdout.flush(); "
                       f"pathlib.Path({str(ready)!r}).touch(); time.sleep(30)"], 30)
    assert stopped.value.partial_stdout == "done\ntemp\ufffdrature \ufffd\n"

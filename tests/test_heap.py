"""fedloom.heap: freed round buffers stay in the heap, so the next round does not fault them in again. Counted in
minor page faults (deterministic enough to assert; timings are not asserted in tests)."""

import json
import os
import subprocess
import sys

import pytest

PROBE = r"""
import json, resource, torch
from fedloom.heap import retain_freed_memory
on = retain_freed_memory()
for _ in range(20):  # warm-up: the heap grows until a freed 32 MB block (plus alignment) fits a new one
    x = torch.ones(8 << 20)
    del x
f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):  # what a round does: the same large buffers allocated, written and freed again
    x = torch.ones(8 << 20)
    del x
print(json.dumps({"on": on, "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0}))
"""


def _probe(retain: str) -> dict:
    env = dict(os.environ, FEDLOOM_RETAIN_HEAP=retain)
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True, timeout=120)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt is glibc's")
def test_freed_buffers_are_reused_not_faulted_in_again():
    on, off = _probe("1"), _probe("0")
    assert on["on"] and not off["on"]
    # 10 x 32 MB written = 81,920 pages: malloc's defaults return each buffer to the kernel on free, so every
    # page faults again; kept in the heap, almost none do
    assert off["faults"] > 50_000
    assert on["faults"] < 1_000

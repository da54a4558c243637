"""Named points where a test kills the process, to check that a run killed in every phase resumes.

`BCLM_FAILPOINT=name[:n]` sends SIGKILL to the process the n-th time (default 1) it reaches point `name`.
Unset (always, outside tests), a point costs one environment lookup. No library offers this; it is what
etcd's and FoundationDB's failpoints do, in a dozen lines.
"""

from __future__ import annotations

import os
import signal
from collections import Counter

ENV = "BCLM_FAILPOINT"
_reached: Counter[str] = Counter()


def point(name: str) -> None:
    spec = os.environ.get(ENV)
    if not spec:
        return
    target, _, nth = spec.partition(":")
    if target != name:
        return
    _reached[name] += 1
    if _reached[name] == int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)

"""Model-based tests: random file operations against the Detector, random timelines against Policy.

The Detector must report exactly the watched paths whose content or existence changed since
the previous scan; the Policy must hand every reported file out once, never early, never late.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Dict, List, Optional, Set, Tuple

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wsgireload.detect import Detector
from wsgireload.policy import Policy

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

NAMES = [f"{d}/f{i}.cfg" for d in ("a", "b/c") for i in range(3)] + ["a/skip.txt", "b/c/x.tmp"]
ops = st.tuples(
    st.sampled_from(["write", "delete", "rename", "noop"]),
    st.integers(0, len(NAMES) - 1),
    st.integers(0, len(NAMES) - 1),
)


@given(
    steps=st.lists(st.lists(ops, max_size=5), min_size=1, max_size=6),
    initial=st.sets(st.integers(0, len(NAMES) - 1)),
)
@SETTINGS
def test_detector_reports_exactly_what_changed(
    steps: List[List[Tuple[str, int, int]]], initial: Set[int]
) -> None:
    root = tempfile.mkdtemp(prefix="wsgireload-model-")
    try:
        for d in ("a", "b/c"):
            os.makedirs(os.path.join(root, d))
        state: Dict[str, Optional[int]] = {name: None for name in NAMES}  # name -> content token
        token = [0]

        def write(name: str) -> None:
            token[0] += 1
            path = os.path.join(root, name)
            with open(path, "w") as handle:
                handle.write(str(token[0]))
            ns = 1_000_000_000 * (1_600_000_000 + token[0])  # unique mtime, no sleeping
            os.utime(path, ns=(ns, ns))
            state[name] = token[0]

        for i in initial:
            write(NAMES[i])
        detector = Detector(extra_files=[os.path.join(root, "**", "*.cfg")], modules=False)
        detector.scan()
        for step in steps:
            before = dict(state)
            for op, i, j in step:
                src, dst = NAMES[i], NAMES[j]
                if op == "write":
                    write(src)
                elif op == "delete" and state[src] is not None:
                    os.unlink(os.path.join(root, src))
                    state[src] = None
                elif op == "rename" and state[src] is not None and src != dst:
                    os.replace(os.path.join(root, src), os.path.join(root, dst))
                    state[dst], state[src] = state[src], None
            expected = sorted(
                os.path.join(root, name)
                for name in NAMES
                if name.endswith(".cfg") and before[name] != state[name]
            )
            assert sorted(detector.scan()) == expected
        assert detector.scan() == []
    finally:
        shutil.rmtree(root)


timeline = st.lists(
    st.tuples(st.sampled_from(["observe", "due"]), st.floats(0, 5), st.integers(0, 4)),
    min_size=1,
    max_size=30,
)


@given(events=timeline, settle=st.floats(0, 3), extra=st.floats(0, 10))
@SETTINGS
def test_policy_hands_out_each_file_once_never_early(
    events: List[Tuple[str, float, int]], settle: float, extra: float
) -> None:
    settle_max = settle + extra
    policy = Policy(settle=settle, settle_max=settle_max, validate=None)
    now = 0.0
    first: Optional[float] = None
    last: Optional[float] = None
    handed: List[str] = []
    observed: List[str] = []
    for n, (kind, gap, k) in enumerate(events):
        now += gap
        if kind == "observe":
            path = f"/f{n}-{k}.py"
            policy.observe([path], now)
            observed.append(path)
            first = now if first is None else first
            last = now
            continue
        changes = policy.due(now, {})
        if first is None:
            assert changes is None
            continue
        assert last is not None
        on_time = now - last >= settle or now - first >= settle_max
        assert (changes is not None) == on_time, (now, first, last)
        if changes is not None:
            assert changes.first_seen == first and changes.last_seen == last
            handed.extend(changes.files)
            first = last = None
    # Liveness: after a quiet ``settle``, whatever is pending comes out.
    changes = policy.due(now + settle + 0.001, {})
    if changes is not None:
        handed.extend(changes.files)
    assert handed == observed

# -*- coding: utf-8 -*-
# Copyright (c) linkcert contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Benchmark aid (not part of the collection): records when each task of a playbook starts and ends.

Enabled by bench/edge.py with ``ANSIBLE_CALLBACK_PLUGINS=bench/callback_plugins`` and
``ANSIBLE_CALLBACKS_ENABLED=bench_task_times``; writes ``$BENCH_TASK_TIMES`` (JSON) when the
playbook ends. Every time is a Unix timestamp, so the caller can set them against its own clock
(Ansible's start-up before the first task, the recap after the last).
"""

from __future__ import annotations

import json
import os
import time
import typing as t

from ansible.plugins.callback import CallbackBase

LOADED_AT = time.time()


class CallbackModule(CallbackBase):
    """Task start/end times, written as JSON to $BENCH_TASK_TIMES at the end of the playbook."""

    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "bench_task_times"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self, *args: t.Any, **kwargs: t.Any) -> None:
        super().__init__(*args, **kwargs)
        self._tasks: t.List[t.Dict[str, t.Any]] = []
        self._playbook_start: t.Optional[float] = None

    def _close_last(self, now: float) -> None:
        if self._tasks and self._tasks[-1]["end"] is None:
            self._tasks[-1]["end"] = now

    def _start(self, task: t.Any, handler: bool) -> None:
        now = time.time()
        self._close_last(now)
        self._tasks.append({"name": task.get_name(), "action": task.action, "handler": handler, "start": now, "end": None})

    def v2_playbook_on_start(self, playbook: t.Any) -> None:
        self._playbook_start = time.time()

    def v2_playbook_on_task_start(self, task: t.Any, is_conditional: t.Any) -> None:
        self._start(task, handler=False)

    def v2_playbook_on_handler_task_start(self, task: t.Any) -> None:
        self._start(task, handler=True)

    def v2_playbook_on_stats(self, stats: t.Any) -> None:
        now = time.time()
        self._close_last(now)
        path = os.environ.get("BENCH_TASK_TIMES")
        if not path:
            return
        with open(path, "w", encoding="utf-8") as handle:
            json.dump({"loaded_at": LOADED_AT, "playbook_start": self._playbook_start, "stats_at": now, "tasks": self._tasks}, handle, indent=1)

# -*- coding: utf-8 -*-
# Copyright (c) linkcert contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

# NOTE: private to the mailops.linkcert collection; not a public API.

"""A bounded worker pool: the DNS checks and the certificate runs handle many domains in one task."""

from __future__ import annotations

import typing as t
from concurrent.futures import ThreadPoolExecutor

T = t.TypeVar("T")
R = t.TypeVar("R")


def map_bounded(function: t.Callable[[T], R], items: t.Sequence[T], workers: int) -> t.List[R]:
    """``[function(item) for item in items]`` on at most ``workers`` threads, in order."""
    if len(items) <= 1 or workers <= 1:
        return [function(item) for item in items]
    with ThreadPoolExecutor(max_workers=min(workers, len(items)), thread_name_prefix="linkcert") as pool:
        return list(pool.map(function, items))

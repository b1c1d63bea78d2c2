# -*- coding: utf-8 -*-
# Copyright (c) linkcert contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""A scripted DNS view for unit tests of pure logic (no sockets)."""

from __future__ import annotations

import typing as t

import dns.rdata
import dns.rdataclass
import dns.rdatatype
import pytest

from ansible_collections.mailops.linkcert.plugins.module_utils._resolver import NODATA, NXDOMAIN, OK, Lookup, View


class FakeView(View):
    """Answers from a table {name: [(type, rdata text), ...]}, following CNAMEs like a resolver.

    ``failures`` maps (name, type) or name to a failed status. Every question is logged.
    """

    label = "fake"

    def __init__(self, records: t.Mapping[str, t.Sequence[t.Tuple[str, str]]], failures: t.Optional[t.Mapping[t.Any, str]] = None) -> None:
        self.records = {k.lower(): list(v) for k, v in records.items()}
        self.failures = dict(failures or {})
        self.asked: t.List[t.Tuple[str, str]] = []

    def _exists(self, name: str) -> bool:
        return name in self.records or any(k.endswith("." + name) for k in self.records)

    def lookup(self, name: str, rdtype: str) -> Lookup:
        self.asked.append((name, rdtype))
        chain = [name]
        current = name
        for _step in range(8):
            failure = self.failures.get((current, rdtype)) or self.failures.get(current)
            if failure:
                return Lookup(name, rdtype, failure, chain=chain, server=self.label)
            entries = self.records.get(current, [])
            found = [dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.from_text(rdtype), text) for kind, text in entries if kind == rdtype]
            if found:
                return Lookup(name, rdtype, OK, rdata=found, chain=chain, server=self.label)
            alias = [text for kind, text in entries if kind == "CNAME"]
            if not alias or rdtype == "CNAME":
                status = NODATA if self._exists(current) else NXDOMAIN
                return Lookup(name, rdtype, status, chain=chain, server=self.label)
            current = alias[0].rstrip(".").lower()
            chain.append(current)
        raise AssertionError("alias loop in test data")


@pytest.fixture
def fake_view() -> t.Callable[..., FakeView]:
    return FakeView

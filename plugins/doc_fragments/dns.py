# -*- coding: utf-8 -*-
# Copyright (c) linkcert contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Options shared by the collection's DNS checking modules."""

from __future__ import annotations


class ModuleDocFragment:
    """Resolver options and requirements of the read-only DNS modules."""

    DOCUMENTATION = r"""
options:
  resolvers:
    description:
      - Recursive resolvers to ask, each an IP address, C(ip:port), or C([ipv6]:port).
      - When omitted, the resolvers of the managed host's C(/etc/resolv.conf) are used.
      - Host names are not accepted, so the answer never depends on another lookup.
    type: list
    elements: str
  timeout:
    description:
      - Seconds to wait for one DNS answer before the query is retried or counted as a timeout.
    type: float
    default: 5.0
  retries:
    description:
      - How many times a query that timed out or got SERVFAIL is asked again, with a short growing pause.
      - After that the affected domain reports the failure; the module itself does not fail.
    type: int
    default: 2
  workers:
    description:
      - Domains resolved at the same time. Answers are cached for the run, so parents shared by
        many domains are asked once.
    type: int
    default: 16
requirements:
  - dnspython >= 2.3
notes:
  - Domain names are validated and normalised before any query (lower case, no trailing dot,
    internationalised names converted to A-labels with IDNA 2008 and UTS 46 mapping).
    A bad name fails the module with a message naming it, and nothing is queried.
  - A DNS failure for one domain (SERVFAIL, timeout, REFUSED) is reported in that domain's result.
"""

    ATTRIBUTES = r"""
attributes:
  check_mode:
    description: Can run in check mode and return changed status prediction without modifying target.
    support: full
    details:
      - The module only reads DNS; it behaves the same in check mode.
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check mode), when in diff mode.
    support: none
  idempotent:
    description: When run twice in a row outside check mode, with the same arguments, the second invocation indicates no change.
    support: full
"""

# -*- coding: utf-8 -*-
# Copyright (c) linkcert contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

# NOTE: private to the mailops.linkcert collection; not a public API.

"""When each domain's DNS routing and CAA were last checked, so the renewal timer asks again only when it matters.

``STATE_ROOT/.dns-checked.json`` maps each domain to the time its DNS was last checked, by the certificate
role (every onboarding and renew.yml run checks every domain) or by the renewal runner. The runner asks
DNS again for a domain when that is older than its interval, when the certificate is due (before any
order), or when the domain is not plainly issued (held, pending), so a fixed DNS is seen on the next run.
"""

from __future__ import annotations

import datetime
import json
import os
import typing as t

from ansible_collections.mailops.linkcert.plugins.module_utils._acme_storage import atomic_write
from ansible_collections.mailops.linkcert.plugins.module_utils._acme_state import iso, parse_iso

# A dot file, so it is never taken for a domain's state file.
CHECKED_FILE = ".dns-checked.json"
DEFAULT_INTERVAL = datetime.timedelta(hours=20)
# Reasons that mean the last check found something wrong: such a domain is checked on every run.
HELD_REASONS = frozenset(("dns_drift", "caa_drift", "dns_error", "caa_dns_error", "dns_not_ready", "caa_blocked"))


def load_checked(state_root: str) -> t.Dict[str, datetime.datetime]:
    """The record; an unreadable or missing file is an empty record (everything gets checked)."""
    try:
        with open(os.path.join(state_root, CHECKED_FILE), encoding="utf-8") as handle:
            raw = json.load(handle)
    except (OSError, ValueError):
        return {}
    found = {}
    for domain, when in (raw.items() if isinstance(raw, dict) else []):
        try:
            found[str(domain)] = parse_iso(str(when))
        except (ValueError, TypeError):
            continue
    return found


def record_checked(state_root: str, domains: t.Iterable[str], now: datetime.datetime) -> None:
    """Merge DOMAINS checked at NOW into the record (one atomic write, 0600). Raises LinkcertError(write_failed)."""
    record = {domain: iso(when) for domain, when in load_checked(state_root).items()}
    record.update({domain: iso(now) for domain in domains})
    atomic_write(os.path.join(state_root, CHECKED_FILE), (json.dumps(record, sort_keys=True) + "\n").encode("utf-8"), 0o600)


def needs_check(checked_at: t.Optional[datetime.datetime], state: t.Mapping[str, t.Any], now: datetime.datetime,
                interval: datetime.timedelta = DEFAULT_INTERVAL) -> bool:
    """Whether the renewal runner must ask DNS again for this domain now."""
    if checked_at is None or now - checked_at >= interval:
        return True
    if state.get("ssl_status") != "issued" or state.get("reason") in HELD_REASONS:
        return True
    try:
        renew_after = parse_iso(str(state["renew_after"]))
    except (KeyError, ValueError, TypeError):
        return True
    return renew_after <= now + datetime.timedelta(hours=1)

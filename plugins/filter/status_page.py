# -*- coding: utf-8 -*-
# Copyright (c) linkcert contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The status page filter: per-domain SSL status rows as one self-contained HTML page."""

from __future__ import annotations

from ansible.errors import AnsibleFilterError

from ansible_collections.mailops.linkcert.plugins.module_utils import _statuspage


def status_page(rows, generated_at, title="linkcert status"):
    if not isinstance(rows, list) or not all(isinstance(r, dict) and r.get("domain") for r in rows):
        raise AnsibleFilterError("status_page expects a list of status rows (dicts with a domain), like status_report's")
    if not isinstance(generated_at, str) or not generated_at:
        raise AnsibleFilterError("status_page expects generated_at, the time of the check as an ISO 8601 string")
    return _statuspage.render(rows, generated_at, str(title))


class FilterModule:
    """linkcert status page filter."""

    def filters(self):
        return {"status_page": status_page}

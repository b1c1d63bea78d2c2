# -*- coding: utf-8 -*-
# Copyright (c) linkcert contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The collection's validators, for playbooks that take a name from a person or a URL that goes into nginx's configuration."""

from __future__ import annotations

from ansible.errors import AnsibleFilterError

from ansible_collections.mailops.linkcert.plugins.module_utils._errors import InputError
from ansible_collections.mailops.linkcert.plugins.module_utils._names import normalize_domain
from ansible_collections.mailops.linkcert.plugins.module_utils._sites import options_from


def domain_name(raw, what="domain name"):
    try:
        return normalize_domain(raw, what=what)
    except InputError as exc:
        raise AnsibleFilterError(str(exc))


def tracking_upstream(raw, what="tracking_upstream"):
    try:
        return options_from({"tracking_upstream": raw}).tracking_upstream
    except InputError as exc:
        raise AnsibleFilterError(str(exc).replace("tracking_upstream", what, 1))


class FilterModule:
    """linkcert name filters."""

    def filters(self):
        return {"domain_name": domain_name, "tracking_upstream": tracking_upstream}

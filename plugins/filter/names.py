# -*- coding: utf-8 -*-
# Copyright (c) linkcert contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The collection's domain-name validator, for playbooks that take a name from a person."""

from __future__ import annotations

from ansible.errors import AnsibleFilterError

from ansible_collections.mailops.linkcert.plugins.module_utils._errors import InputError
from ansible_collections.mailops.linkcert.plugins.module_utils._names import normalize_domain


def domain_name(raw, what="domain name"):
    try:
        return normalize_domain(raw, what=what)
    except InputError as exc:
        raise AnsibleFilterError(str(exc))


class FilterModule:
    """linkcert name filters."""

    def filters(self):
        return {"domain_name": domain_name}

# -*- coding: utf-8 -*-
# Copyright (c) linkcert contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Filters that turn the DNS modules' results into per-domain SSL status."""

from __future__ import annotations

from ansible.errors import AnsibleFilterError

from ansible_collections.mailops.linkcert.plugins.module_utils import _status
from ansible_collections.mailops.linkcert.plugins.module_utils._errors import InputError


def ssl_status(domains, verify_results=None, caa_results=None, acme_results=None):
    if not isinstance(domains, list):
        raise AnsibleFilterError("ssl_status expects a list of domains, got %s" % type(domains).__name__)
    return _status.statuses(domains, verify_results, caa_results, acme_results)


def status_table(entries):
    if not isinstance(entries, list):
        raise AnsibleFilterError("status_table expects a list of status entries, got %s" % type(entries).__name__)
    return _status.table(entries)


def verify_input(domains, edge_cname=None):
    if not isinstance(domains, list) or not all(isinstance(d, dict) and d.get("name") for d in domains):
        raise AnsibleFilterError("verify_input expects a list of dicts with a name, like linkcert_domains")
    return _status.verify_input(domains, edge_cname)


def acme_input(domains, verify_results, caa_results=None):
    if not isinstance(domains, list) or not isinstance(verify_results, list) or len(domains) != len(verify_results):
        raise AnsibleFilterError("acme_input expects linkcert_domains and sending_domain_verify's results for the same domains")
    return _status.acme_input(domains, verify_results, caa_results)


def status_report(records, node, verify_results=None, caa_results=None, served_results=None):
    if not isinstance(records, list) or not all(isinstance(r, dict) and r.get("domain") for r in records):
        raise AnsibleFilterError("status_report expects domain_status's domains (a list of dicts with a domain)")
    return _status.report_rows(records, str(node), verify_results, caa_results, served_results)


def status_with_records(entries, records, names=None):
    if not isinstance(entries, list) or not isinstance(records, list):
        raise AnsibleFilterError("status_with_records expects the status entries and domain_status's domains (two lists)")
    return _status.with_records(entries, records, names)


def without_domains(domains, names):
    if not isinstance(domains, list) or not all(isinstance(d, dict) and d.get("name") for d in domains):
        raise AnsibleFilterError("without_domains expects a list of dicts with a name, like linkcert_domains")
    try:
        return _status.without_domains(domains, names or [])
    except InputError as exc:
        raise AnsibleFilterError(str(exc))


class FilterModule:
    """linkcert status filters."""

    def filters(self):
        return {"ssl_status": ssl_status, "status_table": status_table, "verify_input": verify_input, "acme_input": acme_input,
                "status_report": status_report, "status_with_records": status_with_records, "without_domains": without_domains}

#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) linkcert contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: domain_status
short_description: Record, or read, each domain's SSL status in its state file
version_added: 0.1.0
description:
  - Merges status fields (C(ssl_status), C(label), C(reason), C(message), C(remediation), C(dns_verified), C(dns_issues))
    into C(STATE_ROOT/DOMAIN.json), the file M(mailops.linkcert.acme_http01_cert) keeps for each domain, so a domain that
    never reached the CA (DNS or CAA not ready) has its status and remediation on record too.
  - Other fields of the file are kept. A file is rewritten (atomically, under the domain's lock) only when a field changes.
  - Without O(statuses), only reads. Either way it returns every domain's state found in O(state_root), so a play can
    serve every certificate on record, including those of domains this run did not touch.
  - With O(metrics_dir), it also writes Prometheus metrics for node_exporter's textfile collector there, outside check mode, namely
    C(linkcert-domains.prom) (for every domain on record, its certificate's expiry, last success and attempt, status, consecutive
    failures, expiry alert) and C(linkcert-run-JOB.prom) (this run of O(metrics_job), its duration, success, certificates by action),
    each replaced atomically, mode C(0644), the directory created C(0755) when missing.
  - The metrics files are bookkeeping, rewritten on every run; writing them never makes the task changed. A metrics file that
    cannot be written is a warning, not a failure.
author:
  - linkcert maintainers (@mailops)
extends_documentation_fragment:
  - mailops.linkcert.state
options:
  state_root:
    description: The state directory (C(linkcert_state_root)).
    type: path
    required: true
  statuses:
    description:
      - Status entries, as returned by the P(mailops.linkcert.ssl_status#filter) filter.
      - When omitted, the module only reads.
    type: list
    elements: dict
  metrics_dir:
    description:
      - The directory node_exporter's textfile collector reads (C(--collector.textfile.directory)); the metrics are written
        there. Empty or omitted writes no metrics.
    type: path
  metrics_job:
    description:
      - The run's job, the C(job) label of the run metrics and the name of their file C(linkcert-run-JOB.prom).
      - The renewal timer writes C(linkcert-run-timer.prom) itself.
    type: str
    choices: [onboard, renew]
    default: onboard
  metrics_node:
    description: The C(node) label of every series (the edge host's name, for example C(inventory_hostname)); the host name when omitted.
    type: str
  run_duration:
    description:
      - How long the run has taken so far, in seconds (C(linkcert_run_duration_seconds)). The certificate role measures it on
        the controller, from M(mailops.linkcert.sending_domain_verify)'s RV(mailops.linkcert.sending_domain_verify#module:checked_at)
        to this task, so a host clock that is off does not distort it.
      - When omitted, the run's duration is left out of the metrics.
    type: float
  watch:
    description:
      - The pending watcher's schedule (C(linkcert_pending_*)). Each domain in O(statuses) that is not issued counts as
        checked now, and its next check is recorded in its state file (C(watch)). The renewal role's watcher checks it
        again then, and issues its certificate once DNS and CAA are right.
      - After the give-up age the domain is recorded as SSL Unknown, reason C(watch_stopped), and no longer checked on its own.
      - The watch is bookkeeping, like the metrics; it never makes the task changed.
    type: dict
    suboptions:
      backoff:
        description: Seconds after the first check at which the domain is checked again.
        type: list
        elements: int
        default: [60, 120, 300, 600, 1800]
      hourly:
        description: Seconds between checks after the backoff, while the domain has been pending less than O(watch.first_day).
        type: int
        default: 3600
      first_day:
        description: Seconds of pending after which checks come every O(watch.later) seconds.
        type: int
        default: 86400
      later:
        description: Seconds between checks after the first day.
        type: int
        default: 21600
      give_up_days:
        description: Days of pending after which the domain is no longer checked on its own (C(linkcert_pending_give_up_days)).
        type: float
        default: 30
  watch_reset:
    description:
      - Domains whose watch starts over with this check (Verify Now). It counts as their first check, and a watch that
        had stopped starts again.
    type: list
    elements: str
    default: []
  dns_checked:
    description:
      - The O(statuses) come from a DNS routing and CAA check made in this run (the certificate role's). Their time is
        recorded in C(STATE_ROOT/.dns-checked.json), so the renewal timer asks DNS again only when that is older than its
        interval, or when a certificate is due or not plainly issued.
      - Bookkeeping like the metrics (never a change, not in check mode).
    type: bool
    default: false
"""

EXAMPLES = r"""
- name: Record every domain's status
  mailops.linkcert.domain_status:
    state_root: /var/lib/linkcert/state
    statuses: "{{ linkcert_domains | mailops.linkcert.ssl_status(dns.results, caa.results, certs.results) }}"

- name: Record every domain's status, and write the metrics for node_exporter
  mailops.linkcert.domain_status:
    state_root: /var/lib/linkcert/state
    statuses: "{{ linkcert_domains | mailops.linkcert.ssl_status(dns.results, caa.results, certs.results) }}"
    metrics_dir: /var/lib/prometheus/node-exporter
    metrics_job: onboard
    metrics_node: "{{ inventory_hostname }}"
    run_duration: "{{ now().timestamp() - dns.checked_at | float }}"
    dns_checked: true

- name: Read every domain's status on this host
  mailops.linkcert.domain_status:
    state_root: /var/lib/linkcert/state
  register: status
"""

RETURN = r"""
updated:
  description: The domains whose state file changed.
  returned: always
  type: list
  elements: str
domains:
  description:
    - Every domain's state (the content of its state file, without the failure history), sorted by domain.
    - A domain the pending watcher checks has C(watch) (C(since), C(attempts), C(last_check), C(next_check), C(stopped)).
    - The failure history is summed up as C(failed_recently) (failures on record) and C(consecutive_failures) (failures since
      the last success).
  returned: always
  type: list
  elements: dict
not_due:
  description:
    - The domains the pending watcher would not check now (their next check has not come, or the watcher stopped), on this
      host's clock. C(renew.yml) leaves them out of its DNS check.
  returned: always
  type: list
  elements: str
metrics_files:
  description: The metrics files written (none in check mode, without O(metrics_dir), or when they could not be written).
  returned: always
  type: list
  elements: str
  sample: [/var/lib/prometheus/node-exporter/linkcert-domains.prom, /var/lib/prometheus/node-exporter/linkcert-run-onboard.prom]
"""

import datetime
import socket
import time

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.mailops.linkcert.plugins.module_utils import _drift, _metrics, _watch
from ansible_collections.mailops.linkcert.plugins.module_utils._acme_state import StateStore
from ansible_collections.mailops.linkcert.plugins.module_utils._errors import InputError, LinkcertError
from ansible_collections.mailops.linkcert.plugins.module_utils._names import normalize_domain
from ansible_collections.mailops.linkcert.plugins.module_utils._status import LABELS

FIELDS = ("ssl_status", "label", "reason", "message", "remediation", "dns_verified", "dns_issues")


def _entries(statuses):
    entries = []
    for index, raw in enumerate(statuses, start=1):
        domain = normalize_domain(raw.get("domain"), what="statuses[%d].domain" % index)
        if raw.get("ssl_status") not in LABELS:
            raise InputError("statuses[%d].ssl_status must be one of %s" % (index, ", ".join(LABELS)), item=domain)
        entries.append((domain, {key: raw.get(key) for key in FIELDS}))
    return entries


def _write_metrics(module, records):
    """Write the metrics files (bookkeeping: never a change, a failure only warns); their paths."""
    params = module.params
    if not params["metrics_dir"] or module.check_mode:
        return []
    statuses = params["statuses"] or []
    # This run's actions (acme_http01_cert's, carried by the ssl_status filter); a domain it did not handle did nothing.
    actions = [entry.get("action") if entry.get("action") in _metrics.ACTIONS else "none" for entry in statuses]
    finished = time.time()
    duration = params["run_duration"]
    run = {"job": params["metrics_job"], "node": params["metrics_node"] or socket.gethostname(),
           "started": finished - max(0.0, duration) if duration is not None else None, "finished": finished,
           "outcome": "failure" if "failed" in actions else "success",
           "counts": {action: actions.count(action) for action in _metrics.ACTIONS}}
    try:
        return _metrics.write_files(params["metrics_dir"], records, run)
    except LinkcertError as exc:
        module.warn("The metrics for node_exporter were not written: %s" % exc.msg)
        return []


def main():
    module = AnsibleModule(
        argument_spec={
            "state_root": {"type": "path", "required": True},
            "statuses": {"type": "list", "elements": "dict"},
            "metrics_dir": {"type": "path"},
            "metrics_job": {"type": "str", "choices": ["onboard", "renew"], "default": "onboard"},
            "metrics_node": {"type": "str"},
            "run_duration": {"type": "float"},
            "dns_checked": {"type": "bool", "default": False},
            "watch": {"type": "dict", "options": {
                "backoff": {"type": "list", "elements": "int", "default": list(_watch.DEFAULT_BACKOFF)},
                "hourly": {"type": "int", "default": _watch.DEFAULT_HOURLY},
                "first_day": {"type": "int", "default": _watch.DEFAULT_FIRST_DAY},
                "later": {"type": "int", "default": _watch.DEFAULT_LATER},
                "give_up_days": {"type": "float", "default": _watch.DEFAULT_GIVE_UP_DAYS},
            }},
            "watch_reset": {"type": "list", "elements": "str", "default": []},
        },
        supports_check_mode=True,
    )
    updated = []
    now = datetime.datetime.now(datetime.timezone.utc)
    try:
        schedule = _watch.schedule_from(module.params["watch"]) if module.params["watch"] is not None else None
        reset = {normalize_domain(name, what="watch_reset[%d]" % index) for index, name in enumerate(module.params["watch_reset"], start=1)}
        if module.params["statuses"] is not None:
            entries = _entries(module.params["statuses"])
            store = StateStore(module.params["state_root"])
            for domain, fields in entries:
                current = store.load(domain)
                wanted = _with_watch(domain, current, fields, now, schedule, domain in reset)
                if wanted == current:
                    continue
                # The watch's bookkeeping (when the domain was checked) is no change; a new status is.
                if any(current.get(key) != wanted.get(key) for key in FIELDS):
                    updated.append(domain)
                if not module.check_mode:
                    with store.lock(domain, timeout=30.0):
                        latest = store.load(domain)
                        store.save(domain, _with_watch(domain, latest, fields, now, schedule, domain in reset))
        records = _metrics.read_records(module.params["state_root"])
    except LinkcertError as exc:
        exc.fail(module)
    metrics_files = _write_metrics(module, records)
    if module.params["dns_checked"] and module.params["statuses"] and not module.check_mode:
        try:  # bookkeeping, like the metrics: the renewal timer asks DNS again sooner if this is lost
            _drift.record_checked(module.params["state_root"], [domain for domain, _fields in entries], datetime.datetime.now(datetime.timezone.utc))
        except LinkcertError as exc:
            module.warn("The time of the DNS check was not recorded: %s" % exc.msg)
    not_due = [r["domain"] for r in records if not r.get("serial") and r.get("ssl_status") != "issued"
               and r.get("watch") is not None and not _watch.due(r.get("watch"), now)]
    module.exit_json(changed=bool(updated), updated=updated, domains=records, not_due=not_due, metrics_files=metrics_files)


def _with_watch(domain, state, fields, now, schedule, reset_first):
    """The state file with this status (and, with a schedule, the watch after this check)."""
    wanted = dict(state, domain=domain, **fields)
    if schedule is None:
        return wanted
    status, watch = _watch.after_check(state, fields, now, schedule, reset_first)
    wanted.update(status)
    wanted["watch"] = watch
    if watch is None and "watch" not in state:
        del wanted["watch"]
    return wanted


if __name__ == "__main__":
    main()

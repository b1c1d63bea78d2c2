# -*- coding: utf-8 -*-
# Copyright (c) linkcert contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

# NOTE: private to the mailops.linkcert collection; not a public API.

"""Prometheus metrics for node_exporter's textfile collector, written after onboarding and after each timer run.

Files in the metrics directory (node_exporter reads every ``*.prom`` there):

``linkcert-domains.prom``
    Per domain on record (every state file, not only the run's domains): certificate expiry, last success
    and attempt, status, consecutive failures, the expiry guard; for a domain not issued yet that the
    pending watcher checks (its ``watch``), the next check, the checks so far and whether it gave up.
    Rewritten from the state files by every writer (the certificate role and the renewal timer), so it
    always shows the state as the last of them found it; the state files are the one source of truth,
    never this file.
``linkcert-run-JOB.prom`` (JOB: onboard, renew, timer)
    The last run of that job: duration, success, when it finished, certificates by action.  Each job
    writes only its own file, so a timer run never erases the last onboarding run and the other way round.

No series is in two files (per-domain families only in the first, run series carry their own ``job``), as
node_exporter requires.  The run families appear in each run file with the *same* HELP and TYPE lines,
which node_exporter merges; their HELP texts below are part of the file format: change one and files
written by two releases of the collection conflict until both have been rewritten.

Every file is replaced atomically (a temporary ``.NAME.prom.tmp-*`` in the same directory, renamed over
it; node_exporter ignores names that do not end in ``.prom``), mode 0644.  Writing metrics is bookkeeping:
it never counts as a change.
"""

from __future__ import annotations

import datetime
import math
import os
import typing as t

from ansible_collections.mailops.linkcert.plugins.module_utils import _status
from ansible_collections.mailops.linkcert.plugins.module_utils._acme_state import MAX_FAILURES_KEPT, StateStore, parse_iso
from ansible_collections.mailops.linkcert.plugins.module_utils._acme_storage import atomic_write, os_error_text
from ansible_collections.mailops.linkcert.plugins.module_utils._errors import InputError, LinkcertError

DEFAULT_DIR = "/var/lib/prometheus/node-exporter"
DOMAINS_FILE = "linkcert-domains.prom"
JOBS = ("onboard", "renew", "timer")
OUTCOMES = ("success", "failure")
ACTIONS = ("issued", "renewed", "failed", "none")
STATUSES = (_status.ISSUED, _status.PENDING, _status.UNKNOWN)
FILE_MODE = 0o644
DIR_MODE = 0o755

# (name, HELP). Every family is a gauge.
DOMAIN_FAMILIES = (
    ("linkcert_certificate_expiry_timestamp_seconds", "When the installed certificate of the domain expires (its notAfter), in seconds since the epoch."),
    ("linkcert_certificate_last_success_timestamp_seconds", "When a certificate for the domain was last issued or renewed, in seconds since the epoch."),
    ("linkcert_certificate_last_attempt_timestamp_seconds",
     "When a certificate for the domain was last ordered (successfully or not), in seconds since the epoch."),
    ("linkcert_certificate_consecutive_failures",
     "Failed issuances or renewals of the domain since its last success (read from the failure ledger, which keeps the newest %d: "
     "%d means at least that many)." % (MAX_FAILURES_KEPT, MAX_FAILURES_KEPT)),
    ("linkcert_certificate_expiry_alert",
     "1 when the installed certificate is in the last tenth of its lifetime (or expired), so it is not renewing; 0 otherwise."),
    ("linkcert_domain_status", "The domain's SSL status (issued: SSL Issued, pending: SSL Pending, unknown: SSL Unknown): 1 for the current one."),
    ("linkcert_domain_info", "Always 1; the labels give the domain's status label, reason, last action and certificate serial."),
    ("linkcert_domain_next_check_timestamp_seconds",
     "When the pending watcher next checks the domain (not issued yet), in seconds since the epoch; absent once it gave up."),
    ("linkcert_domain_check_attempts",
     "Checks of the domain by the pending watcher since it was first found not issued (Verify Now starts the count over)."),
    ("linkcert_domain_watch_stopped",
     "1 when the pending watcher gave up on the domain (not issued for too long: no longer checked on its own until it is "
     "verified again); 0 while it checks it."),
)
RUN_FAMILIES = (
    ("linkcert_run_duration_seconds", "How long the last run of the job took, in seconds."),
    ("linkcert_run_success",
     "1 when the last run of the job succeeded, 0 when it failed: a certificate failed (or, for the timer, nginx could not be reloaded)."),
    ("linkcert_run_last_timestamp_seconds", "When the last run of the job finished, in seconds since the epoch."),
    ("linkcert_run_certificates", "Certificates of the last run of the job, by action (issued, renewed, failed, none)."),
)
FAMILIES = DOMAIN_FAMILIES + RUN_FAMILIES

Sample = t.Tuple[t.Sequence[t.Tuple[str, t.Any]], t.Union[int, float]]


def run_file(job: str) -> str:
    """The file of one job's run metrics: linkcert-run-JOB.prom."""
    return "linkcert-run-%s.prom" % _job(job)


def escape_label(value: t.Any) -> str:
    """A label value as the text exposition format quotes it: backslash, double quote and line feed escaped."""
    text = "" if value is None else str(value)
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _number(value: t.Union[int, float]) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def _epoch(text: t.Any) -> t.Optional[float]:
    """Seconds since the epoch of an ISO 8601 time from a state file; None when absent or unreadable."""
    if not text:
        return None
    try:
        return parse_iso(str(text)).timestamp()
    except (OverflowError, ValueError):  # not a time, or one that is not a time in UTC (year 1 or 9999 with an offset)
        return None


def _job(job: t.Any) -> str:
    if job not in JOBS:
        raise InputError("the metrics job must be one of %s, got %r" % (", ".join(JOBS), job), item=str(job))
    return str(job)


def consecutive_failures(state: t.Mapping[str, t.Any]) -> int:
    """Failures in the ledger after the last success (all of them if none): the failures since the domain last worked.

    The ledger keeps the newest MAX_FAILURES_KEPT entries whatever their age, so the count is exact up to that number.
    """
    since = _epoch(state.get("last_success"))
    count = 0
    for entry in state.get("failures") or []:
        at = _epoch(entry.get("at")) if isinstance(entry, dict) else None
        if at is not None and (since is None or at > since):
            count += 1
    return count


def record(state: t.Mapping[str, t.Any]) -> t.Dict[str, t.Any]:
    """A state file's content as domain_status returns it: the failure ledger and the ARI cache replaced by
    ``failed_recently`` (ledger entries) and ``consecutive_failures``."""
    item = dict(state)
    failures = item.pop("failures", None) or []
    item["consecutive_failures"] = consecutive_failures(state)
    item["failed_recently"] = len(failures)
    item.pop("ari", None)
    return item


def read_records(state_root: str) -> t.List[t.Dict[str, t.Any]]:
    """Every domain's record under ``state_root``, sorted by domain (a missing root has none)."""
    store = StateStore(state_root)
    found = []
    for domain in store.domains():
        state = store.load(domain)
        if state:
            found.append(record(state))
    return found


def _domain_samples(records: t.Sequence[t.Mapping[str, t.Any]], node: str, now: datetime.datetime) -> t.Dict[str, t.List[Sample]]:
    samples: t.Dict[str, t.List[Sample]] = {name: [] for name, _help in DOMAIN_FAMILIES}
    seen = set()
    for entry in sorted(records, key=lambda item: str(item.get("domain") or "")):
        domain = str(entry.get("domain") or "")
        if not domain or domain in seen:
            continue  # a record without a domain names nothing; one domain once (no duplicate series)
        seen.add(domain)
        base = (("domain", domain), ("node", node))
        for name, key in (("linkcert_certificate_expiry_timestamp_seconds", "not_after"),
                          ("linkcert_certificate_last_success_timestamp_seconds", "last_success"),
                          ("linkcert_certificate_last_attempt_timestamp_seconds", "last_attempt")):
            value = _epoch(entry.get(key))
            if value is not None:  # unknown is left out: a 0 would read as "expired in 1970"
                samples[name].append((base, value))
        failures = entry.get("consecutive_failures")
        if not isinstance(failures, int) or isinstance(failures, bool):
            failures = consecutive_failures(entry)
        samples["linkcert_certificate_consecutive_failures"].append((base, failures))
        samples["linkcert_certificate_expiry_alert"].append((base, 1 if _status.expiry_alert(entry, now) else 0))
        status = entry.get("ssl_status") if entry.get("ssl_status") in STATUSES else _status.UNKNOWN
        for value in STATUSES:
            samples["linkcert_domain_status"].append((base + (("status", value),), 1 if value == status else 0))
        info = base + (("label", entry.get("label") or _status.LABELS[status]), ("reason", entry.get("reason") or ""),
                       ("action", entry.get("action") or "none"), ("serial", entry.get("serial") or ""))
        samples["linkcert_domain_info"].append((info, 1))
        watch = entry.get("watch")
        if status != _status.ISSUED and isinstance(watch, t.Mapping):  # only a domain the watcher checks, or checked
            stopped = bool(watch.get("stopped"))
            next_check = None if stopped else _epoch(watch.get("next_check"))
            if next_check is not None:
                samples["linkcert_domain_next_check_timestamp_seconds"].append((base, next_check))
            attempts = watch.get("attempts")
            if isinstance(attempts, int) and not isinstance(attempts, bool) and attempts >= 0:
                samples["linkcert_domain_check_attempts"].append((base, attempts))
            samples["linkcert_domain_watch_stopped"].append((base, 1 if stopped else 0))
    return samples


def _run_samples(run: t.Mapping[str, t.Any]) -> t.Dict[str, t.List[Sample]]:
    samples: t.Dict[str, t.List[Sample]] = {name: [] for name, _help in RUN_FAMILIES}
    job = _job(run.get("job"))
    if run.get("outcome") not in OUTCOMES:
        raise InputError("the run outcome must be one of %s, got %r" % (", ".join(OUTCOMES), run.get("outcome")), item=job)
    base = (("job", job), ("node", str(run.get("node") or "")))
    finished = float(run["finished"])
    if run.get("started") is not None:
        samples["linkcert_run_duration_seconds"].append((base, max(0.0, finished - float(run["started"]))))
    samples["linkcert_run_success"].append((base, 1 if run["outcome"] == "success" else 0))
    samples["linkcert_run_last_timestamp_seconds"].append((base, finished))
    counts = run.get("counts") or {}
    for action in ACTIONS:
        samples["linkcert_run_certificates"].append((base + (("action", action),), int(counts.get(action) or 0)))
    return samples


def render(records: t.Optional[t.Sequence[t.Mapping[str, t.Any]]], run: t.Optional[t.Mapping[str, t.Any]],
           now: t.Optional[datetime.datetime] = None, node: t.Optional[str] = None) -> str:
    """The metrics in the text exposition format (pure: no clock read unless ``now`` is None).

    ``records``: state dicts as domain_status returns them (None: leave the per-domain families out);
    ``run``: {job, node, started, finished (seconds since the epoch), outcome: success|failure, counts: {action: n}}
    (None: leave the run families out); ``node`` labels the per-domain series (default: the run's node).
    Every family included gets its HELP and TYPE lines, with or without samples.
    """
    now = now or datetime.datetime.now(datetime.timezone.utc)
    node = str(node if node is not None else (run or {}).get("node") or "")
    samples: t.Dict[str, t.List[Sample]] = {}
    if records is not None:
        samples.update(_domain_samples(records, node, now))
    if run is not None:
        samples.update(_run_samples(run))
    lines = []
    for name, help_text in FAMILIES:
        if name not in samples:
            continue
        lines.append("# HELP %s %s" % (name, _escape_help(help_text)))
        lines.append("# TYPE %s gauge" % name)
        for labels, value in samples[name]:
            rendered = ",".join('%s="%s"' % (key, escape_label(val)) for key, val in labels)
            lines.append("%s{%s} %s" % (name, rendered, _number(value)))
    return "\n".join(lines) + "\n" if lines else ""


def write(path: str, text: str) -> None:
    """Replace ``path`` by ``text`` atomically (mode 0644), creating its directory (0755) when missing.

    Raises LinkcertError(reason="write_failed").
    """
    directory = os.path.dirname(os.path.abspath(path))
    try:
        if not os.path.isdir(directory):
            os.makedirs(directory, mode=DIR_MODE, exist_ok=True)
            os.chmod(directory, DIR_MODE)  # whatever the umask
    except OSError as exc:
        raise LinkcertError("cannot create the metrics directory %s: %s" % (directory, os_error_text(exc)),
                            item=directory, reason="write_failed") from exc
    atomic_write(path, text.encode("utf-8"), FILE_MODE)


def files(records: t.Sequence[t.Mapping[str, t.Any]], run: t.Mapping[str, t.Any],
          now: t.Optional[datetime.datetime] = None) -> t.Dict[str, str]:
    """{file name: text}: the per-domain file and this run's job file."""
    return {DOMAINS_FILE: render(records, None, now, node=str(run.get("node") or "")), run_file(run.get("job")): render(None, run, now)}


def write_files(directory: str, records: t.Sequence[t.Mapping[str, t.Any]], run: t.Mapping[str, t.Any],
                now: t.Optional[datetime.datetime] = None) -> t.List[str]:
    """Render and write both files into ``directory``; their paths."""
    written = []
    for name, text in files(records, run, now).items():
        path = os.path.join(directory, name)
        write(path, text)
        written.append(path)
    return written

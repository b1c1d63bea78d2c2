# -*- coding: utf-8 -*-
# Copyright (c) linkcert contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

# NOTE: private to the mailops.linkcert collection; not a public API.

"""The pending watcher's schedule: when a domain that was onboarded but is not issued is checked again.

A customer fixes a CNAME at some moment after onboarding; the domain must then become SSL Issued on its own,
within minutes, and nobody's DNS must be asked every minute for a month. So each domain has its own backoff,
counted from the first check that found it not issued (``since``, the onboarding's check as a rule). It is
checked again at fixed moments after that one, most of them early, when a customer who was just told which
record to publish is most likely to publish it:

* 1, 2, 5, 10 and 30 minutes after it (``backoff``);
* then every hour (``hourly``) until it has been pending for a day (``first_day``);
* then every 6 hours (``later``) until it has been pending for ``give_up_days`` (30);
* then it is no longer checked on its own: it stays SSL Unknown until someone verifies it again (Verify Now:
  ``onboard_domain.yml -e domain=X`` or ``linkcert-renew --domain X`` on the edge), which starts the schedule over.

The moments hang on ``since``, not on the previous check: a check made between them (a playbook run) or a watcher
that was down for a while neither shifts the schedule nor makes it catch up on missed moments; the next check is
the first moment after the current one.

The schedule is kept in the domain's state file as ``watch``::

    {"since": ISO, "attempts": N, "last_check": ISO, "next_check": ISO or null, "stopped": ISO or null}

Pure functions: the role's ``domain_status`` and the renewal runner record checks with them, the status
table, the page and the metrics show ``next_check`` and ``attempts``.
"""

from __future__ import annotations

import datetime
import typing as t

from ansible_collections.mailops.linkcert.plugins.module_utils._acme_state import iso, parse_iso
from ansible_collections.mailops.linkcert.plugins.module_utils._errors import InputError

DEFAULT_BACKOFF = (60, 120, 300, 600, 1800)
DEFAULT_HOURLY = 3600
DEFAULT_FIRST_DAY = 86400
DEFAULT_LATER = 6 * 3600
DEFAULT_GIVE_UP_DAYS = 30.0
#: The status reason of a domain the watcher no longer checks on its own.
STOPPED = "watch_stopped"
#: Reasons of domains nobody serves over HTTPS (a sending domain with ``https: false``): nothing to watch.
NOT_SERVED = frozenset(("no_edge_route",))
#: Reasons whose status says when the order may go (``retry_after``): the CA's rate limit, the failed-validation
#: guard, a 429. The next check is then that moment, not the schedule's: earlier would find it still waiting.
PACED = frozenset(("ca_rate_limit_queued", "rate_limit_guard", "acme_rate_limited"))


class Schedule(t.NamedTuple):
    """When to check again (seconds), validated by :func:`schedule_from`."""

    #: Seconds after the first check at which the domain is checked again.
    backoff: t.Tuple[int, ...] = DEFAULT_BACKOFF
    hourly: int = DEFAULT_HOURLY
    first_day: int = DEFAULT_FIRST_DAY
    later: int = DEFAULT_LATER
    give_up_days: float = DEFAULT_GIVE_UP_DAYS

    def to_json(self) -> t.Dict[str, t.Any]:
        return {"backoff": list(self.backoff), "hourly": self.hourly, "first_day": self.first_day, "later": self.later,
                "give_up_days": self.give_up_days}


def _seconds(value: t.Any, what: str) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = 0
    if isinstance(value, bool) or not 1 <= number <= 30 * 86400:
        raise InputError("%s must be a number of seconds between 1 and 2592000, got %r" % (what, value), item=what)
    return number


def schedule_from(raw: t.Optional[t.Mapping[str, t.Any]]) -> Schedule:
    """A Schedule from ``{backoff, hourly, first_day, later, give_up_days}`` (all optional); InputError names a bad key."""
    raw = raw or {}
    backoff = raw.get("backoff", DEFAULT_BACKOFF)
    if isinstance(backoff, (str, bytes)) or not isinstance(backoff, (list, tuple)) or not backoff:
        raise InputError("pending backoff must be a non-empty list of seconds, got %r" % (backoff,), item="backoff")
    steps = tuple(_seconds(step, "backoff[%d]" % index) for index, step in enumerate(backoff))
    try:
        give_up = float(raw.get("give_up_days", DEFAULT_GIVE_UP_DAYS))
    except (TypeError, ValueError):
        give_up = -1.0
    if not 0 < give_up <= 3650:
        raise InputError("give_up_days must be a number of days between 0 and 3650, got %r" % (raw.get("give_up_days"),),
                         item="give_up_days")
    return Schedule(steps, _seconds(raw.get("hourly", DEFAULT_HOURLY), "hourly"), _seconds(raw.get("first_day", DEFAULT_FIRST_DAY), "first_day"),
                    _seconds(raw.get("later", DEFAULT_LATER), "later"), give_up)


def _time(value: t.Any) -> t.Optional[datetime.datetime]:
    try:
        return parse_iso(str(value)) if value else None
    except ValueError:
        return None


def _count(value: t.Any) -> int:
    """A count from a record (a file on disk): anything but a non-negative int counts as none."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def next_moment(schedule: Schedule, since: datetime.datetime, now: datetime.datetime) -> datetime.datetime:
    """The first moment of the schedule (counted from ``since``) after ``now``."""
    past = max(0.0, (now - since).total_seconds())
    for offset in sorted(schedule.backoff):
        if offset > past:
            return since + datetime.timedelta(seconds=offset)
    if past < schedule.first_day:
        steps = int(past // schedule.hourly) + 1
        if steps * schedule.hourly < schedule.first_day:
            return since + datetime.timedelta(seconds=steps * schedule.hourly)
        return since + datetime.timedelta(seconds=schedule.first_day)
    steps = int((past - schedule.first_day) // schedule.later) + 1
    return since + datetime.timedelta(seconds=schedule.first_day + steps * schedule.later)


def checked(watch: t.Optional[t.Mapping[str, t.Any]], now: datetime.datetime, schedule: Schedule) -> t.Dict[str, t.Any]:
    """The watch after a check at ``now`` that found the domain still not issued (the first check starts it).

    A watch that was stopped stays stopped (only :func:`reset` starts it again); one whose domain has been pending
    for ``give_up_days`` stops with this check."""
    watch = dict(watch or {})
    since = _time(watch.get("since")) or now
    if watch.get("stopped"):
        watch.update(last_check=iso(now), next_check=None)
        return watch
    watch.update(since=iso(since), attempts=_count(watch.get("attempts")) + 1, last_check=iso(now))
    if now - since >= datetime.timedelta(days=schedule.give_up_days):
        watch.update(next_check=None, stopped=iso(now))
    else:
        watch.update(next_check=iso(next_moment(schedule, since, now)), stopped=None)
    return watch


def reset() -> t.Dict[str, t.Any]:
    """A watch started over (Verify Now): the next :func:`checked` counts as the first check."""
    return {}


def due(watch: t.Optional[t.Mapping[str, t.Any]], now: datetime.datetime) -> bool:
    """Whether the watcher checks the domain now: never checked, or its next check has come; never once stopped."""
    if not watch:
        return True
    if watch.get("stopped"):
        return False
    next_check = _time(watch.get("next_check"))
    return next_check is None or next_check <= now


def stopped_status(watch: t.Mapping[str, t.Any], schedule: Schedule, finding: str) -> t.Tuple[str, str]:
    """The reason and message of a domain the watcher gave up on, with the last check's ``finding``."""
    return STOPPED, ("No longer checked on its own: it was checked %d times over %g days (since %s) and is still not ready: %s "
                     "Fix that, then verify the domain again (onboard_domain.yml -e domain=NAME, or linkcert-renew --domain NAME "
                     "on the edge)." % (_count(watch.get("attempts")), schedule.give_up_days, watch.get("since"), finding.rstrip()))


def _turn(state: t.Mapping[str, t.Any], status: t.Mapping[str, t.Any], now: datetime.datetime) -> t.Optional[datetime.datetime]:
    """The moment a paced domain's order may go (from the status, or the state file the same run wrote), if still ahead."""
    if status.get("reason") not in PACED:
        return None
    value = status.get("retry_after") or (state.get("retry_after") if state.get("reason") == status.get("reason") else None)
    moment = _time(value)
    return moment if moment is not None and moment > now else None


def after_check(state: t.Mapping[str, t.Any], status: t.Mapping[str, t.Any], now: datetime.datetime, schedule: Schedule,
                reset_first: bool = False) -> t.Tuple[t.Dict[str, t.Any], t.Optional[t.Dict[str, t.Any]]]:
    """The status to record and the watch, after a check at ``now`` found ``status`` for a domain whose record is ``state``.

    An issued domain has no watch (unless its renewal is held), nor one that is not served over HTTPS. Any other is
    watched, whether it never had a certificate or holds one it may no longer renew (its DNS or CAA changed): the
    check counts (``reset_first``: Verify Now, it counts as the first). Once
    the watcher gives up on a domain without a certificate, its status becomes SSL Unknown, ``watch_stopped``, with the
    last finding and what to do; a held certificate keeps its status (the renewal timer still asks DNS about it)."""
    result = {key: value for key, value in status.items() if key != "retry_after" or value is not None}
    held = bool(status.get("held") or state.get("held"))
    if (status.get("ssl_status") == "issued" and not held) or status.get("reason") in NOT_SERVED:
        return result, None
    watch = checked(reset() if reset_first else state.get("watch"), now, schedule)
    turn = _turn(state, status, now)
    if turn is not None and not watch.get("stopped"):
        watch["next_check"] = iso(turn)
    if watch.get("stopped") and not (state.get("serial") or status.get("serial")):
        reason, message = stopped_status(watch, schedule, str(status.get("message") or status.get("reason") or ""))
        if status.get("reason") != STOPPED:
            result.update(ssl_status="unknown", label="SSL Unknown", reason=reason, message=message)
    return result, watch

# -*- coding: utf-8 -*-
# Copyright (c) linkcert contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

# NOTE: private to the mailops.linkcert collection; not a public API.

"""The CA's rate limits, paced: a ledger of what this account asked of this CA, read before every new order.

A provider that moves 10,000 customers at once would run into the CA's limits on the first run, and every order
past a limit is refused (a 429), counted against the account, and leaves the domain without a certificate and
without a date. So each new order is admitted first: if it would go past a limit, it is not placed; the domain
stays SSL Pending, reason ``ca_rate_limit_queued``, with the moment its turn comes (``retry_after``), and the
pending watcher (or the next run) orders it then.

The limits (``ca_limits``), each a count within a sliding window:

* ``new_orders``: orders per account (Let's Encrypt: 300 per 3 hours);
* ``certificates_per_domain``: certificates per registered domain, from the Public Suffix List (50 per 7 days);
* ``duplicate_certificates``: certificates for the same set of names (5 per 7 days);
* ``failed_authorizations``: failed validations per name (5 per hour), kept by the domain's state
  (``_acme_state.guard_until``), which takes its figures from here.

``auto`` (the default) means Let's Encrypt's published figures when the directory is Let's Encrypt's production
directory, none otherwise; a mapping overrides those defaults kind by kind (``null`` removes one). Renewals that
carry an ARI ``replaces`` are exempt, as at Let's Encrypt: they are neither checked nor counted.

The ledger is one JSON file per CA and account, ``STATE_ROOT/ledger/<digest>.json`` (0600), read and written
under a lock, so runs of the module and of the timer share it. It holds the orders placed, the certificates
(reserved when the order is placed, confirmed when issued, dropped when the order fails) and the blocks a 429 set
until its Retry-After. Entries older than the longest window are dropped on every write.

Waiters queue: the first order past a limit goes when the oldest counted one leaves the window, the next when the
second does, and so on (a waiter past a whole window's worth waits a window more), so the turns reported in one
run are the turns the orders will take.
"""

from __future__ import annotations

import datetime
import hashlib
import threading
import typing as t
from urllib.parse import urlsplit

from ansible_collections.mailops.linkcert.plugins.module_utils._acme_state import PRIVATE_DIR_MODE, StateStore, iso, parse_iso
from ansible_collections.mailops.linkcert.plugins.module_utils._errors import InputError, LinkcertError

#: The status reason of a domain whose order waits for the CA's rate limit.
QUEUED = "ca_rate_limit_queued"
NEW_ORDERS = "new_orders"
PER_DOMAIN = "certificates_per_domain"
DUPLICATES = "duplicate_certificates"
FAILED_AUTHZ = "failed_authorizations"
KINDS = (NEW_ORDERS, PER_DOMAIN, DUPLICATES, FAILED_AUTHZ)
WORDING = {NEW_ORDERS: "new orders per account", PER_DOMAIN: "certificates per registered domain",
           DUPLICATES: "certificates for the same set of names", FAILED_AUTHZ: "failed validations per name"}
#: A reservation of an order that neither issued nor failed within this long was a run that was killed: dropped.
RESERVATION_MAX_AGE = datetime.timedelta(hours=1)
MAX_WINDOW_HOURS = 24 * 366
LEDGER_DIR = "ledger"
LEDGER_MODE = 0o600


class Limit(t.NamedTuple):
    count: int
    window: datetime.timedelta

    def words(self, kind: str) -> str:
        hours = self.window.total_seconds() / 3600.0
        span = ("%g days" % (hours / 24.0)) if hours >= 48 and hours % 24 == 0 else ("%g hour%s" % (hours, "" if hours == 1 else "s"))
        return "%d %s per %s" % (self.count, WORDING[kind], span)


class Limits(t.NamedTuple):
    new_orders: t.Optional[Limit] = None
    certificates_per_domain: t.Optional[Limit] = None
    duplicate_certificates: t.Optional[Limit] = None
    failed_authorizations: t.Optional[Limit] = None

    def empty(self) -> bool:
        """No limit to keep to: only the blocks a 429 leaves are read, and nothing is written for an order."""
        return all(limit is None for limit in self)

    def longest(self) -> datetime.timedelta:
        windows = [limit.window for limit in self if limit is not None]
        return max(windows) if windows else datetime.timedelta(0)


_HOUR = datetime.timedelta(hours=1)
_WEEK = datetime.timedelta(days=7)
#: Let's Encrypt's published limits (https://letsencrypt.org/docs/rate-limits/).
LETS_ENCRYPT = Limits(Limit(300, 3 * _HOUR), Limit(50, _WEEK), Limit(5, _WEEK), Limit(5, _HOUR))
#: The directories whose limits are LETS_ENCRYPT (staging grants far more: give its figures in ca_limits to pace there).
LETS_ENCRYPT_HOSTS = frozenset(("acme-v02.api.letsencrypt.org",))


def defaults_for(directory_url: str) -> Limits:
    host = (urlsplit(directory_url).hostname or "").lower()
    return LETS_ENCRYPT if host in LETS_ENCRYPT_HOSTS else Limits()


def _limit(value: t.Any, kind: str) -> t.Optional[Limit]:
    if value is None:
        return None
    where = "ca_limits.%s" % kind
    if not isinstance(value, t.Mapping) or set(value) - {"count", "window_hours"} or "count" not in value or "window_hours" not in value:
        raise InputError("%s must be a mapping {count: N, window_hours: H} (or null for no limit), got %r" % (where, value), item=where)
    count, hours = value["count"], value["window_hours"]
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise InputError("%s.count must be a whole number of at least 1, got %r" % (where, count), item=where)
    if isinstance(hours, bool) or not isinstance(hours, (int, float)) or not 0 < hours <= MAX_WINDOW_HOURS:
        raise InputError("%s.window_hours must be a number of hours in (0, %d], got %r" % (where, MAX_WINDOW_HOURS, hours), item=where)
    return Limit(count, datetime.timedelta(hours=float(hours)))


def limits_from(raw: t.Any, directory_url: str) -> Limits:
    """``ca_limits`` as given: ``auto`` (or nothing), ``none``, or a mapping of kinds over the directory's defaults.

    Raises InputError naming the bad kind or figure."""
    if raw is None or (isinstance(raw, str) and raw.strip().lower() in ("", "auto")):
        return defaults_for(directory_url)
    if isinstance(raw, str) and raw.strip().lower() == "none":
        return Limits()
    if not isinstance(raw, t.Mapping):
        raise InputError("ca_limits must be 'auto', 'none' or a mapping of %s, got %r" % (", ".join(KINDS), raw), item="ca_limits")
    unknown = sorted(str(key) for key in raw if key not in KINDS)
    if unknown:
        raise InputError("ca_limits has no limit called %s (known: %s)" % (", ".join(unknown), ", ".join(KINDS)), item="ca_limits.%s" % unknown[0])
    chosen = defaults_for(directory_url)._asdict()
    chosen.update({kind: _limit(value, kind) for kind, value in raw.items()})
    return Limits(**chosen)


# ------------------------------------------------------------------ the ledger, as data


class Turn(t.NamedTuple):
    """When a waiting order may go, and the limit it waits for."""

    at: datetime.datetime
    kind: str
    explanation: str


def names_key(names: t.Sequence[str]) -> str:
    return ",".join(sorted(set(names)))


def empty_ledger(directory_url: str, account: str) -> t.Dict[str, t.Any]:
    return {"directory": directory_url, "account": account, "orders": [], "certificates": [], "blocks": []}


def _at(entry: t.Mapping[str, t.Any], key: str = "at") -> t.Optional[datetime.datetime]:
    try:
        return parse_iso(str(entry[key]))
    except (KeyError, ValueError):
        return None


def _entries(ledger: t.Mapping[str, t.Any], key: str) -> t.List[t.Dict[str, t.Any]]:
    value = ledger.get(key)
    return [dict(entry) for entry in value if isinstance(entry, dict)] if isinstance(value, list) else []


def prune(ledger: t.Mapping[str, t.Any], now: datetime.datetime, keep: datetime.timedelta) -> t.Dict[str, t.Any]:
    """A copy without what no limit can count any more: entries older than ``keep``, blocks that ended, and
    reservations older than RESERVATION_MAX_AGE (their run was killed). Entries that cannot be read are dropped."""
    since = now - keep
    result = dict(ledger)
    result["orders"] = [entry for entry in _entries(ledger, "orders") if (_at(entry) or since) > since]
    result["certificates"] = [entry for entry in _entries(ledger, "certificates") if (_at(entry) or since) > since
                              and not (entry.get("reserved") and (_at(entry) or since) <= now - RESERVATION_MAX_AGE)]
    result["blocks"] = [entry for entry in _entries(ledger, "blocks") if (_at(entry, "until") or now) > now]
    return result


def _slot(times: t.Sequence[datetime.datetime], limit: Limit, now: datetime.datetime, ahead: int) -> t.Optional[datetime.datetime]:
    """When the waiter with ``ahead`` others before it may go, given the counted ``times`` in the window; None: now.

    The k-th order from now goes when ``count`` fewer than it are still in the window: the oldest counted one leaves
    first, and once the counted ones are used up, the waiters that went before it leave in their turn."""
    ordered = sorted(times)
    turns: t.List[datetime.datetime] = []
    for position in range(ahead + 1):
        index = len(ordered) + position - limit.count
        if index < 0:
            turns.append(now)
            continue
        leaves = ordered[index] if index < len(ordered) else turns[index - len(ordered)]
        turns.append(max(now, leaves + limit.window))
    return turns[-1] if turns[-1] > now else None


def buckets(names: t.Sequence[str], registered: t.Sequence[str]) -> t.List[t.Tuple[str, str]]:
    """The (kind, key) pairs an order for ``names`` counts against."""
    found = [(NEW_ORDERS, ""), (DUPLICATES, names_key(names))]
    found.extend((PER_DOMAIN, domain) for domain in sorted(set(registered)))
    return found


def turn_for(ledger: t.Mapping[str, t.Any], limits: Limits, names: t.Sequence[str], registered: t.Sequence[str], now: datetime.datetime,
             ahead: t.Optional[t.Mapping[t.Tuple[str, str], int]] = None) -> t.Optional[Turn]:
    """None when an order for ``names`` may be placed now; else the latest of the turns its limits and blocks give.

    ``ahead``: per bucket, the orders of this run already told to wait for it (they go first)."""
    ahead = ahead or {}
    latest: t.Optional[Turn] = None
    key = names_key(names)
    for block in _entries(ledger, "blocks"):
        until = _at(block, "until")
        scope, value = block.get("scope"), block.get("key")
        applies = (scope == "account" or (scope == "domain" and value in registered) or (scope == "names" and value == key)
                   or (scope == "name" and value in names))
        if until is not None and until > now and applies and (latest is None or until > latest.at):
            latest = Turn(until, "blocked", "the CA refused an order with a rate limit until then (%s)" % (block.get("detail") or "429"))
    orders = [_at(entry) for entry in _entries(ledger, "orders")]
    certificates = _entries(ledger, "certificates")
    for kind, bucket in buckets(names, registered):
        limit = getattr(limits, kind)
        if limit is None:
            continue
        since = now - limit.window
        if kind == NEW_ORDERS:
            times = [moment for moment in orders if moment is not None and moment > since]
        else:
            times = [moment for moment, entry in ((_at(entry), entry) for entry in certificates)
                     if moment is not None and moment > since
                     and (bucket in (entry.get("domains") or []) if kind == PER_DOMAIN else names_key(entry.get("names") or []) == bucket)]
        moment = _slot(times, limit, now, int(ahead.get((kind, bucket), 0)))
        if moment is not None and (latest is None or moment > latest.at):
            counted = "%d counted since %s" % (len(times), iso(since))
            subject = " for %s" % bucket if kind != NEW_ORDERS else ""
            latest = Turn(moment, kind, "the CA's limit of %s%s (%s)" % (limit.words(kind), subject, counted))
    return latest


def reserve(ledger: t.Mapping[str, t.Any], names: t.Sequence[str], registered: t.Sequence[str], now: datetime.datetime,
            token: str) -> t.Dict[str, t.Any]:
    """A copy with an order placed now, and its certificate reserved until :func:`settle`."""
    result = dict(ledger)
    result["orders"] = _entries(ledger, "orders") + [{"at": iso(now), "names": sorted(set(names))}]
    result["certificates"] = _entries(ledger, "certificates") + [
        {"at": iso(now), "names": sorted(set(names)), "domains": sorted(set(registered)), "reserved": token}]
    return result


def settle(ledger: t.Mapping[str, t.Any], token: str, issued: bool, now: datetime.datetime) -> t.Dict[str, t.Any]:
    """A copy where the reservation ``token`` became a certificate issued now, or is gone (the order failed)."""
    result = dict(ledger)
    kept = []
    for entry in _entries(ledger, "certificates"):
        if entry.get("reserved") == token:
            if not issued:
                continue
            entry.pop("reserved")
            entry["at"] = iso(now)
        kept.append(entry)
    result["certificates"] = kept
    return result


def block_scope(detail: str, names: t.Sequence[str], registered: t.Sequence[str]) -> t.Tuple[str, str]:
    """What a 429 with this problem detail refuses: (scope, key). Let's Encrypt's details name the limit; a detail that
    names none refuses the account's every order until Retry-After, the safe reading."""
    text = (detail or "").lower()
    if "exact set" in text or "duplicate" in text:
        return "names", names_key(names)
    if "failed authorization" in text or "failed validation" in text:
        return "name", next((name for name in names if name in text), names[0])
    if "account" in text or "new orders" in text:
        return "account", ""
    for domain in registered:
        if domain in text:
            return "domain", domain
    return "account", ""


def block(ledger: t.Mapping[str, t.Any], scope: t.Tuple[str, str], until: datetime.datetime, detail: str) -> t.Dict[str, t.Any]:
    """A copy with a block (a 429's Retry-After) on ``scope`` until ``until``; an existing one only ever lengthens."""
    result = dict(ledger)
    blocks = [entry for entry in _entries(ledger, "blocks") if (entry.get("scope"), entry.get("key")) != scope]
    earlier = [entry for entry in _entries(ledger, "blocks") if (entry.get("scope"), entry.get("key")) == scope]
    ends = [until] + [moment for moment in (_at(entry, "until") for entry in earlier) if moment is not None]
    blocks.append({"scope": scope[0], "key": scope[1], "until": iso(max(ends)), "detail": detail[:300]})
    result["blocks"] = blocks
    return result


# ------------------------------------------------------------------ the ledger, on disk


class Queued(LinkcertError):
    """An order that was not placed because it would go past a limit: the domain waits for its turn."""

    def __init__(self, message: str, item: str, turn: Turn) -> None:
        super().__init__(message, item=item, reason=QUEUED)
        self.turn = turn


class Pacer:
    """The ledger of one CA and state root, shared by the threads of a run (and, by its lock, by other runs).

    ``registered_domain`` maps a name to its registered domain (the Public Suffix List's, given by the caller)."""

    def __init__(self, states: StateStore, directory_url: str, limits: Limits, registered_domain: t.Callable[[str], str],
                 check_mode: bool = False) -> None:
        self.states = states
        self.directory_url = directory_url
        self.limits = limits
        self._registered_domain = registered_domain
        self._check_mode = check_mode
        self._lock = threading.Lock()
        self._ahead: t.Dict[t.Tuple[str, str], int] = {}
        self._serial = 0
        self._keep = max(limits.longest(), RESERVATION_MAX_AGE)

    def file_name(self, account: str) -> str:
        digest = hashlib.sha256(("%s\n%s" % (self.directory_url, account)).encode("utf-8")).hexdigest()[:16]
        return "%s.json" % digest

    def _load(self, account: str, now: datetime.datetime) -> t.Dict[str, t.Any]:
        data = self.states.read_private(LEDGER_DIR, self.file_name(account))
        if data is None or data.get("directory") != self.directory_url or data.get("account") != account:
            data = empty_ledger(self.directory_url, account)
        return prune(data, now, self._keep)

    def _save(self, account: str, ledger: t.Mapping[str, t.Any]) -> None:
        self.states.write_private(LEDGER_DIR, self.file_name(account), ledger, LEDGER_MODE, PRIVATE_DIR_MODE)

    def _changed(self, account: str, change: t.Callable[[t.Dict[str, t.Any], datetime.datetime], t.Optional[t.Dict[str, t.Any]]],
                 now: datetime.datetime) -> t.Any:
        with self._lock, self.states.lock_named(".ledger-%s" % self.file_name(account).replace(".json", ".lock"), "the CA's rate-limit ledger",
                                                timeout=30.0):
            ledger = self._load(account, now)
            outcome = change(ledger, now)
            if outcome is not None:
                self._save(account, outcome)
            return outcome

    def registered(self, names: t.Sequence[str]) -> t.List[str]:
        return sorted({self._registered_domain(name) for name in names})

    def admit(self, account: str, names: t.Sequence[str], now: datetime.datetime, exempt: bool = False) -> str:
        """Record an order for ``names`` about to be placed and return its reservation; raise Queued (with the turn)
        when it would go past a limit or a block. In check mode nothing is written.

        ``exempt``: an order the CA's limits do not count (an ARI renewal with ``replaces``): only the blocks a 429
        left apply to it (the CA refused those names itself, and said until when), and nothing is reserved."""
        registered = self.registered(names)
        found: t.List[t.Any] = []
        chosen = Limits() if exempt else self.limits

        def change(ledger: t.Dict[str, t.Any], moment: datetime.datetime) -> t.Optional[t.Dict[str, t.Any]]:
            turn = turn_for(ledger, chosen, names, registered, moment, self._ahead)
            if turn is not None:
                for pair in buckets(names, registered):
                    if getattr(chosen, pair[0], None) is not None:
                        self._ahead[pair] = self._ahead.get(pair, 0) + 1
                found.append(turn)
                return None
            self._serial += 1
            token = "%s-%d" % (iso(moment), self._serial)
            found.append(token)
            return None if self._check_mode or chosen.empty() else reserve(ledger, names, registered, moment, token)

        if self._check_mode or chosen.empty():
            with self._lock:
                change(self._load(account, now), now)
        else:
            self._changed(account, change, now)
        if isinstance(found[0], Turn):
            turn = found[0]
            raise Queued("Not ordered yet: it would go past %s. Its turn comes at %s; the pending watcher (or the next run) orders it "
                         "then, with nothing to do by hand." % (turn.explanation, iso(turn.at)), item=names[0], turn=turn)
        return str(found[0])

    def settle(self, account: str, token: str, issued: bool, now: datetime.datetime) -> None:
        if self._check_mode or self.limits.empty():
            return
        self._changed(account, lambda ledger, moment: settle(ledger, token, issued, moment), now)

    def rate_limited(self, account: str, names: t.Sequence[str], detail: str, until: datetime.datetime, now: datetime.datetime) -> None:
        """A 429 with a Retry-After: no order of what it refuses is placed before ``until``."""
        if self._check_mode:
            return
        scope = block_scope(detail, names, self.registered(names))
        self._changed(account, lambda ledger, moment: block(ledger, scope, until, detail), now)

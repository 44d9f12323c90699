"""The privacy filter: turns local window groups into what may leave the home.

- Per-metric policy (`PrivacySettings.policy_of`): ``local`` releases nothing, ``aggregate``
  releases exact window statistics, ``noised`` releases only count, sum and mean with Laplace
  noise (order statistics would expose single readings).
- Identities: the home becomes a keyed pseudonym ``prefix + HMAC-SHA256(secret, home|epoch)``
  (rotating every `pseudonym_rotation_days`); rooms become room classes; devices become device
  classes (categories of `schemas.metrics.DeviceClass` only); device ids never appear.
  Windows of rooms that share a room class are merged before release, so two bedrooms give one
  ``bedroom`` aggregate.
- Noise: values are clipped to the metric's registered range, so one reading changes the count
  by at most 1 and the sum by at most ``max(|low|, |high|)``; epsilon is split evenly between the
  two, i.e. Laplace scales ``2 / epsilon`` and ``2 * sensitivity / epsilon``.
- Budget: every noised release costs `epsilon`, charged to its home and budget period in the
  ``privacy_ledger`` table (sequential composition, the conservative choice); once a period's
  budget is spent further noised releases are refused and counted.
- Suppression: an ``aggregate`` window with fewer than `min_window_count` readings is not
  released; a ``noised`` one is suppressed on its *noisy* count as released (rounded), so the
  threshold test is itself covered by the noise (its epsilon is spent all the same).
- Events (``kind=event`` in `schemas.metrics`: alarms, keywords, anomalies): their readings are
  decisions, 1 for an event and 0 for none. What is released is the count of events of the
  window (readings of at least 0.5), from one event up (`schemas.batch_rules.MIN_EVENT_COUNT`):
  ``count = sum`` = events, ``mean = 1``, no order statistics (the min, max and median of ones
  say nothing more than their count, and the zero decisions, which say when a sensor reported,
  stay at home); a window without events releases nothing (`Release.no_events`). Noised, the
  count and sum of the events get the noise as any other metric.
- What comes out follows the batch contract's rules (`schemas.batch_rules`): the room classes,
  device classes, pseudonym format and health rule used here are the ones the cloud checks.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import os
import re
import secrets
import tempfile
from array import array
from collections import defaultdict
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, select, update
from sqlalchemy.dialects.sqlite import insert

from gateway.sync import counters
from gateway.sync.settings import PrivacySettings
from gateway.sync.stats import NoiseSource, as_float_array, exact_sum
from gateway.sync.tables import privacy_ledger
from gateway.sync.windows import WindowGroup, WindowStats
from schemas.batch import Policy, WindowAggregate
from schemas.batch_rules import MIN_EVENT_COUNT, RoomClass
from schemas.metrics import DeviceClass, Metric, is_event, metric

log = logging.getLogger(__name__)

SECRET_BYTES = 32

# Token prefixes that name a room class; checked in this order ("garden" is outdoor, not a den).
_ROOM_WORDS: tuple[tuple[RoomClass, tuple[str, ...]], ...] = (
    (RoomClass.OUTDOOR, ("garden", "outdoor", "outside", "yard", "patio", "balcon", "terrace",
                         "porch", "deck", "roof")),
    (RoomClass.BATHROOM, ("bath", "toilet", "wc", "shower", "restroom", "lavator", "washroom")),
    (RoomClass.BEDROOM, ("bed", "nursery", "kids", "child", "guest", "sleep", "master")),
    (RoomClass.KITCHEN, ("kitchen", "pantry", "cook", "scullery")),
    (RoomClass.GARAGE, ("garage", "carport", "shed", "workshop")),
    (RoomClass.OFFICE, ("office", "study", "work", "desk", "library")),
    (RoomClass.LIVING, ("living", "lounge", "family", "sitting", "den", "dining", "salon")),
    (RoomClass.HALL, ("hall", "corridor", "entr", "foyer", "stair", "landing", "lobby")),
)  # fmt: skip
_TOKEN = re.compile(r"[a-z]+")


def room_class(room: str, overrides: Mapping[str, RoomClass] | None = None) -> RoomClass:
    """The room class of `room`: from `overrides`, else from the words of its name, else other."""
    if overrides and room in overrides:
        return overrides[room]
    tokens = _TOKEN.findall(room.lower())
    for cls, words in _ROOM_WORDS:
        if any(token.startswith(word) for token in tokens for word in words):
            return cls
    return RoomClass.OTHER


def round_significant(x: float, digits: int) -> float:
    """`x` rounded to `digits` significant digits."""
    return float(f"{x:.{digits}g}")


def round_to_noise(x: float, scale: float) -> float:
    """`x` rounded to a step between 1/100 and 1/10 of the noise `scale`: finer digits would
    only carry noise (rounding after the noise is post-processing, so privacy is unchanged)."""
    step = 10.0 ** math.floor(math.log10(scale / 10.0))
    return round(x / step) * step if step >= 1 else round(x, -math.floor(math.log10(step)))


def device_class_category(device_class: str) -> str:
    """A device class as released: one of `DeviceClass`, anything else is ``generic``."""
    try:
        return DeviceClass(device_class).value
    except ValueError:
        return DeviceClass.GENERIC.value


def load_or_create_secret(path: Path) -> bytes:
    """The pseudonym key in `path`; on first start a new random key, written with mode 0600."""
    try:
        text = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        return _create_secret(path)
    if path.stat().st_mode & 0o077:
        log.warning("pseudonym key %s is readable by others; chmod 600 it", path)
    try:
        key = bytes.fromhex(text)
    except ValueError:
        raise ValueError(f"pseudonym key file {path} does not hold hex digits") from None
    if len(key) < 16:
        raise ValueError(f"pseudonym key in {path} is shorter than 16 bytes")
    return key


def _create_secret(path: Path) -> bytes:
    key = secrets.token_bytes(SECRET_BYTES)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Written to a temp file (mkstemp makes it 0600) and linked into place: a crash never leaves a
    # half-written key, and of two processes starting at once the second uses the first's key.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".secret-")
    try:
        with os.fdopen(fd, "w", encoding="ascii") as fh:
            fh.write(key.hex() + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return load_or_create_secret(path)
    finally:
        os.unlink(tmp)
    log.info("created a new pseudonym key in %s", path)
    return key


def secret_from_settings(settings: PrivacySettings) -> bytes:
    if settings.secret is not None:
        return settings.secret.get_secret_value().encode("utf-8")
    return load_or_create_secret(settings.secret_file)


def home_pseudonym(secret: bytes, home: str, at: float, settings: PrivacySettings) -> str:
    """The home's pseudonym for data of time `at` (stable within a rotation period)."""
    days = settings.pseudonym_rotation_days
    epoch = 0 if days == 0 else int(at // (days * 86400))
    digest = hmac.new(secret, f"{home}\x00{epoch}".encode(), hashlib.sha256).hexdigest()
    return settings.pseudonym_prefix + digest[: settings.pseudonym_hex_chars]


def laplace_scales(known: Metric, epsilon: float) -> tuple[float, float]:
    """Laplace scales (count, sum) for one release of `known` at `epsilon`, split evenly."""
    half = epsilon / 2.0
    return 1.0 / half, max(abs(known.low), abs(known.high)) / half


def noised_count_sum(
    values: Collection[float], known: Metric, epsilon: float, rng: NoiseSource
) -> tuple[float, float]:
    """(noisy count, noisy sum) of `values` clipped to the metric's range."""
    count_scale, sum_scale = laplace_scales(known, epsilon)
    lo, hi = known.low, known.high
    clipped = (min(max(v, lo), hi) for v in as_float_array(values))
    count = float(len(values)) + float(rng.laplace(0.0, count_scale))
    total = exact_sum(clipped) + float(rng.laplace(0.0, sum_scale))
    return count, total


def try_spend(
    conn: Connection, home: str, period_start: float, epsilon: float, budget: float
) -> bool:
    """Charge `epsilon` to the home's period in the ledger; False (and counted) once spent."""
    conn.execute(
        insert(privacy_ledger)
        .values(home=home, period_start=period_start, epsilon_spent=0.0, releases=0, refused=0)
        .on_conflict_do_nothing()
    )
    key = (privacy_ledger.c.home == home) & (privacy_ledger.c.period_start == period_start)
    spent = conn.execute(select(privacy_ledger.c.epsilon_spent).where(key)).scalar_one()
    # The tolerance keeps float sums like 10 * 0.1 from refusing the last affordable release.
    if spent + epsilon > budget + 1e-9:
        conn.execute(update(privacy_ledger).where(key).values(refused=privacy_ledger.c.refused + 1))
        return False
    conn.execute(
        update(privacy_ledger)
        .where(key)
        .values(
            epsilon_spent=privacy_ledger.c.epsilon_spent + epsilon,
            releases=privacy_ledger.c.releases + 1,
        )
    )
    return True


@dataclass(frozen=True, slots=True)
class Release:
    """The outcome of filtering one pass's windows."""

    aggregates: tuple[WindowAggregate, ...]
    suppressed: int  # windows under min_window_count
    refused: int  # noised windows refused by the budget
    local: int  # windows of local-only metrics
    epsilon_spent: float
    no_events: int = 0  # windows of an event metric without an event


def event_count(values: Collection[float]) -> int:
    """Events among an event metric's decisions: readings of at least 0.5 (1 = event)."""
    return sum(1 for v in as_float_array(values) if v >= 0.5)


class PrivacyFilter:
    """Applies `PrivacySettings` to window groups (in the caller's transaction, for the ledger)."""

    def __init__(self, settings: PrivacySettings, secret: bytes, rng: NoiseSource) -> None:
        if len(secret) < 16:
            raise ValueError("the pseudonym key must have at least 16 bytes")
        self.settings = settings
        self._secret = secret
        self._rng = rng

    def pseudonym(self, home: str, at: float) -> str:
        return home_pseudonym(self._secret, home, at, self.settings)

    def release(self, conn: Connection, groups: Sequence[WindowGroup]) -> Release:
        s = self.settings
        digits = s.significant_digits

        def r(x: float) -> float:
            return round_significant(x, digits)

        merged: dict[tuple[str, str, str, str, float, int], list[WindowGroup]] = defaultdict(list)
        for g in groups:
            key = (
                g.home,
                room_class(g.room, s.rooms).value,
                device_class_category(g.device_class),
                g.metric,
                g.window_start,
                g.window_s,
            )
            merged[key].append(g)

        out: list[WindowAggregate] = []
        suppressed = refused = local = no_events = 0
        epsilon_spent = 0.0
        for (home, rclass, dclass, name, start, window_s), parts in sorted(merged.items()):
            policy = s.policy_of(name)
            if policy is Policy.LOCAL:
                local += 1
                continue
            known = metric(name)
            values = _joined([p.values for p in parts]) if len(parts) > 1 else None
            pseudonym = self.pseudonym(home, start)
            unit = known.unit if known is not None else ""

            where: dict[str, Any] = {
                "window_start": start,
                "window_s": window_s,
                "home": pseudonym,
                "room_class": rclass,
                "device_class": dclass,
                "metric": name,
                "unit": unit,
            }
            event = is_event(name)
            if event:
                n = event_count(parts[0].values if values is None else values)
                if n == 0:
                    no_events += 1
                    continue
                values = array("d", [1.0]) * n  # the events are what is released
            if event and policy is Policy.AGGREGATE:
                out.append(
                    WindowAggregate(
                        **where, policy="aggregate", count=float(n), sum=float(n), mean=1.0
                    )
                )
                continue
            if policy is Policy.AGGREGATE:
                st = parts[0].stats if values is None else WindowStats.of(values)
                if st.count < s.min_window_count:
                    suppressed += 1
                    continue
                out.append(
                    WindowAggregate(
                        **where,
                        policy="aggregate",
                        count=st.count,
                        sum=r(st.sum),
                        mean=r(st.mean),
                        min=r(st.min),
                        max=r(st.max),
                        std=r(st.std),
                        p50=r(st.p50),
                        p95=r(st.p95),
                    )
                )
                continue
            if known is None:
                # Unreachable through validated settings (noised needs a range); stay private.
                local += 1
                continue
            period = float(start // s.budget_period_s * s.budget_period_s)
            if not try_spend(conn, home, period, s.epsilon, s.budget_epsilon):
                refused += 1
                continue
            epsilon_spent += s.epsilon
            vals = parts[0].values if values is None else values
            count, total = noised_count_sum(vals, known, s.epsilon, self._rng)
            count_scale, sum_scale = laplace_scales(known, s.epsilon)
            # The threshold applies to the count as released (rounding is post-processing, so
            # privacy is unchanged): rounding down must not release a window under it, which
            # the batch contract and the cloud refuse.
            released_count = round_to_noise(count, count_scale)
            if released_count < (MIN_EVENT_COUNT if event else s.min_window_count):
                suppressed += 1
                continue
            mean = min(max(total / max(count, 1.0), known.low), known.high)
            out.append(
                WindowAggregate(
                    **where,
                    policy="noised",
                    count=released_count,
                    sum=round_to_noise(total, sum_scale),
                    mean=round_to_noise(mean, sum_scale / max(count, 1.0)),
                    epsilon=s.epsilon,
                )
            )
        counters.bump(conn, "suppressed_windows", suppressed)
        counters.bump(conn, "epsilon_refused", refused)
        if refused:
            log.warning("privacy budget spent: %d noised windows refused", refused)
        return Release(
            aggregates=tuple(out),
            suppressed=suppressed,
            refused=refused,
            local=local,
            epsilon_spent=epsilon_spent,
            no_events=no_events,
        )


def _joined(parts: Sequence[Collection[float]]) -> array[float]:
    joined = array("d")
    for part in parts:
        joined.extend(as_float_array(part))
    return joined

"""Card-not-present attacks: card-testing bursts, account takeovers, fraud rings.

Each attack is generated as whole episodes (one burst, one takeover, one ring) until it
has produced about the number of rows its rate asks for; every row carries its episode
number so that evaluation can count caught episodes, not only caught rows.
"""

from __future__ import annotations

import math

import numpy as np

from fraudstream.simulator.config import ATTACKS, SimulatorConfig
from fraudstream.simulator.geography import (
    CITY_COUNTRY,
    CITY_LAT,
    CITY_LON,
    ECOM,
    FAR_CITIES,
    FRAUD_HOUR_PROFILE,
    HOME_CITIES,
    MCCS,
    TYPE_AMOUNT_FACTOR,
    TYPE_HIGH_VALUE,
    haversine_km,
    jitter_km,
)
from fraudstream.simulator.population import Population
from fraudstream.simulator.rows import (
    MS_PER_DAY,
    AddressBook,
    FloatArray,
    IntArray,
    TxRows,
    full,
    group_members,
    ragged_offsets,
    rank_in_group,
    time_of_day_ms,
)

CARD_TESTING = ATTACKS.index("card_testing")
ACCOUNT_TAKEOVER = ATTACKS.index("account_takeover")
FRAUD_RING = ATTACKS.index("fraud_ring")
TESTING_MCCS = (MCCS.index("5816"), MCCS.index("5999"))
HOSTING_SHARE = 0.5  # card-testing bots behind data-centre addresses
RING_DEVICE_SWAP = 0.15  # rows where a ring member grabs another of the ring's devices
MIN_TAKEOVER_KM = 600.0  # farther than a cardholder could have gone since their last payment


def episode_count(sizes: IntArray, target_rows: float) -> int:
    """How many of the episodes (rows each in ``sizes``) come closest to ``target_rows``."""
    if target_rows <= 0:
        return 0
    reached = np.cumsum(sizes)
    k = int(np.searchsorted(reached, target_rows))
    if k >= reached.shape[0]:
        return int(reached.shape[0])
    # Whole episodes only: an attack asked for less than half an episode is left out.
    before = reached[k - 1] if k > 0 else 0
    return k if target_rows - before < reached[k] - target_rows else k + 1


def episode_sizes(
    rng: np.random.Generator, target_rows: float, bounds: tuple[int, int]
) -> IntArray:
    """Rows per episode, for as many episodes as make about ``target_rows`` rows."""
    if target_rows <= 0:
        return np.zeros(0, dtype=np.int64)
    enough = math.ceil(target_rows / max(bounds[0], 1)) + 1
    sizes = rng.integers(bounds[0], bounds[1] + 1, enough).astype(np.int64)
    return sizes[: episode_count(sizes, target_rows)]


def episode_starts(rng: np.random.Generator, n: int, days: int, last_ms: float) -> IntArray:
    """Start times leaving ``last_ms`` before the end of the simulated period."""
    start = rng.integers(0, days, n) * MS_PER_DAY + time_of_day_ms(rng, n, FRAUD_HOUR_PROFILE)
    latest = max(days * MS_PER_DAY - 1 - int(last_ms), 0)
    return np.asarray(np.minimum(start, latest), dtype=np.int64)


def card_testing(
    cfg: SimulatorConfig,
    pop: Population,
    rng: np.random.Generator,
    book: AddressBook,
    target: float,
) -> TxRows:
    """Bursts of tiny payments, many stolen cards, one bot (device + IP), one merchant."""
    shape = cfg.attacks
    lo, hi = shape.card_testing_burst_rows
    sizes = episode_sizes(rng, target, (lo, hi))
    n_bursts = int(sizes.shape[0])
    if n_bursts == 0:
        return TxRows.empty()
    burst = np.repeat(np.arange(n_bursts, dtype=np.int64), sizes)
    n = int(burst.shape[0])

    duration = rng.uniform(*shape.card_testing_burst_minutes, n_bursts) * 60_000
    start = episode_starts(rng, n_bursts, cfg.days, float(duration.max(initial=0.0)))
    time_ms = start[burst] + (rng.random(n) * duration[burst]).astype(np.int64)

    terms = pop.terminals
    targets = terms.online[np.isin(terms.mcc[terms.online], TESTING_MCCS)]
    terminal = rng.choice(targets, n_bursts)[burst]
    city = np.where(
        rng.random(n_bursts) < 0.5,
        rng.choice(FAR_CITIES, n_bursts),
        rng.choice(HOME_CITIES, n_bursts),
    )
    country = CITY_COUNTRY[city].astype(np.int64)
    ip = book.new_ips(rng, country, hosting=rng.random(n_bursts) < HOSTING_SHARE)
    lat, lon = jitter_km(rng, CITY_LAT[city], CITY_LON[city], 5.0)
    lo_amount, hi_amount = shape.card_testing_amount
    return TxRows(
        card=rng.integers(0, len(pop.cards), n).astype(np.int64),
        terminal=terminal,
        time_ms=time_ms,
        amount=np.round(rng.uniform(lo_amount, hi_amount, n), 2),
        channel=full(n, ECOM),
        device=book.new_devices(n_bursts)[burst],
        ip=ip[burst],
        country=country[burst],
        lat=lat[burst],
        lon=lon[burst],
        attack=full(n, CARD_TESTING),
        episode=burst,
    )


def _takeover_cities(
    rng: np.random.Generator,
    home_country: IntArray,
    home_lat: FloatArray,
    home_lon: FloatArray,
    far_share: float,
) -> IntArray:
    """Another continent, or a home-region country too far to have travelled to."""
    n = int(home_country.shape[0])
    near = rng.choice(HOME_CITIES, n)
    city = np.where(rng.random(n) < far_share, rng.choice(FAR_CITIES, n), near)
    too_close = (CITY_COUNTRY[city] == home_country) | (
        haversine_km(CITY_LAT[city], CITY_LON[city], home_lat, home_lon) < MIN_TAKEOVER_KM
    )
    city[too_close] = rng.choice(FAR_CITIES, int(too_close.sum()))
    return city.astype(np.int64)


def fraud_amounts(
    rng: np.random.Generator, usual: FloatArray, mtype: IntArray, median_ratio: float, sigma: float
) -> FloatArray:
    amount = usual * TYPE_AMOUNT_FACTOR[mtype] * rng.lognormal(np.log(median_ratio), sigma)
    return np.asarray(np.clip(np.round(amount, 2), 1.0, 25_000.0), dtype=np.float64)


def account_takeover(
    cfg: SimulatorConfig,
    pop: Population,
    rng: np.random.Generator,
    book: AddressBook,
    target: float,
) -> TxRows:
    """A card suddenly used from a new device in a new, distant country, for more money."""
    shape = cfg.attacks
    sizes = episode_sizes(rng, target, shape.takeover_rows)
    n_events = int(sizes.shape[0])
    if n_events == 0:
        return TxRows.empty()
    event = np.repeat(np.arange(n_events, dtype=np.int64), sizes)
    n = int(event.shape[0])
    cards, terms = pop.cards, pop.terminals

    victim = rng.integers(0, len(cards), n_events)
    duration = rng.uniform(*shape.takeover_hours, n_events) * 3_600_000
    start = episode_starts(rng, n_events, cfg.days, float(duration.max(initial=0.0)))
    time_ms = start[event] + (rng.random(n) * duration[event]).astype(np.int64)

    city = _takeover_cities(
        rng,
        cards.home_country[victim],
        cards.home_lat[victim],
        cards.home_lon[victim],
        shape.takeover_far_share,
    )
    country = CITY_COUNTRY[city].astype(np.int64)
    ip = book.new_ips(rng, country)
    lat, lon = jitter_km(rng, CITY_LAT[city], CITY_LON[city], 5.0)

    resale = terms.online[TYPE_HIGH_VALUE[terms.mtype[terms.online]]]
    anything = terms.online
    terminal = np.where(rng.random(n) < 0.7, rng.choice(resale, n), rng.choice(anything, n))
    card = victim[event].astype(np.int64)
    return TxRows(
        card=card,
        terminal=terminal.astype(np.int64),
        time_ms=time_ms,
        amount=fraud_amounts(rng, cards.mean_amount[card], terms.mtype[terminal], 2.5, 0.6),
        channel=full(n, ECOM),
        device=book.new_devices(n_events)[event],
        ip=ip[event],
        country=country[event],
        lat=lat[event],
        lon=lon[event],
        attack=full(n, ACCOUNT_TAKEOVER),
        episode=event,
    )


def _ring_members(
    rng: np.random.Generator, home_country: IntArray, ring_country: IntArray, sizes: IntArray
) -> IntArray:
    """Distinct cards per ring, from the ring's own country when it has enough of them.

    Local rings (mules, synthetic identities) look domestic: what gives them away is the
    devices and addresses they share, not geography. One draw per ring: a few dozen.
    """
    chosen = []
    everyone = np.arange(home_country.shape[0])
    for country, size in zip(ring_country.tolist(), sizes.tolist(), strict=True):
        local = np.flatnonzero(home_country == country)
        pool = local if local.shape[0] >= 2 * size else everyone
        chosen.append(rng.choice(pool, size, replace=False))
    return np.concatenate(chosen).astype(np.int64)


def fraud_ring(
    cfg: SimulatorConfig,
    pop: Population,
    rng: np.random.Generator,
    book: AddressBook,
    target: float,
) -> TxRows:
    """Several cards run from a handful of shared devices and IPs, at the same merchants."""
    shape = cfg.attacks
    n_cards = len(pop.cards)
    if target <= 0:
        return TxRows.empty()
    enough = math.ceil(target / max(shape.ring_cards[0] * shape.ring_devices[0], 1)) + 1

    def draw(bounds: tuple[int, int], low: int = 0) -> IntArray:
        return np.maximum(rng.integers(bounds[0], bounds[1] + 1, enough), low).astype(np.int64)

    n_members = np.minimum(draw(shape.ring_cards, 1), n_cards)
    n_devices, n_ips = draw(shape.ring_devices, 1), draw(shape.ring_ips, 1)
    n_merchants, window_days = draw(shape.ring_merchants, 1), draw(shape.ring_days, 1)
    # Each device serves every member for at least one round, so every device is shared.
    rounds = n_devices + rng.integers(0, 3, enough)
    n_rings = episode_count(n_members * rounds, target)
    if n_rings == 0:
        return TxRows.empty()
    n_members, n_devices, n_ips, n_merchants, window_days, rounds = (
        a[:n_rings] for a in (n_members, n_devices, n_ips, n_merchants, window_days, rounds)
    )
    sizes = n_members * rounds
    ring = np.repeat(np.arange(n_rings, dtype=np.int64), sizes)
    j = rank_in_group(sizes)
    n = int(ring.shape[0])

    city = np.where(
        rng.random(n_rings) < 0.8, rng.choice(HOME_CITIES, n_rings), rng.choice(FAR_CITIES, n_rings)
    )
    ring_country = CITY_COUNTRY[city].astype(np.int64)
    members = _ring_members(rng, pop.cards.home_country, ring_country, n_members)
    card = members[ragged_offsets(n_members)[ring] + j % n_members[ring]]

    device_pool = book.new_devices(int(n_devices.sum()))
    device_at = ragged_offsets(n_devices)[ring] + (j // n_members[ring]) % n_devices[ring]
    swap = rng.random(n) < RING_DEVICE_SWAP
    device_at[swap] = group_members(rng, ring[swap], ragged_offsets(n_devices), n_devices)

    ip_pool = book.new_ips(rng, np.repeat(ring_country, n_ips))
    ip = ip_pool[group_members(rng, ring, ragged_offsets(n_ips), n_ips)]
    terms = pop.terminals
    merchant_pool = rng.choice(terms.online, int(n_merchants.sum()))
    terminal = merchant_pool[group_members(rng, ring, ragged_offsets(n_merchants), n_merchants)]

    first_day = rng.integers(0, np.maximum(cfg.days - window_days, 0) + 1)
    day = first_day[ring] + (rng.random(n) * np.minimum(window_days, cfg.days)[ring]).astype(
        np.int64
    )
    time_ms = np.minimum(day, cfg.days - 1) * MS_PER_DAY + time_of_day_ms(
        rng, n, FRAUD_HOUR_PROFILE
    )
    lat, lon = jitter_km(rng, CITY_LAT[city][ring], CITY_LON[city][ring], 3.0)
    return TxRows(
        card=card,
        terminal=terminal,
        time_ms=time_ms.astype(np.int64),
        amount=fraud_amounts(rng, pop.cards.mean_amount[card], terms.mtype[terminal], 1.8, 0.5),
        channel=full(n, ECOM),
        device=device_pool[device_at],
        ip=ip,
        country=ring_country[ring],
        lat=lat,
        lon=lon,
        attack=full(n, FRAUD_RING),
        episode=ring,
    )

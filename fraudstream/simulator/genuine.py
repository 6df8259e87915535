"""Everyday payments of honest cardholders, all at once as arrays.

Besides routine shopping near home, honest cardholders travel (in the region and
abroad), buy from new phones and from mobile networks, and share a computer with their
household: the same surface signals the attacks show, so none of them alone is proof.
"""

from __future__ import annotations

import numpy as np

from fraudstream.simulator.config import SimulatorConfig
from fraudstream.simulator.geography import (
    ATM,
    ATM_CHANNEL,
    CITY_COUNTRY,
    CITY_LAT,
    CITY_LON,
    CONTACTLESS,
    ECOM,
    FAR_CITIES,
    HOME_CITIES,
    HOUR_PROFILE,
    MOTO,
    POS,
    STORE,
    TYPE_AMOUNT_FACTOR,
    jitter_km,
)
from fraudstream.simulator.population import Population
from fraudstream.simulator.rows import (
    FINGERPRINT_BASE,
    MS_PER_DAY,
    NO_DEVICE,
    NO_IP,
    AddressBook,
    IntArray,
    TxRows,
    full,
    time_of_day_ms,
)

# Monday first: a little busier towards the weekend, quiet on Sundays.
WEEKDAY_FACTOR = np.array([0.95, 0.95, 1.0, 1.0, 1.1, 1.15, 0.85])
CONTACTLESS_LIMIT = 50.0
CONTACTLESS_SHARE = 0.75
MOTO_SHARE = 0.05
MIN_AMOUNT = 0.25


def genuine_transactions(
    cfg: SimulatorConfig, pop: Population, rng: np.random.Generator, book: AddressBook
) -> TxRows:
    cards, terms = pop.cards, pop.terminals
    n_cards, days = len(cards), cfg.days
    weekday = (cfg.start.weekday() + np.arange(days)) % 7
    counts = rng.poisson(cards.tx_rate[:, None] * WEEKDAY_FACTOR[weekday][None, :])
    card_day = np.repeat(np.arange(n_cards * days, dtype=np.int64), counts.ravel())
    card, day = card_day // days, card_day % days
    n = int(card.shape[0])
    time_ms = day * MS_PER_DAY + time_of_day_ms(rng, n, HOUR_PROFILE)

    # A travelling card spends the whole day in another city.
    travel_day = rng.random(n_cards * days) < cfg.travel_rate
    destination = _travel_destinations(cfg, pop, rng, n_cards * days)
    travelling = travel_day[card_day]
    dest = destination[card_day]

    u = rng.random(n)
    online = u < cards.online_share[card]
    atm = ~online & (u < cards.online_share[card] + cards.atm_share[card])
    store = ~online & ~atm
    terminal = np.empty(n, dtype=np.int64)
    k = cards.near_stores.shape[1]
    favourite = (np.arange(1, k + 1, dtype=np.float64)) ** -0.7
    column = rng.choice(k, int(store.sum()), p=favourite / favourite.sum())
    terminal[store] = cards.near_stores[card[store], column]
    terminal[atm] = cards.near_atms[
        card[atm], rng.integers(0, cards.near_atms.shape[1], int(atm.sum()))
    ]
    terminal[online] = terms.online[
        rng.choice(terms.online.shape[0], int(online.sum()), p=terms.popularity)
    ]
    away_present = travelling & ~online
    terminal[away_present] = terms.present_in(rng, dest[away_present])

    kind = terms.kind[terminal]
    amount = cards.mean_amount[card] * TYPE_AMOUNT_FACTOR[terms.mtype[terminal]]
    amount = amount * rng.lognormal(0.0, 0.6, n)
    amount = np.where(kind == ATM, np.maximum(np.round(amount / 10.0) * 10.0, 20.0), amount)
    amount = np.maximum(np.round(amount, 2), MIN_AMOUNT)

    v = rng.random(n)
    channel = np.where(
        kind == ATM,
        ATM_CHANNEL,
        np.where(
            kind == STORE,
            np.where((amount <= CONTACTLESS_LIMIT) & (v < CONTACTLESS_SHARE), CONTACTLESS, POS),
            np.where(v < MOTO_SHARE, MOTO, ECOM),
        ),
    ).astype(np.int64)

    device = _devices(cfg, pop, rng, book, card=card, terminal=terminal, channel=channel)
    ip, country, lat, lon = _where_from(
        cfg,
        pop,
        rng,
        book,
        card=card,
        terminal=terminal,
        channel=channel,
        travelling=travelling,
        dest=dest,
    )
    return TxRows(
        card=card,
        terminal=terminal,
        time_ms=time_ms,
        amount=amount,
        channel=channel,
        device=device,
        ip=ip,
        country=country,
        lat=lat,
        lon=lon,
        attack=full(n, 0),
        episode=full(n, -1),
    )


def _travel_destinations(
    cfg: SimulatorConfig, pop: Population, rng: np.random.Generator, n: int
) -> IntArray:
    with_shops = pop.terminals.cities_with_present()
    near = np.intersect1d(HOME_CITIES, with_shops)
    far = np.intersect1d(FAR_CITIES, with_shops)
    near = near if near.shape[0] else with_shops
    far = far if far.shape[0] else near
    go_far = rng.random(n) < cfg.far_travel_share
    return np.where(go_far, rng.choice(far, n), rng.choice(near, n)).astype(np.int64)


def _devices(
    cfg: SimulatorConfig,
    pop: Population,
    rng: np.random.Generator,
    book: AddressBook,
    *,
    card: IntArray,
    terminal: IntArray,
    channel: IntArray,
) -> IntArray:
    cards = pop.cards
    n = int(card.shape[0])
    # Card present: the terminal's fingerprint, or the phone for wallet contactless.
    device = FINGERPRINT_BASE + terminal
    wallet = (channel == CONTACTLESS) & cards.wallet[card]
    device[wallet] = cards.devices[card[wallet], 0]
    ecom = channel == ECOM
    slot = (rng.random(n) * cards.n_devices[card]).astype(np.int64)
    device[ecom] = cards.devices[card[ecom], slot[ecom]]
    new = ecom & (rng.random(n) < cfg.new_device_rate)
    device[new] = book.new_devices(int(new.sum()))
    device[channel == MOTO] = NO_DEVICE
    return device


def _where_from(
    cfg: SimulatorConfig,
    pop: Population,
    rng: np.random.Generator,
    book: AddressBook,
    *,
    card: IntArray,
    terminal: IntArray,
    channel: IntArray,
    travelling: np.ndarray,
    dest: IntArray,
) -> tuple[IntArray, IntArray, np.ndarray, np.ndarray]:
    """IP, country and position: the terminal's when card present, the payer's online."""
    cards, terms = pop.cards, pop.terminals
    n = int(card.shape[0])
    country = terms.country[terminal].copy()
    lat, lon = terms.lat[terminal].copy(), terms.lon[terminal].copy()
    ip = full(n, NO_IP)

    ecom = channel == ECOM
    home = ecom & ~travelling
    lat[home], lon[home] = jitter_km(
        rng, cards.home_lat[card[home]], cards.home_lon[card[home]], 2.0
    )
    country[home] = cards.home_country[card[home]]
    slot = (rng.random(n) * cards.n_ips[card]).astype(np.int64)
    ip[home] = cards.ips[card[home], slot[home]]
    mobile = home & (rng.random(n) < cfg.mobile_ip_rate)
    ip[mobile] = book.new_ips(rng, country[mobile])

    away = ecom & travelling
    lat[away], lon[away] = jitter_km(rng, CITY_LAT[dest[away]], CITY_LON[dest[away]], 4.0)
    country[away] = CITY_COUNTRY[dest[away]]
    ip[away] = book.new_ips(rng, country[away])
    return ip, country, lat, lon

"""Cards and merchants: who pays, where, how much, from which devices and addresses."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

from fraudstream.simulator.config import SimulatorConfig
from fraudstream.simulator.geography import (
    ATM,
    CITY_COUNTRY,
    CITY_LAT,
    CITY_LON,
    CITY_WEIGHT,
    FAR_CITIES,
    HOME_CITIES,
    MERCHANT_TYPES,
    ONLINE,
    STORE,
    TYPE_HIGH_VALUE,
    TYPE_KIND,
    TYPE_MCC,
    jitter_km,
    to_unit_sphere,
)
from fraudstream.simulator.rows import AddressBook, FloatArray, IntArray

NEAR_STORES = 24  # a card's everyday shops are among the nearest this many
NEAR_ATMS = 3
NEAR_HIGH_VALUE = 5
ABROAD_STORE_SHARE = 0.03  # shops and ATMs on other continents, for holidays
MAX_DEVICES = 3
MAX_IPS = 2


@dataclass(frozen=True, slots=True)
class Terminals:
    merchant: IntArray
    mtype: IntArray  # index into MERCHANT_TYPES
    kind: IntArray  # STORE / ATM / ONLINE
    mcc: IntArray  # index into MCCS
    city: IntArray
    country: IntArray
    lat: FloatArray
    lon: FloatArray
    popularity: FloatArray  # chance of being picked among online merchants (sums to 1)
    online: IntArray  # indices of online terminals, aligned with ``popularity``
    # Card-present terminals grouped by city: present_by_city[start[c]:start[c + 1]].
    present_by_city: IntArray
    present_city_start: IntArray

    def __len__(self) -> int:
        return int(self.merchant.shape[0])

    def present_in(self, rng: np.random.Generator, city: IntArray) -> IntArray:
        """A random card-present terminal in each given city (cities must have some)."""
        start = self.present_city_start[city]
        count = self.present_city_start[city + 1] - start
        pick = np.minimum((rng.random(city.shape[0]) * count).astype(np.int64), count - 1)
        return np.asarray(self.present_by_city[start + pick], dtype=np.int64)

    def cities_with_present(self) -> IntArray:
        return np.flatnonzero(np.diff(self.present_city_start) > 0).astype(np.int64)


@dataclass(frozen=True, slots=True)
class Cards:
    home_city: IntArray
    home_country: IntArray
    home_lat: FloatArray
    home_lon: FloatArray
    mean_amount: FloatArray
    tx_rate: FloatArray  # payments per day
    online_share: FloatArray
    atm_share: FloatArray
    wallet: np.ndarray  # pays contactless with a phone (its device) rather than the card
    devices: IntArray  # (n, MAX_DEVICES); columns past n_devices repeat the first
    n_devices: IntArray
    ips: IntArray  # (n, MAX_IPS)
    n_ips: IntArray
    near_stores: IntArray  # (n, k) terminal indices, nearest first
    near_atms: IntArray
    near_high_value: IntArray

    def __len__(self) -> int:
        return int(self.home_city.shape[0])


@dataclass(frozen=True, slots=True)
class Population:
    cards: Cards
    terminals: Terminals


def build_population(
    cfg: SimulatorConfig, rng: np.random.Generator, book: AddressBook
) -> Population:
    terminals = _build_terminals(cfg.n_terminals, rng)
    cards = _build_cards(cfg, rng, book, terminals)
    return Population(cards=cards, terminals=terminals)


def _build_terminals(n_terminals: int, rng: np.random.Generator) -> Terminals:
    shares = np.array([m.share for m in MERCHANT_TYPES])
    # Every merchant type exists at least once, so every attack has somewhere to happen.
    mtype = np.concatenate(
        [
            np.arange(len(MERCHANT_TYPES)),
            rng.choice(len(MERCHANT_TYPES), n_terminals, p=shares / shares.sum()),
        ]
    ).astype(np.int64)
    kind = TYPE_KIND[mtype].astype(np.int64)
    lanes = np.where(kind == STORE, np.minimum(1 + rng.poisson(0.7, mtype.shape[0]), 4), 1)
    n_merchants = int(np.searchsorted(np.cumsum(lanes), n_terminals) + 1)
    mtype, kind, lanes = mtype[:n_merchants], kind[:n_merchants], lanes[:n_merchants]
    lanes[-1] -= int(lanes.sum()) - n_terminals

    home_weight = CITY_WEIGHT[HOME_CITIES] / CITY_WEIGHT[HOME_CITIES].sum()
    city = HOME_CITIES[rng.choice(HOME_CITIES.shape[0], n_merchants, p=home_weight)]
    abroad = (kind != ONLINE) & (rng.random(n_merchants) < ABROAD_STORE_SHARE)
    city[abroad] = rng.choice(FAR_CITIES, int(abroad.sum()))
    m_lat, m_lon = jitter_km(rng, CITY_LAT[city], CITY_LON[city], 6.0)

    merchant = np.repeat(np.arange(n_merchants, dtype=np.int64), lanes)
    t_type = mtype[merchant]
    t_kind = kind[merchant]
    t_city = city[merchant].astype(np.int64)
    lat, lon = jitter_km(rng, m_lat[merchant], m_lon[merchant], 0.02)

    online = np.flatnonzero(t_kind == ONLINE).astype(np.int64)
    weight = rng.lognormal(0.0, 1.2, online.shape[0])
    present = np.flatnonzero(t_kind != ONLINE)
    order = present[np.argsort(t_city[present], kind="stable")]
    start = np.searchsorted(t_city[order], np.arange(len(CITY_LAT) + 1)).astype(np.int64)
    return Terminals(
        merchant=merchant,
        mtype=t_type,
        kind=t_kind,
        mcc=TYPE_MCC[t_type].astype(np.int64),
        city=t_city,
        country=CITY_COUNTRY[t_city].astype(np.int64),
        lat=lat,
        lon=lon,
        popularity=weight / weight.sum(),
        online=online,
        present_by_city=order.astype(np.int64),
        present_city_start=start,
    )


def _nearest(points: FloatArray, candidates: IntArray, terminals: Terminals, k: int) -> IntArray:
    k = min(k, int(candidates.shape[0]))
    tree = cKDTree(to_unit_sphere(terminals.lat[candidates], terminals.lon[candidates]))
    _, idx = tree.query(points, k=k)
    return np.asarray(candidates[np.asarray(idx).reshape(points.shape[0], k)], dtype=np.int64)


def _build_cards(
    cfg: SimulatorConfig, rng: np.random.Generator, book: AddressBook, terminals: Terminals
) -> Cards:
    n = cfg.n_cards
    home_weight = CITY_WEIGHT[HOME_CITIES] / CITY_WEIGHT[HOME_CITIES].sum()
    home_city = HOME_CITIES[rng.choice(HOME_CITIES.shape[0], n, p=home_weight)].astype(np.int64)
    home_lat, home_lon = jitter_km(rng, CITY_LAT[home_city], CITY_LON[home_city], 8.0)
    home_country = CITY_COUNTRY[home_city].astype(np.int64)

    n_devices = (1 + rng.binomial(MAX_DEVICES - 1, 0.35, n)).astype(np.int64)
    devices = book.new_devices(n * MAX_DEVICES).reshape(n, MAX_DEVICES)
    n_ips = (1 + (rng.random(n) < 0.4)).astype(np.int64)
    ips = book.new_ips(rng, np.repeat(home_country, MAX_IPS)).reshape(n, MAX_IPS)

    # Households: two cards at one address sharing a computer and a router.
    first = np.arange(0, n - 1, 2)
    first = first[rng.random(first.shape[0]) < cfg.shared_household_rate]
    second = first + 1
    for column in (home_city, home_country, home_lat, home_lon):
        column[second] = column[first]
    devices[second, 0] = devices[first, 0]
    ips[second, 0] = ips[first, 0]
    # Unused slots repeat the first so that any slot can be drawn without a mask.
    devices = np.where(np.arange(MAX_DEVICES) < n_devices[:, None], devices, devices[:, :1])
    ips = np.where(np.arange(MAX_IPS) < n_ips[:, None], ips, ips[:, :1])

    points = to_unit_sphere(home_lat, home_lon)
    stores = np.flatnonzero(terminals.kind == STORE).astype(np.int64)
    atms = np.flatnonzero(terminals.kind == ATM).astype(np.int64)
    high_value = np.flatnonzero(
        (terminals.kind == STORE) & TYPE_HIGH_VALUE[terminals.mtype]
    ).astype(np.int64)
    return Cards(
        home_city=home_city,
        home_country=home_country,
        home_lat=home_lat,
        home_lon=home_lon,
        mean_amount=rng.lognormal(np.log(35.0), 0.5, n),
        tx_rate=rng.gamma(2.0, cfg.mean_tx_per_card_day / 2.0, n),
        online_share=rng.beta(2.0, 6.0, n),
        atm_share=rng.beta(1.0, 15.0, n),
        wallet=rng.random(n) < 0.4,
        devices=devices,
        n_devices=n_devices,
        ips=ips,
        n_ips=n_ips,
        near_stores=_nearest(points, stores, terminals, NEAR_STORES),
        near_atms=_nearest(points, atms, terminals, NEAR_ATMS),
        near_high_value=_nearest(points, high_value, terminals, NEAR_HIGH_VALUE),
    )

"""Static world the population lives in: cities, countries, currencies, merchant types.

Cardholders live in a European home region; cities on other continents exist so that
genuine holidays and account takeovers can both be "far away" (the distance alone must
not give fraud away).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]

EARTH_RADIUS_KM = 6371.0


class City(NamedTuple):
    country: str
    lat: float
    lon: float
    weight: float  # relative population; 0 for cities where nobody lives
    home: bool  # part of the region cardholders live in


CITIES: tuple[City, ...] = (
    City("FR", 48.857, 2.352, 8.0, True),  # Paris
    City("FR", 45.764, 4.836, 1.5, True),  # Lyon
    City("FR", 43.296, 5.370, 1.5, True),  # Marseille
    City("FR", 43.605, 1.444, 1.0, True),  # Toulouse
    City("FR", 50.629, 3.057, 1.0, True),  # Lille
    City("FR", 44.838, -0.579, 1.0, True),  # Bordeaux
    City("DE", 52.520, 13.405, 3.6, True),  # Berlin
    City("DE", 53.551, 9.994, 1.8, True),  # Hamburg
    City("DE", 48.135, 11.582, 1.5, True),  # Munich
    City("DE", 50.938, 6.960, 1.1, True),  # Cologne
    City("DE", 50.110, 8.682, 0.8, True),  # Frankfurt
    City("ES", 40.417, -3.704, 3.3, True),  # Madrid
    City("ES", 41.385, 2.173, 1.6, True),  # Barcelona
    City("ES", 39.470, -0.376, 0.8, True),  # Valencia
    City("ES", 37.389, -5.984, 0.7, True),  # Seville
    City("IT", 41.903, 12.496, 2.8, True),  # Rome
    City("IT", 45.464, 9.190, 1.4, True),  # Milan
    City("IT", 40.852, 14.268, 0.9, True),  # Naples
    City("IT", 45.070, 7.687, 0.9, True),  # Turin
    City("NL", 52.368, 4.904, 0.9, True),  # Amsterdam
    City("NL", 51.924, 4.478, 0.6, True),  # Rotterdam
    City("BE", 50.850, 4.352, 1.2, True),  # Brussels
    City("BE", 51.219, 4.402, 0.5, True),  # Antwerp
    City("PT", 38.722, -9.139, 0.5, True),  # Lisbon
    City("PT", 41.158, -8.629, 0.3, True),  # Porto
    City("AT", 48.208, 16.374, 1.9, True),  # Vienna
    City("IE", 53.350, -6.260, 1.2, True),  # Dublin
    City("PL", 52.230, 21.012, 1.8, True),  # Warsaw
    City("PL", 50.065, 19.945, 0.8, True),  # Krakow
    City("GB", 51.507, -0.128, 4.0, True),  # London
    City("GB", 53.480, -2.243, 1.2, True),  # Manchester
    City("SE", 59.329, 18.069, 1.0, True),  # Stockholm
    City("US", 40.713, -74.006, 0.0, False),  # New York
    City("US", 25.762, -80.192, 0.0, False),  # Miami
    City("BR", -23.551, -46.633, 0.0, False),  # São Paulo
    City("NG", 6.524, 3.379, 0.0, False),  # Lagos
    City("ID", -6.208, 106.846, 0.0, False),  # Jakarta
    City("PH", 14.600, 120.984, 0.0, False),  # Manila
    City("VN", 10.823, 106.630, 0.0, False),  # Ho Chi Minh City
    City("MX", 19.433, -99.133, 0.0, False),  # Mexico City
    City("TH", 13.756, 100.502, 0.0, False),  # Bangkok
    City("AE", 25.205, 55.271, 0.0, False),  # Dubai
    City("SG", 1.352, 103.820, 0.0, False),  # Singapore
)

CURRENCY_OF_COUNTRY: dict[str, str] = {
    "FR": "EUR", "DE": "EUR", "ES": "EUR", "IT": "EUR", "NL": "EUR", "BE": "EUR",
    "PT": "EUR", "AT": "EUR", "IE": "EUR", "PL": "PLN", "GB": "GBP", "SE": "SEK",
    "US": "USD", "BR": "BRL", "NG": "NGN", "ID": "IDR", "PH": "PHP", "VN": "VND",
    "MX": "MXN", "TH": "THB", "AE": "AED", "SG": "SGD",
}  # fmt: skip

COUNTRIES: tuple[str, ...] = tuple(dict.fromkeys(city.country for city in CITIES))
CURRENCIES: tuple[str, ...] = tuple(sorted(set(CURRENCY_OF_COUNTRY.values())))

CITY_LAT: FloatArray = np.array([c.lat for c in CITIES])
CITY_LON: FloatArray = np.array([c.lon for c in CITIES])
CITY_COUNTRY: npt.NDArray[np.int16] = np.array(
    [COUNTRIES.index(c.country) for c in CITIES], dtype=np.int16
)
CITY_WEIGHT: FloatArray = np.array([c.weight for c in CITIES])
HOME_CITIES: npt.NDArray[np.intp] = np.flatnonzero([c.home for c in CITIES])
FAR_CITIES: npt.NDArray[np.intp] = np.flatnonzero([not c.home for c in CITIES])
COUNTRY_CURRENCY: npt.NDArray[np.int16] = np.array(
    [CURRENCIES.index(CURRENCY_OF_COUNTRY[c]) for c in COUNTRIES], dtype=np.int16
)
# Each country's IPv4 addresses come from its own /8 blocks, so geolocation is coherent.
COUNTRY_IP_FIRST_OCTET: npt.NDArray[np.int64] = 31 + 7 * np.arange(len(COUNTRIES), dtype=np.int64)
HOSTING_IP_FIRST_OCTET = 185  # data-centre addresses used by card-testing bots


class MerchantType(NamedTuple):
    mcc: str
    kind: str  # "store" (card present), "atm" or "online"
    share: float  # of merchants
    amount_factor: float  # times the card's usual amount
    high_value: bool  # where a cloned card is spent


MERCHANT_TYPES: tuple[MerchantType, ...] = (
    MerchantType("5411", "store", 0.22, 1.0, False),  # grocery
    MerchantType("5812", "store", 0.17, 0.9, False),  # restaurants
    MerchantType("5814", "store", 0.05, 0.35, False),  # fast food
    MerchantType("5541", "store", 0.08, 1.3, False),  # fuel
    MerchantType("5912", "store", 0.06, 0.6, False),  # pharmacy
    MerchantType("5651", "store", 0.07, 1.8, True),  # clothing
    MerchantType("5732", "store", 0.04, 4.0, True),  # electronics
    MerchantType("5944", "store", 0.015, 6.0, True),  # jewellery
    MerchantType("6011", "atm", 0.08, 2.5, False),  # cash withdrawal
    MerchantType("5999", "online", 0.12, 1.5, False),  # online retail
    MerchantType("5816", "online", 0.06, 0.4, False),  # digital goods
    MerchantType("5732", "online", 0.025, 4.0, True),  # online electronics
    MerchantType("4511", "online", 0.02, 8.0, True),  # airlines
)
MCCS: tuple[str, ...] = tuple(dict.fromkeys(m.mcc for m in MERCHANT_TYPES))
TYPE_MCC: npt.NDArray[np.int16] = np.array(
    [MCCS.index(m.mcc) for m in MERCHANT_TYPES], dtype=np.int16
)
TYPE_AMOUNT_FACTOR: FloatArray = np.array([m.amount_factor for m in MERCHANT_TYPES])
KINDS: tuple[str, ...] = ("store", "atm", "online")
TYPE_KIND: npt.NDArray[np.int8] = np.array(
    [KINDS.index(m.kind) for m in MERCHANT_TYPES], dtype=np.int8
)
TYPE_HIGH_VALUE: npt.NDArray[np.bool_] = np.array([m.high_value for m in MERCHANT_TYPES])
STORE, ATM, ONLINE = 0, 1, 2

CHANNELS: tuple[str, ...] = ("pos", "ecom", "moto", "atm", "contactless")
POS, ECOM, MOTO, ATM_CHANNEL, CONTACTLESS = range(5)

# Share of a day's payments in each hour: quiet nights, lunch and evening peaks.
HOUR_PROFILE: FloatArray = np.array(
    [0.6, 0.3, 0.2, 0.15, 0.15, 0.3, 1.0, 2.5, 4.0, 5.0, 5.5, 6.5,
     8.0, 7.0, 6.0, 6.0, 6.5, 7.5, 8.0, 7.0, 5.5, 4.0, 2.5, 1.2]
)  # fmt: skip
HOUR_PROFILE = HOUR_PROFILE / HOUR_PROFILE.sum()
# Fraudsters work around the clock, and more at night than cardholders do.
FRAUD_HOUR_PROFILE: FloatArray = 0.5 * HOUR_PROFILE + 0.5 / 24


def to_unit_sphere(lat: FloatArray, lon: FloatArray) -> FloatArray:
    """Cartesian points on the unit sphere, for nearest-neighbour queries."""
    la, lo = np.radians(lat), np.radians(lon)
    return np.column_stack((np.cos(la) * np.cos(lo), np.cos(la) * np.sin(lo), np.sin(la)))


def haversine_km(
    lat1: FloatArray, lon1: FloatArray, lat2: FloatArray, lon2: FloatArray
) -> FloatArray:
    la1, lo1, la2, lo2 = (np.radians(x) for x in (lat1, lon1, lat2, lon2))
    h = np.sin((la2 - la1) / 2) ** 2 + np.cos(la1) * np.cos(la2) * np.sin((lo2 - lo1) / 2) ** 2
    return np.asarray(2 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(h)), dtype=np.float64)


def jitter_km(
    rng: np.random.Generator, lat: FloatArray, lon: FloatArray, sigma_km: float
) -> tuple[FloatArray, FloatArray]:
    """Points scattered around (lat, lon) with a Gaussian of ``sigma_km``."""
    dy = rng.normal(0.0, sigma_km, lat.shape) / 111.0
    dx = rng.normal(0.0, sigma_km, lat.shape) / (111.0 * np.cos(np.radians(lat)))
    return np.clip(lat + dy, -89.9, 89.9), ((lon + dx + 180.0) % 360.0) - 180.0

"""Columnar transaction rows as integer codes, and the device / IP address books.

Everything is generated as numpy arrays of codes (card index, terminal index, device
code...) and only turned into strings once, at the end, so the hot path never touches a
Python string per row.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import numpy.typing as npt

from fraudstream.simulator.geography import (
    COUNTRY_IP_FIRST_OCTET,
    HOSTING_IP_FIRST_OCTET,
)

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]

NO_DEVICE = -1
NO_IP = -1
# Card-present payments carry the terminal's own fingerprint as their device; those codes
# live above every personal device code so both fit one int64 column.
FINGERPRINT_BASE = 1 << 40
MS_PER_DAY = 86_400_000


@dataclass(slots=True)
class TxRows:
    """One array per column; all the same length. ``time_ms`` counts from the start day."""

    card: IntArray
    terminal: IntArray
    time_ms: IntArray
    amount: FloatArray
    channel: IntArray
    device: IntArray
    ip: IntArray
    country: IntArray
    lat: FloatArray
    lon: FloatArray
    attack: IntArray
    # Which attack episode (burst, ring, takeover...) a fraud row belongs to; -1 otherwise.
    episode: IntArray

    def __len__(self) -> int:
        return int(self.card.shape[0])

    def take(self, index: npt.NDArray[np.intp] | npt.NDArray[np.bool_]) -> TxRows:
        return TxRows(*(getattr(self, f.name)[index] for f in fields(self)))

    @staticmethod
    def concat(parts: list[TxRows]) -> TxRows:
        return TxRows(
            *(np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(TxRows))
        )

    @staticmethod
    def empty() -> TxRows:
        ints = np.zeros(0, dtype=np.int64)
        floats = np.zeros(0, dtype=np.float64)
        return TxRows(ints, ints, ints, floats, ints, ints, ints, ints, floats, floats, ints, ints)


def full(n: int, value: int) -> IntArray:
    return np.full(n, value, dtype=np.int64)


class AddressBook:
    """Hands out device codes and IP codes; IP codes index :meth:`ip_values`.

    Personal and fraudster devices share one sequence; the strings shown to the engine
    are a keyed permutation of it, so a device's id does not reveal when it was created.
    """

    def __init__(self) -> None:
        self.n_devices = 0
        self._ips: list[npt.NDArray[np.uint32]] = []
        self.n_ips = 0

    def new_devices(self, n: int) -> IntArray:
        codes = np.arange(self.n_devices, self.n_devices + n, dtype=np.int64)
        self.n_devices += n
        return codes

    def new_ips(
        self,
        rng: np.random.Generator,
        country: IntArray,
        hosting: npt.NDArray[np.bool_] | None = None,
    ) -> IntArray:
        """Fresh addresses geolocated in ``country``, or in a data centre where ``hosting``."""
        n = int(country.shape[0])
        first = COUNTRY_IP_FIRST_OCTET[country] + rng.integers(0, 7, n)
        if hosting is not None:
            first = np.where(hosting, HOSTING_IP_FIRST_OCTET, first)
        middle = rng.integers(0, 1 << 16, n)
        last = rng.integers(1, 255, n)
        values = ((first << 24) | (middle << 8) | last).astype(np.uint32)
        self._ips.append(values)
        codes = np.arange(self.n_ips, self.n_ips + n, dtype=np.int64)
        self.n_ips += n
        return codes

    def ip_values(self) -> npt.NDArray[np.uint32]:
        if not self._ips:
            return np.zeros(0, dtype=np.uint32)
        return np.concatenate(self._ips)


def group_members(
    rng: np.random.Generator, group_of_row: IntArray, offsets: IntArray, sizes: IntArray
) -> IntArray:
    """For each row, a random position inside its group's slice of a flat member array."""
    u = rng.random(group_of_row.shape[0])
    pick = np.minimum((u * sizes[group_of_row]).astype(np.int64), sizes[group_of_row] - 1)
    return np.asarray(offsets[group_of_row] + pick, dtype=np.int64)


def ragged_offsets(sizes: IntArray) -> IntArray:
    """Start of each group in a flat array of concatenated groups."""
    out = np.zeros(sizes.shape[0], dtype=np.int64)
    np.cumsum(sizes[:-1], out=out[1:])
    return out


def rank_in_group(sizes: IntArray) -> IntArray:
    """0, 1, ... within each group, for rows laid out group after group."""
    total = int(sizes.sum())
    return np.arange(total, dtype=np.int64) - np.repeat(ragged_offsets(sizes), sizes)


def time_of_day_ms(rng: np.random.Generator, n: int, hour_profile: FloatArray) -> IntArray:
    """Milliseconds into the day, following an hourly activity profile."""
    hour = rng.choice(24, n, p=hour_profile).astype(np.int64)
    return hour * 3_600_000 + rng.integers(0, 3_600_000, n)

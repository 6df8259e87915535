"""Card-present attacks: compromised terminals and cloned cards spending big."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from fraudstream.simulator.attacks import episode_count, episode_sizes, fraud_amounts
from fraudstream.simulator.config import ATTACKS, SimulatorConfig
from fraudstream.simulator.geography import (
    HOUR_PROFILE,
    ONLINE,
    POS,
    STORE,
    TYPE_HIGH_VALUE,
)
from fraudstream.simulator.population import Population
from fraudstream.simulator.rows import (
    FINGERPRINT_BASE,
    MS_PER_DAY,
    NO_IP,
    IntArray,
    TxRows,
    full,
    rank_in_group,
    time_of_day_ms,
)

COMPROMISED_TERMINAL = ATTACKS.index("compromised_terminal")
HIGH_AMOUNT = ATTACKS.index("high_amount")
LOCAL_CLONE_SHARE = 0.7  # cloned cards spent near the cardholder's home
HIGH_AMOUNT_SIGMA = 0.5


def compromised_terminals(
    cfg: SimulatorConfig, pop: Population, rng: np.random.Generator, genuine: TxRows, target: float
) -> TxRows:
    """Mark most payments at a few card-present terminals, for a few days each, as fraud.

    Like the handbook's scenario 2: the terminal (skimmer, tampered PIN pad) is what is
    compromised, so the rows are the cardholders' ordinary payments at that terminal.
    """
    if target <= 0 or len(genuine) == 0:
        return genuine
    shape = cfg.attacks
    days, n_terms = cfg.days, len(pop.terminals)
    day = genuine.time_ms // MS_PER_DAY
    per_day = np.bincount(genuine.terminal * days + day, minlength=n_terms * days)
    cumulative = np.zeros((n_terms, days + 1), dtype=np.int64)
    np.cumsum(per_day.reshape(n_terms, days), axis=1, out=cumulative[:, 1:])

    candidates = rng.permutation(np.flatnonzero(pop.terminals.kind != ONLINE)).astype(np.int64)
    length = np.minimum(
        rng.integers(shape.compromised_days[0], shape.compromised_days[1] + 1, candidates.shape[0]),
        days,
    )
    first = (rng.random(candidates.shape[0]) * (days - length + 1)).astype(np.int64)
    in_window = cumulative[candidates, first + length] - cumulative[candidates, first]
    busy = in_window > 0
    candidates, length, first = candidates[busy], length[busy], first[busy]
    n_chosen = episode_count(in_window[busy] * shape.compromised_fraud_share, target)

    window_first = full(n_terms, -1)
    window_end = full(n_terms, -1)
    episode_of = full(n_terms, -1)
    chosen = candidates[:n_chosen]
    window_first[chosen] = first[:n_chosen]
    window_end[chosen] = first[:n_chosen] + length[:n_chosen]
    episode_of[chosen] = np.arange(n_chosen)

    t = genuine.terminal
    hit = (day >= window_first[t]) & (day < window_end[t]) & (episode_of[t] >= 0)
    hit &= rng.random(len(genuine)) < shape.compromised_fraud_share
    attack = genuine.attack.copy()
    episode = genuine.episode.copy()
    attack[hit] = COMPROMISED_TERMINAL
    episode[hit] = episode_of[t[hit]]
    return replace(genuine, attack=attack, episode=episode)


def high_amount(
    cfg: SimulatorConfig, pop: Population, rng: np.random.Generator, target: float
) -> TxRows:
    """A cloned card spent at electronics, jewellery and fashion shops for far more than usual.

    Amounts are a multiple of what this card usually spends at that kind of shop, not a
    fixed threshold, so large genuine purchases overlap the small frauds.
    """
    shape = cfg.attacks
    sizes = episode_sizes(rng, target, shape.high_amount_rows)
    n_events = int(sizes.shape[0])
    if n_events == 0:
        return TxRows.empty()
    event = np.repeat(np.arange(n_events, dtype=np.int64), sizes)
    n = int(event.shape[0])
    cards, terms = pop.cards, pop.terminals

    victim = rng.integers(0, len(cards), n_events)
    card = victim[event].astype(np.int64)
    first_day = rng.integers(0, cfg.days, n_events)
    day = np.minimum(
        first_day[event] + (rank_in_group(sizes) > 0) * rng.integers(0, 2, n), cfg.days - 1
    )
    time_ms = day * MS_PER_DAY + time_of_day_ms(rng, n, HOUR_PROFILE)

    local = cards.near_high_value[card, rng.integers(0, cards.near_high_value.shape[1], n)]
    anywhere: IntArray = np.flatnonzero((terms.kind == STORE) & TYPE_HIGH_VALUE[terms.mtype])
    terminal = np.where(rng.random(n) < LOCAL_CLONE_SHARE, local, rng.choice(anywhere, n))
    terminal = terminal.astype(np.int64)
    amount = fraud_amounts(
        rng,
        cards.mean_amount[card],
        terms.mtype[terminal],
        shape.high_amount_median_ratio,
        HIGH_AMOUNT_SIGMA,
    )
    return TxRows(
        card=card,
        terminal=terminal,
        time_ms=time_ms.astype(np.int64),
        amount=amount,
        channel=full(n, POS),
        device=FINGERPRINT_BASE + terminal,
        ip=full(n, NO_IP),
        country=terms.country[terminal].copy(),
        lat=terms.lat[terminal].copy(),
        lon=terms.lon[terminal].copy(),
        attack=full(n, HIGH_AMOUNT),
        episode=event,
    )

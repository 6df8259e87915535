"""Our 15 baseline features are the handbook's, on the handbook's own data.

The reference is computed independently of :mod:`features`, with pandas, the way the
handbook README (``../shared/data/handbook/README.md``, "The handbook's protocol")
defines the features and the way the handbook's own code computes them:

* ``TX_DURING_WEEKEND``: ``weekday >= 5``; ``TX_DURING_NIGHT``: ``hour <= 6`` (the
  naive ``TX_DATETIME``, which our loader reads as UTC).
* Customer features: per ``CUSTOMER_ID``, ``rolling('{n}d')`` on ``TX_DATETIME`` of
  ``TX_AMOUNT``: ``count`` and ``sum / count`` over ``(t - n days, t]``, the current
  transaction included.
* Terminal features: per ``TERMINAL_ID``, ``rolling('7d')`` and ``rolling('{7+n}d')``
  of ``TX_FRAUD`` (``sum`` and ``count``) and their differences, i.e. the window
  ``(t - 7 - n days, t - 7 days]``; risk = frauds / transactions there, 0 (the
  handbook's ``fillna(0)``) when there are none.

Where the two could differ, and how this test settles it:

* **Days** are fixed 24-hour spans (pandas ``'1d'`` offsets, our ``DAY_MS``), not
  calendar days, in both; the data has no time zone, hence no DST.
* **Window edges**: pandas time-based rolling is closed on the right, ``(t - n, t]``,
  as the README writes and as we define it; an event exactly ``n`` days before is out.
* **Ties**: rolling includes the rows up to the current one *in the frame's order*, so
  for two payments of one customer in the same second the first counts 1, the second
  2. The handbook orders with ``sort_values('TX_DATETIME')`` (numpy's default,
  not-stable quicksort), which leaves the order of such ties unspecified; its input is
  in ``TRANSACTION_ID`` order (the generator numbers transactions after sorting
  them by time). We (and this reference) order ties by ``TRANSACTION_ID``. The 40 days
  used here hold 6 such customer ties (e.g. customer 448, 2018-04-18 05:12:06,
  transactions 163831 and 163832) and none for terminals (where ties would cancel out
  of the differences anyway). Note that the Parquet file's row order is not
  ``TRANSACTION_ID`` order (163832 precedes 163831 there), so a reference that kept
  file order would swap the counts and means of such a pair.
* **Edges exercised**: in these 40 days, 12 customer rows have an event exactly
  1 day before, 17 exactly 7 days, 1 exactly 30 days; for terminals, 2 rows exactly 7
  days, 10 exactly 8 days, 1 exactly 37 days: the closed/open ends are really tested.
* **Labels**: the handbook counts every ``TX_FRAUD`` of ``(t - 7 - n, t - 7]``,
  i.e. it assumes a label is known exactly 7 days after its transaction. Our
  :func:`features.sources.load_handbook` labels every transaction with ``TX_FRAUD`` at
  ``label_time = event_time + 7 days``, and a label counts when ``label_time <= t``,
  i.e. when ``t_x <= t - 7 days``: exactly the window's upper edge, so every fraud in
  the delayed window is known and no other. Checked below on the label table.
* **Amounts**: the handbook sums floats; we sum integer milli-units. The handbook's
  amounts have two decimals, so ours are exact and the reference is within 1e-9.
* The history here starts where the data starts (2018-04-01), as the handbook's feature
  computation does, so early windows are short in both for the same reason.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import polars as pl
import pytest

from features.definitions import HANDBOOK_FEATURE_NAMES, INTEGER_FEATURES, LABEL_DELAY_MS
from features.offline import build_features
from features.sources import load_handbook
from fraudstream.settings import load_settings

pytestmark = pytest.mark.handbook

START, END = date(2018, 4, 1), date(2018, 5, 11)  # 40 days: every 37-day window fills
DELAY_DAYS = 7
WINDOWS = (1, 7, 30)

HANDBOOK_HINT = (
    "handbook data not found at {path}: get transactions.parquet (the public "
    "Fraud-Detection-Handbook 'simulated-data-raw' dataset, one Parquet file; see "
    "../shared/data/handbook/README.md) and place it there, or point "
    "FRAUDSTREAM__DATA__HANDBOOK_PATH at it"
)

# our name -> the handbook's column
HANDBOOK_COLUMNS = {
    "amount": "TX_AMOUNT",
    "tx_during_weekend": "TX_DURING_WEEKEND",
    "tx_during_night": "TX_DURING_NIGHT",
    **{f"card_nb_tx_{n}d": f"CUSTOMER_ID_NB_TX_{n}DAY_WINDOW" for n in WINDOWS},
    **{f"card_avg_amount_{n}d": f"CUSTOMER_ID_AVG_AMOUNT_{n}DAY_WINDOW" for n in WINDOWS},
    **{f"terminal_nb_tx_{n}d": f"TERMINAL_ID_NB_TX_{n}DAY_WINDOW" for n in WINDOWS},
    **{f"terminal_risk_{n}d": f"TERMINAL_ID_RISK_{n}DAY_WINDOW" for n in WINDOWS},
}


@pytest.fixture(scope="module")
def handbook_path() -> Path:
    path = Path(load_settings(None, {}).data.handbook_path)
    if not path.exists():
        pytest.skip(HANDBOOK_HINT.format(path=path))
    return path


def _rolling(df: pd.DataFrame, by: str, column: str, days: int) -> tuple[pd.Series, pd.Series]:
    """(sum, count) of ``column`` over ``(t - days, t]`` per ``by``, each row counting
    the rows of its ``by`` up to itself in time order (ties by TRANSACTION_ID), as
    Series indexed by TRANSACTION_ID. The handbook's own ``.rolling(str(n) + 'd')`` on a
    ``TX_DATETIME`` index, per group ('D': pandas 3 deprecates the lower-case alias)."""
    ordered = df.sort_values([by, "TX_DATETIME", "TRANSACTION_ID"], kind="stable")
    roll = ordered.set_index("TX_DATETIME").groupby(by, sort=False)[column].rolling(f"{days}D")
    total, count = roll.sum(), roll.count()
    # groups come out in order of first appearance, rows in frame order: the sorted frame's
    assert np.array_equal(total.index.get_level_values(0), ordered[by].to_numpy())
    assert np.array_equal(total.index.get_level_values(1), ordered["TX_DATETIME"].to_numpy())
    ids = pd.Index(ordered["TRANSACTION_ID"].to_numpy(), name="TRANSACTION_ID")
    return pd.Series(total.to_numpy(), index=ids), pd.Series(count.to_numpy(), index=ids)


def handbook_baseline(path: Path, start: date, end: date) -> pd.DataFrame:
    """The handbook's 15 baseline features, indexed by TRANSACTION_ID."""
    columns = ["TRANSACTION_ID", "TX_DATETIME", "CUSTOMER_ID", "TERMINAL_ID", "TX_AMOUNT"]
    raw = pd.read_parquet(path, columns=[*columns, "TX_FRAUD"])
    when = raw.TX_DATETIME
    df = raw[when.ge(pd.Timestamp(start)) & when.lt(pd.Timestamp(end))]
    out = pd.DataFrame(index=pd.Index(df.TRANSACTION_ID.to_numpy(), name="TRANSACTION_ID"))
    out["TX_AMOUNT"] = df.TX_AMOUNT.to_numpy()
    out["TX_DURING_WEEKEND"] = (df.TX_DATETIME.dt.weekday >= 5).astype(int).to_numpy()
    out["TX_DURING_NIGHT"] = (df.TX_DATETIME.dt.hour <= 6).astype(int).to_numpy()

    for n in WINDOWS:
        total, count = _rolling(df, "CUSTOMER_ID", "TX_AMOUNT", n)
        out[f"CUSTOMER_ID_NB_TX_{n}DAY_WINDOW"] = count
        out[f"CUSTOMER_ID_AVG_AMOUNT_{n}DAY_WINDOW"] = total / count

    fraud_delay, tx_delay = _rolling(df, "TERMINAL_ID", "TX_FRAUD", DELAY_DAYS)
    for n in WINDOWS:
        fraud_all, tx_all = _rolling(df, "TERMINAL_ID", "TX_FRAUD", DELAY_DAYS + n)
        nb_tx = tx_all - tx_delay
        out[f"TERMINAL_ID_NB_TX_{n}DAY_WINDOW"] = nb_tx
        out[f"TERMINAL_ID_RISK_{n}DAY_WINDOW"] = ((fraud_all - fraud_delay) / nb_tx).fillna(0)
    return out


def test_offline_builder_gives_the_handbook_baseline_features(handbook_path: Path) -> None:
    history, labels = load_handbook(handbook_path, start=START, end=END)
    assert history.height > 300_000

    # The label table is the handbook's assumption: every transaction, TX_FRAUD, known
    # exactly 7 days after it happened.
    assert labels["transaction_id"].to_list() == history["transaction_id"].to_list()
    delays = (labels["label_time_ms"] - labels["event_time_ms"]).unique().to_list()
    assert LABEL_DELAY_MS == DELAY_DAYS * 86_400_000
    assert delays == [LABEL_DELAY_MS]

    ours = build_features(history, labels)
    want = handbook_baseline(handbook_path, START, END)
    ids = ours["transaction_id"].cast(pl.Int64).to_numpy()
    want = want.loc[ids]
    assert len(want) == ours.height
    fraud = labels["is_fraud"].to_numpy()
    truth = pd.read_parquet(handbook_path, columns=["TRANSACTION_ID", "TX_FRAUD"])
    np.testing.assert_array_equal(fraud, truth.set_index("TRANSACTION_ID").TX_FRAUD.loc[ids])

    assert set(HANDBOOK_COLUMNS) == set(HANDBOOK_FEATURE_NAMES)
    problems = []
    for name in HANDBOOK_FEATURE_NAMES:
        got = ours[name].to_numpy().astype(np.float64)
        exp = want[HANDBOOK_COLUMNS[name]].to_numpy().astype(np.float64)
        assert not np.isnan(exp).any(), name
        if name in INTEGER_FEATURES or "nb_tx" in name:
            bad = got != exp
        else:
            bad = ~np.isclose(got, exp, rtol=1e-9, atol=1e-9)
        if bad.any():
            r = int(np.flatnonzero(bad)[0])
            problems.append(
                f"{name}: {int(bad.sum())} rows differ, TRANSACTION_ID {ids[r]}: "
                f"ours {got[r]!r}, handbook {exp[r]!r}"
            )
    assert not problems, "\n".join(problems)

    # the comparison exercised what it claims to
    def top(name: str) -> float:
        return float(np.max(ours[name].to_numpy()))

    assert top("terminal_risk_30d") > 0
    assert top("terminal_nb_tx_30d") > top("terminal_nb_tx_7d")
    assert (ours["tx_during_weekend"] == 1).any() and (ours["tx_during_night"] == 1).any()

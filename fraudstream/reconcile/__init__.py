"""Reconciliation: match what was authorised with what settled, in event time.

Pure and deterministic (no I/O, no clock): the Faust edge (``streams/reconcile.py``)
feeds it authorisations and settlements and produces the exceptions it returns.
"""

from fraudstream.reconcile.config import ReconcileConfig
from fraudstream.reconcile.engine import Changes, Reconciler
from fraudstream.reconcile.state import Snapshot, Totals, TxState

__all__ = ["Changes", "ReconcileConfig", "Reconciler", "Snapshot", "Totals", "TxState"]

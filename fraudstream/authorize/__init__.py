"""The authorization service: decisions in, ISO 8583-style authorisations out.

It stands for the payment pipeline that consumes the engine's decisions; it is a plain
aiokafka client (no Faust) and trusts only the published JSON Schema of decisions.
"""

from fraudstream.authorize.batch import (
    AuthorizeOutcome,
    Incoming,
    Outgoing,
    RecentIds,
    authorize_batch,
)
from fraudstream.authorize.config import AuthorizeConfig
from fraudstream.authorize.mapping import (
    DecisionView,
    MissingOffsetError,
    authorization_for,
    decision_view,
    response_code,
)
from fraudstream.authorize.service import AuthorizeHooks, NoAuthorizeHooks, run_authorize
from fraudstream.authorize.validate import SchemaValidator

__all__ = [
    "AuthorizeConfig",
    "AuthorizeHooks",
    "AuthorizeOutcome",
    "DecisionView",
    "Incoming",
    "MissingOffsetError",
    "NoAuthorizeHooks",
    "Outgoing",
    "RecentIds",
    "SchemaValidator",
    "authorization_for",
    "authorize_batch",
    "decision_view",
    "response_code",
    "run_authorize",
]

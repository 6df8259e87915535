"""The authorization service: decisions in, ISO 8583-style authorisations out.

It stands for the payment pipeline that consumes the engine's decisions; it is a plain
aiokafka client (no Faust) and trusts only the published JSON Schema of decisions.
The Kafka loop is ``fraudstream.authorize.service.run_authorize`` (not re-exported here:
the settings import this package's config, and the service imports the settings).
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
from fraudstream.authorize.validate import SchemaValidator

__all__ = [
    "AuthorizeConfig",
    "AuthorizeOutcome",
    "DecisionView",
    "Incoming",
    "MissingOffsetError",
    "Outgoing",
    "RecentIds",
    "SchemaValidator",
    "authorization_for",
    "authorize_batch",
    "decision_view",
    "response_code",
]

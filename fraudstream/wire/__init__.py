"""Wire format: versioned schemas, batch decoding, generated JSON Schemas."""

from fraudstream.wire.decode import (
    BatchDecoder,
    DecodedBatch,
    Rejected,
    encode,
    transaction_decoder,
)
from fraudstream.wire.schemas import (
    SCHEMA_VERSION,
    TOPIC_SCHEMAS,
    Authorization,
    DeadLetter,
    Decision,
    LabelEvent,
    Reason,
    ReconciliationException,
    Settlement,
    Transaction,
)

__all__ = [
    "SCHEMA_VERSION",
    "TOPIC_SCHEMAS",
    "Authorization",
    "BatchDecoder",
    "DeadLetter",
    "Decision",
    "DecodedBatch",
    "LabelEvent",
    "Reason",
    "ReconciliationException",
    "Rejected",
    "Settlement",
    "Transaction",
    "encode",
    "transaction_decoder",
]

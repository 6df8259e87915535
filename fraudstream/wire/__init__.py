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
    DeadLetter,
    Decision,
    LabelEvent,
    Reason,
    Transaction,
)

__all__ = [
    "SCHEMA_VERSION",
    "TOPIC_SCHEMAS",
    "BatchDecoder",
    "DeadLetter",
    "Decision",
    "DecodedBatch",
    "LabelEvent",
    "Reason",
    "Rejected",
    "Transaction",
    "encode",
    "transaction_decoder",
]

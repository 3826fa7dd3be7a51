"""The transport-free core: decode, join, aggregate, compute. No Kafka, no HTTP."""

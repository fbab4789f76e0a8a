"""entpruner_sdk.serve: reserved for the serve layer (see docs/architecture.md)."""

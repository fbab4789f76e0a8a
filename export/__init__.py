"""entpruner_sdk.export: reserved for the export layer (see docs/architecture.md)."""

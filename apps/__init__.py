"""entpruner_sdk.apps: reserved for the apps layer (see docs/architecture.md)."""

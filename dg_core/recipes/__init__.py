"""The paper settings as stage configs (YAML files here; see README.md)."""

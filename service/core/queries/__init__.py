"""Small async query functions over service.core.tables, returning pydantic models."""

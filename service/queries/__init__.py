"""Small async query functions over service.tables, returning pydantic models."""

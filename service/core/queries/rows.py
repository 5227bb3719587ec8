from typing import Any


def as_dict(row: Any) -> dict[str, Any]:
    """A `databases` record as a dict of Python values (JSONB decoded: the raw mapping leaves it text)."""
    return {key: row[key] for key in row._mapping.keys()}

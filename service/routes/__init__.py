"""HTTP routes, grouped by resource.

Row ids in paths use the `id` convertor: digits that fit PostgreSQL's bigint, so an id too large
for the database is a 404 like any unknown id, not an error from the database.
"""

from starlette.convertors import Convertor, register_url_convertor

BIGINT_DIGITS = 18  # every 18-digit number fits in a signed 64-bit integer


class IdConvertor(Convertor[int]):
    regex = f"[0-9]{{1,{BIGINT_DIGITS}}}"

    def convert(self, value: str) -> int:
        return int(value)

    def to_string(self, value: int) -> str:
        return str(value)


register_url_convertor("id", IdConvertor())

"""jobs carry their trace context

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02 01:20:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # W3C traceparent of the span that created the job (service.core.tracing); null when tracing is off.
    op.add_column("jobs", sa.Column("trace_context", sa.String(length=128), nullable=True))


def downgrade() -> None:
    op.drop_column("jobs", "trace_context")

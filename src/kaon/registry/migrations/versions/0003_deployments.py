"""Deployments for kaon.cluster: their specs and status, their replicas, and the nodes they run on.

Revision ID: 0003
Revises: 0002
Create Date: 2026-05-21
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(JSONB(), "postgresql")
TIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "deployments",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("spec", JSON, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("decision", JSON, nullable=False),
        sa.Column("created_at", TIME, nullable=False),
        sa.Column("updated_at", TIME, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_deployments"),
        sa.UniqueConstraint("name", name="uq_deployments_name"),
    )
    op.create_table(
        "deployment_replicas",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("deployment_name", sa.String(128), nullable=False),
        sa.Column("replica", sa.Integer(), nullable=False),
        sa.Column("node", sa.String(128), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=True),
        sa.Column("port", sa.Integer(), nullable=True),
        sa.Column("restarts", sa.Integer(), nullable=False),
        sa.Column("started_at", TIME, nullable=False),
        sa.Column("ready_at", TIME, nullable=True),
        sa.Column("updated_at", TIME, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_deployment_replicas"),
        sa.UniqueConstraint("deployment_name", "replica", name="uq_deployment_replicas_deployment_name_replica"),
        sa.ForeignKeyConstraint(
            ["deployment_name"], ["deployments.name"],
            name="fk_deployment_replicas_deployment_name_deployments", ondelete="CASCADE",
        ),
    )
    op.create_table(
        "cluster_nodes",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("backend", sa.String(16), nullable=False),
        sa.Column("address", sa.String(255), nullable=True),
        sa.Column("capacity", JSON, nullable=False),
        sa.Column("updated_at", TIME, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_cluster_nodes"),
        sa.UniqueConstraint("name", name="uq_cluster_nodes_name"),
    )


def downgrade() -> None:
    op.drop_table("cluster_nodes")
    op.drop_table("deployment_replicas")
    op.drop_table("deployments")

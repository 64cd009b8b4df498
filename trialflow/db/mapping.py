"""Maps the pure domain classes onto the tables (SQLAlchemy 2 imperative mapping)."""
from __future__ import annotations

from sqlalchemy.orm import registry, relationship

from trialflow.db import tables
from trialflow.domain.trial import HistoryEntry, Trial

mapper_registry = registry(metadata=tables.metadata)
_mapped = False


def start_mappers() -> None:
    global _mapped
    if _mapped:
        return
    mapper_registry.map_imperatively(HistoryEntry, tables.trial_history)
    mapper_registry.map_imperatively(Trial, tables.trials, properties={
        "history": relationship(
            HistoryEntry, order_by=tables.trial_history.c.id, cascade="all, delete-orphan",
            lazy="select",
        ),
    })
    _mapped = True

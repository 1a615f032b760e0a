"""Declarative base, mixins, column types, actor and tenant context."""

from pgstack.orm.base import NAMING_CONVENTION, Base

__all__ = ["NAMING_CONVENTION", "Base"]

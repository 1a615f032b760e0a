"""Declarative base, mixins, column types, actor and tenant context, registry helpers."""

from pgstack.orm.base import NAMING_CONVENTION, TYPE_ANNOTATION_MAP, Base
from pgstack.orm.context import (
    acting_as,
    all_tenants,
    current_actor,
    current_tenant,
    require_tenant,
    tenant_context,
)
from pgstack.orm.mixins import (
    Audited,
    BigIntPrimaryKey,
    SoftDelete,
    TenantScoped,
    Timestamped,
    UUIDPrimaryKey,
    Versioned,
    new_uuid7,
)
from pgstack.orm.model import ModelMixin
from pgstack.orm.registry import (
    ColumnInfo,
    ConstraintInfo,
    IndexInfo,
    ModelDescription,
    create_all,
    describe_model,
    drop_all,
    get_model,
    list_models,
)
from pgstack.orm.tracking import TrackedDict, TrackedJSON, TrackedList
from pgstack.orm.types import JSONB, Email, EncryptedText, UTCDateTime, is_secret

__all__ = [
    "JSONB",
    "NAMING_CONVENTION",
    "TYPE_ANNOTATION_MAP",
    "Audited",
    "Base",
    "BigIntPrimaryKey",
    "ColumnInfo",
    "ConstraintInfo",
    "Email",
    "EncryptedText",
    "IndexInfo",
    "ModelDescription",
    "ModelMixin",
    "SoftDelete",
    "TenantScoped",
    "Timestamped",
    "TrackedDict",
    "TrackedJSON",
    "TrackedList",
    "UTCDateTime",
    "UUIDPrimaryKey",
    "Versioned",
    "acting_as",
    "all_tenants",
    "create_all",
    "current_actor",
    "current_tenant",
    "describe_model",
    "drop_all",
    "get_model",
    "is_secret",
    "list_models",
    "new_uuid7",
    "require_tenant",
    "tenant_context",
]

"""The platform's one tenant: pgstack's query log belongs to a tenant, so the site is one.

Its row is written by this app's first migration, so every server (a replica too) has it
before the app starts.
"""

from __future__ import annotations

import uuid

SITE_EXTERNAL_ID = "knowledge-platform"
SITE_TENANT_ID = uuid.UUID("0193a5e0-0000-7000-8000-00000000c0de")

"""The refresh flow, through Authlib: the refresher the vault calls when a token is due.

The provider is configured by CRM_TOKEN_URL, CRM_CLIENT_ID and CRM_CLIENT_SECRET. The worker
refreshes every token due soon with pgstack's command, from this folder:

    pgstack tokens refresh-due --refreshers crm_agent.oauth:REFRESHERS --within-minutes 10
"""

from __future__ import annotations

import os
from typing import Any

from authlib.integrations.httpx_client import AsyncOAuth2Client


def _setting(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        raise RuntimeError(f"{name} is not set: set it to your CRM app's value")
    return value


async def refresh_crm(refresh_token: str) -> Any:
    """Ask the provider for a new token pair; Authlib's OAuth2Token goes to the vault as is."""
    async with AsyncOAuth2Client(
        _setting("CRM_CLIENT_ID"), _setting("CRM_CLIENT_SECRET"), timeout=10
    ) as client:
        return await client.refresh_token(_setting("CRM_TOKEN_URL"), refresh_token=refresh_token)


REFRESHERS = {"crm": refresh_crm}

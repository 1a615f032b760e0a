"""OAuth token vault: provider tokens encrypted at rest, single-flight refresh, refresh audit.

from pgstack.tokens import TokenVault

vault = TokenVault(db)
await vault.save("hubspot", "acme", access_token, refresh_token, expires_in=1800)
token = await vault.get_valid_token("hubspot", "acme", refresher)
"""

from pgstack.errors import TokenRefreshError
from pgstack.tokens.models import OAuthToken, TokenRefreshAudit
from pgstack.tokens.records import (
    DEFAULT_BUFFER,
    ProviderToken,
    RefreshAttempt,
    Refresher,
    RefreshSummary,
    TokenInfo,
    TokenStatus,
)
from pgstack.tokens.vault import TokenVault

__all__ = [
    "DEFAULT_BUFFER",
    "OAuthToken",
    "ProviderToken",
    "RefreshAttempt",
    "RefreshSummary",
    "Refresher",
    "TokenInfo",
    "TokenRefreshAudit",
    "TokenRefreshError",
    "TokenStatus",
    "TokenVault",
]

"""Query analytics: a log of the queries users run, and figures computed from it in SQL.

from pgstack.analytics import QueryAnalytics

analytics = QueryAnalytics(db)
with tenant_context(tenant_id):
    await analytics.log(user_id, "refund status", "search", "success", 42.0)
    print(await analytics.latency())
"""

from pgstack.analytics.models import STATUSES, TEXT_SEARCH_CONFIG, QueryLog
from pgstack.analytics.service import (
    DEFAULT_PERIOD,
    MAX_LIMIT,
    DailyTrend,
    Latency,
    PopularQuery,
    QueryAnalytics,
    QueryEntry,
    SearchHit,
    text_search_config_name,
)

__all__ = [
    "DEFAULT_PERIOD",
    "MAX_LIMIT",
    "STATUSES",
    "TEXT_SEARCH_CONFIG",
    "DailyTrend",
    "Latency",
    "PopularQuery",
    "QueryAnalytics",
    "QueryEntry",
    "QueryLog",
    "SearchHit",
    "text_search_config_name",
]

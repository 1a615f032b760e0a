"""`Repository[Model]`: every verb of the repository on one class."""

from __future__ import annotations

from pgstack.repository.bulk import BulkOps
from pgstack.repository.core import M
from pgstack.repository.filters import QueryParams, QuerySpec, parse_query
from pgstack.repository.pagination import PaginationOps
from pgstack.repository.read import ReadOps


class Repository(PaginationOps[M], BulkOps[M], ReadOps[M]):
    """Generic async data access for one model, on one session.

        repo = Repository(session, Widget)          # or: class Widgets(Repository[Widget]):
        widget = await repo.get(widget_id)          #         model = Widget
        page = await repo.page(ILike("name", "a%"), sort="-created_at", limit=20)

    Reads hide soft-deleted rows unless asked, tenant-scoped models are filtered by the tenant
    in context, and only allowed fields (`filterable`, `sortable`) can be filtered or sorted on.
    Writes flush but never commit: the caller's transaction decides.
    """

    def parse_query(self, params: QueryParams) -> QuerySpec:
        """Filters and sorts from query-string form, field names checked now.

        Unlike `pgstack.repository.parse_query`, a name this repository does not allow is an
        InvalidQueryError at once rather than when the query runs.
        """
        spec = parse_query(params)
        for item in spec.filters:
            item.clause(self._fields)
        self._order_by(spec.sort)
        return spec

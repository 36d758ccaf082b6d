"""Counts and reports for SeaTable's account page and system admin (all read-only)."""

from __future__ import annotations

import falcon

from scheduler import queries, runs, stats, texts
from scheduler.db import Store
from scheduler.resources.common import (
    MAX_ID,
    MAX_PER_PAGE,
    Context,
    admin_error,
    bad,
    int_param,
    lenient_page_param,
    param,
    parse_bound,
    parse_month,
    uuid_forms,
)


class _Reader:
    def __init__(self, ctx: Context, store: Store) -> None:
        self.ctx = ctx
        self.store = store


class RunningCount(_Reader):
    """GET /scripts-running-count/?username=|org_id=&month=YYYY-MM: {"count": n} (runs this month)."""

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        self.ctx.require_auth(req)
        month = parse_month(param(req, "month"), self.store.clock.today())
        username, raw_org = param(req, "username"), param(req, "org_id")
        if not username and not raw_org:
            raise bad(texts.USERNAME_OR_ORG_INVALID)
        org_id = None
        if raw_org:
            org_id = int_param(req, "org_id", 0, bad(texts.ORG_ID_INVALID), lo=-1)
            if org_id == -1:
                raise bad(texts.ORG_ID_INVALID)
        resp.media = {"count": stats.monthly_count(self.store, username, org_id, month)}


class MonthlyStatistics(_Reader):
    """GET /admin/statistics/scripts-running/by-user|by-org|by-base/.

    month=YYYY-MM, order_by=total_run_time|total_run_count ("-" in it, or direction=desc: descending),
    page=1, per_page=25 -> {"month", "count", "results": [{username|org_id|base_uuid, totals}]}.
    dtable-web reads results/count without checking the status, so only what upstream refuses is refused
    (month, order_by); direction, page and per_page fall back as upstream reads them. count is 0 on a page
    past the end, as upstream.
    """

    def __init__(self, ctx: Context, store: Store, target: str) -> None:
        super().__init__(ctx, store)
        self.target = target

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        self.ctx.require_auth(req)
        month = parse_month(param(req, "month"), self.store.clock.today())
        order_by = param(req, "order_by")
        if order_by is not None and order_by.strip("-") not in stats.ORDER_FIELDS:
            raise bad(texts.ORDER_BY_INVALID)
        # Upstream: "-" anywhere in order_by, or direction exactly "desc"; neither matters without order_by.
        descending = order_by is not None and ("-" in order_by or param(req, "direction") == "desc")
        page = lenient_page_param(req, "page", 1)
        per_page = lenient_page_param(req, "per_page", 25, MAX_PER_PAGE)
        total, results = stats.by_month(
            self.store,
            self.target,
            month,
            order_by.strip("-") if order_by else None,
            descending,
            stats.Page((page - 1) * per_page, per_page),
        )
        resp.media = {"month": month.strftime("%Y-%m"), "count": total, "results": results}


def _admin_page(req: falcon.Request) -> stats.Page:
    page = int_param(req, "page", 1, admin_error(texts.PAGE_NOT_INTEGER), lo=-MAX_ID)
    if page < 1:
        raise admin_error(texts.PAGE_NOT_POSITIVE)
    per_page = int_param(req, "per_page", 100, admin_error(texts.PER_PAGE_NOT_INTEGER), lo=-MAX_ID)
    if per_page < 1:
        raise admin_error(texts.PER_PAGE_NOT_POSITIVE)
    if per_page > 1000:
        raise admin_error(texts.PER_PAGE_TOO_LARGE)
    return stats.Page((page - 1) * per_page, per_page)


def _org_id(req: falcon.Request, required: bool) -> int | None:
    raw = param(req, "org_id")
    if raw is None:
        if required:
            raise admin_error(texts.ORG_ID_REQUIRED)
        return None
    return int_param(req, "org_id", 0, admin_error(texts.ORG_ID_PARAM_INVALID), lo=-1)


def _base_uuids(req: falcon.Request) -> tuple[str, ...]:
    raw = param(req, "base_uuid")
    if raw is None:
        return ()
    forms = uuid_forms(raw)
    if forms is None:
        raise admin_error(texts.BASE_UUID_INVALID)
    return forms


class AdminRuns(_Reader):
    """GET /admin/runs/?org_id&base_uuid&start&end&page=1&per_page=100 (max 1000).

    {"runs": [ScriptLog without context_data and output], "total_count": n}; 400 {"error"}.
    Upstream answered 500 here (DetachedInstanceError).
    """

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        self.ctx.require_auth(req)
        clock = self.store.clock
        org_id = _org_id(req, required=False)
        base_uuids = _base_uuids(req)
        start, _ = parse_bound(param(req, "start"), clock, False, texts.START_INVALID)
        end, end_inclusive = parse_bound(param(req, "end"), clock, True, texts.END_INVALID)
        page = _admin_page(req)
        where = runs.RunFilter(org_id, base_uuids, start, end, end_inclusive)
        found, total = runs.list_runs(self.store, where, page.offset, page.limit)
        resp.media = {"runs": found, "total_count": total}


class GroupedStatistics(_Reader):
    """GET /admin/statistics/by-base/ and /by-day/?org_id*&base_uuid (by-day)&start&end&page&per_page.

    {"results": [{base_uuid|date, number_of_runs, total_run_time, triggered_manually,
    triggered_by_automation_rule, successful_runs, unsuccessful_runs}], "total_count": n}; 400 {"error"}.
    """

    def __init__(self, ctx: Context, store: Store, by: str) -> None:
        super().__init__(ctx, store)
        self.by = by

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        self.ctx.require_auth(req)
        clock = self.store.clock
        org_id = _org_id(req, required=True)
        assert org_id is not None
        base_uuids = _base_uuids(req) if self.by == "day" else ()
        start, _ = parse_bound(param(req, "start"), clock, False, texts.START_INVALID)
        end, end_inclusive = parse_bound(param(req, "end"), clock, True, texts.END_INVALID)
        page = _admin_page(req)
        where = runs.RunFilter(org_id, base_uuids, start, end, end_inclusive)
        results, total = queries.grouped_runs(self.store, self.by, where, page.offset, page.limit)
        resp.media = {"results": results, "total_count": total}

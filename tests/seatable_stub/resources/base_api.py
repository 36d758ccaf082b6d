"""The base API subset `seatable_api.Base` uses: dtable-server v1 and the API gateway v2 (rows, metadata).

Both answer with the shapes their real counterparts have; which one a client uses depends on the base's
`use_api_gateway`, and every call is recorded on the base so tests can tell which path was taken.
"""

from __future__ import annotations

from typing import Any

import falcon

from .. import tokens
from ..rows import Table
from ..state import Base, SeaTable, UnknownBase, UnknownTable
from .errors import SeaTableError, json_body, server_error, token_from_header, web_error

GATEWAY = "api-gateway"
DTABLE_SERVER = "dtable-server"
MAX_LIMIT = 1000


def authorized_base(req: falcon.Request, seatable: SeaTable, dtable_uuid: str) -> Base:
    """The base the access token opens; 403 (expired: `Token expired.`, as the client expects) or 404."""
    token = token_from_header(req)
    if token is None:
        raise server_error(403, "invalid token")
    try:
        return seatable.authorize(token, dtable_uuid)
    except tokens.TokenExpired:
        raise web_error(403, "Token expired.") from None
    except tokens.TokenInvalid:
        raise server_error(403, "invalid token") from None
    except UnknownBase:
        raise server_error(404, "dtable not found") from None


def find_table(base: Base, table_name: Any, table_id: Any) -> Table:
    """The table a request names; 400 without a name, 404 for an unknown one."""
    if not table_name and not table_id:
        raise server_error(400, "table_name invalid")
    try:
        return base.table(str(table_name) if table_name else None, str(table_id) if table_id else None)
    except UnknownTable:
        raise server_error(404, "table not found") from None


def int_param(req: falcon.Request, name: str, default: int) -> int:
    """A non-negative integer query parameter, or a 400."""
    raw = req.get_param(name)
    if raw in (None, ""):
        return default
    try:
        value = int(raw)
    except ValueError:
        raise server_error(400, f"{name} invalid") from None
    if value < 0:
        raise server_error(400, f"{name} invalid")
    return value


def list_rows(req: falcon.Request, table: Table) -> list[dict[str, Any]]:
    """Rows for a list request: `order_by` + `direction`, `start`, `limit` (max 1000)."""
    return table.select(
        order_by=req.get_param("order_by") or None,
        desc=(req.get_param("direction") or "asc").lower() == "desc",
        start=int_param(req, "start", 0),
        limit=min(int_param(req, "limit", MAX_LIMIT), MAX_LIMIT),
    )


def row_updates(body: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """`updates: [{row_id, row}]` as pairs, or a 400."""
    updates = body.get("updates")
    if not isinstance(updates, list) or not updates:
        raise server_error(400, "updates invalid")
    pairs = []
    for update in updates:
        if not isinstance(update, dict) or not isinstance(update.get("row_id"), str) \
                or not isinstance(update.get("row"), dict):
            raise server_error(400, "updates invalid")
        pairs.append((update["row_id"], update["row"]))
    return pairs


def apply_updates(table: Table, pairs: list[tuple[str, dict[str, Any]]]) -> None:
    """Update every row, 404 (before changing anything) if one of them does not exist."""
    missing = [row_id for row_id, _ in pairs if table.get(row_id) is None]
    if missing:
        raise server_error(404, "row _id not exits")
    for row_id, values in pairs:
        table.update(row_id, values)


def rows_list(body: dict[str, Any], key: str) -> list[dict[str, Any]]:
    """A non-empty list of row objects under `key`, or a 400."""
    rows = body.get(key)
    if not isinstance(rows, list) or not rows or not all(isinstance(row, dict) for row in rows):
        raise server_error(400, f"{key} invalid")
    return rows


def row_ids(body: dict[str, Any]) -> list[str]:
    """`row_ids` as a list of strings, or a 400."""
    ids = body.get("row_ids")
    if not isinstance(ids, list) or not ids or not all(isinstance(i, str) for i in ids):
        raise server_error(400, "row_ids invalid")
    return ids


class _BaseApiResource:
    api = ""

    def __init__(self, seatable: SeaTable) -> None:
        self.seatable = seatable

    def _open(self, req: falcon.Request, dtable_uuid: str, operation: str,
              body: dict[str, Any] | None = None) -> tuple[Base, Table]:
        base = authorized_base(req, self.seatable, dtable_uuid)
        source: Any = body if body is not None else req.params
        table = find_table(base, source.get("table_name"), source.get("table_id"))
        self.seatable.record_call(base, self.api, operation, table.name)
        return base, table

    def _body(self, req: falcon.Request, dtable_uuid: str) -> dict[str, Any]:
        # Authorise before parsing, so a bad token is a 403 whatever the body.
        authorized_base(req, self.seatable, dtable_uuid)
        return json_body(req, server_error)


class MetadataResource(_BaseApiResource):
    """GET .../dtables/{uuid}/metadata/ -> {"metadata": {"tables": [{_id, name, columns, views}]}}."""

    def __init__(self, seatable: SeaTable, api: str) -> None:
        super().__init__(seatable)
        self.api = api

    def on_get(self, req: falcon.Request, resp: falcon.Response, dtable_uuid: str) -> None:
        base = authorized_base(req, self.seatable, dtable_uuid)
        self.seatable.record_call(base, self.api, "get_metadata", None)
        resp.media = {"metadata": {"tables": [table.metadata() for table in base.tables.values()]}}


class ServerRowsResource(_BaseApiResource):
    """dtable-server v1 `/dtable-server/api/v1/dtables/{uuid}/rows/` and its batch siblings (suffix routes).

    GET ?table_name -> {"rows"}; POST {table_name, row} -> the new row; PUT {table_name, row_id, row} ->
    {"success": true}; DELETE {table_name, row_id} -> {"deleted_rows": n}; batch-append-rows POST {rows} ->
    {"inserted_row_count"}; batch-update-rows PUT {updates}; batch-delete-rows DELETE {row_ids}.
    """

    api = DTABLE_SERVER

    def on_get(self, req: falcon.Request, resp: falcon.Response, dtable_uuid: str) -> None:
        _, table = self._open(req, dtable_uuid, "list_rows")
        resp.media = {"rows": list_rows(req, table)}

    def on_post(self, req: falcon.Request, resp: falcon.Response, dtable_uuid: str) -> None:
        body = self._body(req, dtable_uuid)
        _, table = self._open(req, dtable_uuid, "append_row", body)
        row = body.get("row")
        if not isinstance(row, dict):
            raise server_error(400, "row invalid")
        resp.media = table.append(row)

    def on_put(self, req: falcon.Request, resp: falcon.Response, dtable_uuid: str) -> None:
        body = self._body(req, dtable_uuid)
        _, table = self._open(req, dtable_uuid, "update_row", body)
        update = {"row_id": body.get("row_id"), "row": body.get("row")}
        apply_updates(table, row_updates({"updates": [update]}))
        resp.media = {"success": True}

    def on_delete(self, req: falcon.Request, resp: falcon.Response, dtable_uuid: str) -> None:
        body = self._body(req, dtable_uuid)
        _, table = self._open(req, dtable_uuid, "delete_row", body)
        row_id = body.get("row_id")
        if not isinstance(row_id, str):
            raise server_error(400, "row_id invalid")
        resp.media = {"deleted_rows": table.delete([row_id])}

    def on_post_batch_append(self, req: falcon.Request, resp: falcon.Response, dtable_uuid: str) -> None:
        body = self._body(req, dtable_uuid)
        _, table = self._open(req, dtable_uuid, "batch_append_rows", body)
        resp.media = {"inserted_row_count": len(table.append_many(rows_list(body, "rows")))}

    def on_put_batch_update(self, req: falcon.Request, resp: falcon.Response, dtable_uuid: str) -> None:
        body = self._body(req, dtable_uuid)
        _, table = self._open(req, dtable_uuid, "batch_update_rows", body)
        apply_updates(table, row_updates(body))
        resp.media = {"success": True}

    def on_delete_batch_delete(self, req: falcon.Request, resp: falcon.Response, dtable_uuid: str) -> None:
        body = self._body(req, dtable_uuid)
        _, table = self._open(req, dtable_uuid, "batch_delete_rows", body)
        resp.media = {"deleted_rows": table.delete(row_ids(body))}


class GatewayRowsResource(_BaseApiResource):
    """API gateway `/api-gateway/api/v2/dtables/{uuid}/rows/`.

    GET ?table_name -> {"rows", "metadata"}; POST {table_name, rows} -> {"inserted_row_count", "row_ids",
    "first_row"}; PUT {table_name, updates: [{row_id, row}]} -> {"success": true};
    DELETE {table_name, row_ids} -> {"success": true, "deleted_rows": n}.
    """

    api = GATEWAY

    def on_get(self, req: falcon.Request, resp: falcon.Response, dtable_uuid: str) -> None:
        _, table = self._open(req, dtable_uuid, "list_rows")
        resp.media = {"rows": list_rows(req, table), "metadata": table.columns()}

    def on_post(self, req: falcon.Request, resp: falcon.Response, dtable_uuid: str) -> None:
        body = self._body(req, dtable_uuid)
        _, table = self._open(req, dtable_uuid, "append_rows", body)
        added = table.append_many(rows_list(body, "rows"))
        resp.media = {
            "inserted_row_count": len(added),
            "row_ids": [{"_id": row["_id"]} for row in added],
            "first_row": added[0],
        }

    def on_put(self, req: falcon.Request, resp: falcon.Response, dtable_uuid: str) -> None:
        body = self._body(req, dtable_uuid)
        _, table = self._open(req, dtable_uuid, "update_rows", body)
        apply_updates(table, row_updates(body))
        resp.media = {"success": True}

    def on_delete(self, req: falcon.Request, resp: falcon.Response, dtable_uuid: str) -> None:
        body = self._body(req, dtable_uuid)
        _, table = self._open(req, dtable_uuid, "delete_rows", body)
        resp.media = {"success": True, "deleted_rows": table.delete(row_ids(body))}


class RowResource(_BaseApiResource):
    """GET .../rows/{row_id}/?table_name -> the row; 404 {"error_message": "row _id not exits"} (sic)."""

    def __init__(self, seatable: SeaTable, api: str) -> None:
        super().__init__(seatable)
        self.api = api

    def on_get(self, req: falcon.Request, resp: falcon.Response, dtable_uuid: str, row_id: str) -> None:
        _, table = self._open(req, dtable_uuid, "get_row")
        row = table.get(row_id)
        if row is None:
            raise server_error(404, "row _id not exits")
        resp.media = row


__all__ = [
    "DTABLE_SERVER",
    "GATEWAY",
    "GatewayRowsResource",
    "MetadataResource",
    "RowResource",
    "SeaTableError",
    "ServerRowsResource",
]

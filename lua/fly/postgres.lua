--- client.postgres: Managed Postgres clusters, their attachments to apps, backups, databases,
-- extensions and users.
--
-- Answers are the API's, wrapped in `data` (`client.postgres:get(id).data.status`); errors
-- carry only a message (`err.code` comes from the HTTP status: `not_found`, `gone`,
-- `conflict`, `unprocessable`, …). A new cluster is `creating`, then `ready`; a destroyed one
-- is `deleting`, then `deleted` (and answers 410 `gone` where the API documents it).
-- @module fly.postgres
local resource = require "fly.resource"

local Postgres = { __name = "fly.postgres" }
Postgres.__index = Postgres

--- The operation each method calls (filled by the declarations below).
Postgres.operations = {}

local function body(p, _, b) p.body = b end
local function body_or_empty(p, _, b) p.body = b or {} end

-- A body given either whole (a table) or by its one required field (a string).
local function body_of(field)
  return function(p, _, v) p.body = type(v) == "string" and { [field] = v } or v end
end

local ID, USER = { "id" }, { "id", "username" }
local DB = { "id", "database:database_name" }

-- Each entry: `{ method, operationId, … }` (see resource.declare): the strings of `path`
-- first (the cluster's id, …), then `args`.
resource.declare(Postgres, {
  name = "postgres", operations = Postgres.operations,
  path = ID, params = { id = "postgres_cluster_id", username = "username", app = "app_name" },
}, {
  ------------------------------------------------------------------------ clusters
  --- `list(params)`: `org_slug` (required), `include_deleted` -> `{ data = { PostgresClusterSummary, … } }`
  { "list", "Postgres_list", path = {}, args = { "params:table" },
    build = function(p, _, params) for k, v in next, params do p[k] = v end end },
  --- `create(body)`: `org_slug`, `plan` (basic, starter, launch, scale, Performance), `region`
  -- (required), `name`, `disk_size_gb`, `pg_major_version` ("16", "17"), `pool_mode`,
  -- `postgis_enabled` -> `{ data = PostgresCluster }` (status `creating`; 422)
  { "create", "Postgres_create", path = {}, args = { "body:table" }, build = body },
  --- `get(id)` -> `{ data = PostgresCluster }` (with `endpoints` once ready; 404)
  { "get", "Postgres_show" },
  --- `destroy(id)`: destroys a cluster and its data -> true (accepted: `deleting`; 404, 410 `gone`)
  { "destroy", "Postgres_delete" },
  --- `fork(id, body)`: a new cluster from a ready one's data; `name` (default: the source's
  -- name with `-fork`) -> `{ data = PostgresCluster }` (409 when the source is not ready)
  { "fork", "Postgres_fork", args = { "body:?table" }, build = body_or_empty },
  --- `restore(id, body)`: a new cluster from `backup_id` (from `list_backups`) or `pitr_time`
  -- (RFC 3339), and `name` -> `{ data = PostgresCluster }`
  { "restore", "Postgres_restore", args = { "body:table" }, build = body },
  ------------------------------------------------------------------------ attachments
  --- `create_attachment(id, app)`: the app's name, or the body `{ app_name = … }` ->
  -- `{ data = { app_name, attached_at, postgres_cluster_id } }`
  { "create_attachment", "Postgres_attachments_create", args = { "app:string|table" },
    build = body_of("app_name") },
  --- `delete_attachment(id, app)` -> true (404 when it is not attached)
  { "delete_attachment", "Postgres_attachments_delete", path = { "id", "app" } },
  ------------------------------------------------------------------------ backups
  --- `list_backups(id)` -> `{ data = { { id, type, status, started_at, finished_at, size_bytes }, … } }`
  { "list_backups", "Postgres_backups_list" },
  --- `create_backup(id, type)`: `"full"`, `"incr"` or `"diff"`, or the body `{ type = … }` ->
  -- true (accepted; 409 while another backup runs)
  { "create_backup", "Postgres_backups_create", args = { "type:string|table" }, build = body_of("type") },
  ------------------------------------------------------------------------ databases
  --- `list_databases(id)` -> `{ data = { { name }, … } }`
  { "list_databases", "Postgres_databases_list" },
  --- `create_database(id, name)`: the name, or the body `{ name = … }` -> `{ data = { name } }`
  -- (422 when it exists, 400 when reserved)
  { "create_database", "Postgres_databases_create", args = { "name:string|table" }, build = body_of("name") },
  --- `destroy_database(id, name)`: drops a database and its data -> `{ data = { name } }` (404)
  { "destroy_database", "Postgres_databases_delete", path = { "id", "name:database_name" } },
  ------------------------------------------------------------------------ extensions
  --- `list_extensions(id, database)` -> `{ data = { { name, default_version, description, system,
  -- installed }, … } }` (`installed` is fly.null or `{ schema, version }`)
  { "list_extensions", "Postgres_extensions_list", path = DB },
  --- `enable_extension(id, database, name)`: the extension (`"citext"`) or the body `{ name,
  -- schema, create_schema }` -> true (409 when already installed, 422 when unknown)
  { "enable_extension", "Postgres_extensions_enable", path = DB, args = { "name:string|table" },
    build = body_of("name") },
  --- `disable_extension(id, database, name, params)`: `force` (also drop what depends on it) ->
  -- true (400 when something depends on it)
  { "disable_extension", "Postgres_extensions_disable", path = { "id", "database:database_name",
    "name:extension_name" }, params = true },
  ------------------------------------------------------------------------ users
  --- `list_users(id)` -> `{ data = { { username, role }, … } }`
  { "list_users", "Postgres_users_list" },
  --- `create_user(id, body)`: `username` and `role` (schema_admin, writer, reader) ->
  -- `{ data = { username, role } }` (409 when it exists)
  { "create_user", "Postgres_users_create", args = { "body:table" }, build = body },
  --- `delete_user(id, username)` -> true (404)
  { "delete_user", "Postgres_users_delete", path = USER },
  --- `update_user_role(id, username, role)`: `"schema_admin"`, `"writer"` or `"reader"`, or the
  -- body `{ role = … }` -> true
  { "update_user_role", "Postgres_users_update_role", path = USER, args = { "role:string|table" },
    build = body_of("role") },
  --- `get_credentials(id, username)` -> `{ data = { username, password } }`
  { "get_credentials", "Postgres_users_credentials", path = USER },
  --- `rotate_password(id, username, body)`: `kill_sessions` (end the user's open sessions) ->
  -- `{ data = { username, password } }` (the new password)
  { "rotate_password", "Postgres_users_rotate_password", path = USER, args = { "body:?table" },
    build = body_or_empty },
})

return Postgres

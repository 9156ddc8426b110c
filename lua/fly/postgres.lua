--- client.postgres: Managed Postgres clusters, their attachments to apps, backups, databases,
-- extensions and users.
--
-- Answers are the API's, wrapped in `data` (`client.postgres:get(id).data.status`); errors
-- carry only a message (`err.code` comes from the HTTP status: `not_found`, `gone`,
-- `conflict`, `unprocessable`, …). A new cluster is `creating`, then `ready`; a destroyed one
-- is `deleting`, then `deleted` (and answers 410 `gone` where the API documents it).
-- @module fly.postgres
local resource = require "fly.resource"

local call, check = resource.call, resource.check

local Postgres = { __name = "fly.postgres" }
Postgres.__index = Postgres

--- The operation each method calls.
Postgres.operations = {
  list = "Postgres_list",
  create = "Postgres_create",
  get = "Postgres_show",
  destroy = "Postgres_delete",
  create_attachment = "Postgres_attachments_create",
  delete_attachment = "Postgres_attachments_delete",
  list_backups = "Postgres_backups_list",
  create_backup = "Postgres_backups_create",
  list_databases = "Postgres_databases_list",
  create_database = "Postgres_databases_create",
  destroy_database = "Postgres_databases_delete",
  list_extensions = "Postgres_extensions_list",
  enable_extension = "Postgres_extensions_enable",
  disable_extension = "Postgres_extensions_disable",
  fork = "Postgres_fork",
  restore = "Postgres_restore",
  list_users = "Postgres_users_list",
  create_user = "Postgres_users_create",
  delete_user = "Postgres_users_delete",
  update_user_role = "Postgres_users_update_role",
  get_credentials = "Postgres_users_credentials",
  rotate_password = "Postgres_users_rotate_password",
}

-- Checks the string arguments named in `names` (the values follow), raising at the line that
-- called the method that called this.
local function strings(method, names, ...)
  for i = 1, #names do check((select(i, ...)), "string", names[i], method, 3) end
end

-- A body given either whole (a table) or by its one required field (a string).
local function body_of(method, field, v)
  if type(v) == "string" then return { [field] = v } end
  if type(v) == "table" then return v end
  error(("fly: %s: %s must be a string or a table (got %s)"):format(method, field, type(v)), 3)
end

local function opt_table(v, name, method)
  if v ~= nil then check(v, "table", name, method, 3) end
  return v
end

---------------------------------------------------------------------------- clusters

--- Lists an organization's clusters.
-- @tparam table params `org_slug` (required), `include_deleted` (boolean)
-- @treturn table `{ data = { PostgresClusterSummary, … } }`, or nil, fly.Error
function Postgres:list(params)
  check(params, "table", "params", "postgres:list")
  local res, err = call(self.client, "Postgres_list", params, nil, 2)
  return res, err
end

--- Creates a cluster.
-- @tparam table body `org_slug`, `plan` (basic, starter, launch, scale, Performance), `region`
-- (required), `name`, `disk_size_gb`, `pg_major_version` ("16", "17"), `pool_mode`,
-- `postgis_enabled`
-- @treturn table `{ data = PostgresCluster }` (status `creating`), or nil, fly.Error (422)
function Postgres:create(body)
  check(body, "table", "body", "postgres:create")
  local res, err = call(self.client, "Postgres_create", { body = body }, nil, 2)
  return res, err
end

--- Gets a cluster.
-- @tparam string id the cluster's id
-- @treturn table `{ data = PostgresCluster }` (with `endpoints` once ready), or nil, fly.Error (404)
function Postgres:get(id)
  strings("postgres:get", { "id" }, id)
  local res, err = call(self.client, "Postgres_show", { postgres_cluster_id = id }, nil, 2)
  return res, err
end

--- Destroys a cluster and its data.
-- @tparam string id the cluster's id
-- @return true (accepted: the cluster is `deleting`), or nil, fly.Error (404, 410 `gone`)
function Postgres:destroy(id)
  strings("postgres:destroy", { "id" }, id)
  local res, err = call(self.client, "Postgres_delete", { postgres_cluster_id = id }, nil, 2)
  return res, err
end

--- Makes a new cluster from a ready cluster's current data.
-- @tparam string id the source cluster's id
-- @tparam[opt] table body `name` (default: the source's name with `-fork`)
-- @treturn table `{ data = PostgresCluster }`, or nil, fly.Error (409 when the source is not ready)
function Postgres:fork(id, body)
  strings("postgres:fork", { "id" }, id)
  opt_table(body, "body", "postgres:fork")
  local res, err = call(self.client, "Postgres_fork", { postgres_cluster_id = id, body = body or {} }, nil, 2)
  return res, err
end

--- Makes a new cluster from a backup or a point in time of a cluster.
-- @tparam string id the source cluster's id
-- @tparam table body `backup_id` (from `list_backups`) or `pitr_time` (RFC 3339), and `name`
-- @treturn table `{ data = PostgresCluster }`, or nil, fly.Error
function Postgres:restore(id, body)
  strings("postgres:restore", { "id" }, id)
  check(body, "table", "body", "postgres:restore")
  local res, err = call(self.client, "Postgres_restore", { postgres_cluster_id = id, body = body }, nil, 2)
  return res, err
end

---------------------------------------------------------------------------- attachments

--- Attaches a cluster to an app.
-- @tparam string id the cluster's id
-- @tparam string|table app the app's name, or the body `{ app_name = … }`
-- @treturn table `{ data = { app_name, attached_at, postgres_cluster_id } }`, or nil, fly.Error
function Postgres:create_attachment(id, app)
  strings("postgres:create_attachment", { "id" }, id)
  local body = body_of("postgres:create_attachment", "app_name", app)
  local res, err = call(self.client, "Postgres_attachments_create", { postgres_cluster_id = id, body = body }, nil, 2)
  return res, err
end

--- Detaches a cluster from an app.
-- @tparam string id the cluster's id
-- @tparam string app the app's name
-- @return true, or nil, fly.Error (404 when it is not attached)
function Postgres:delete_attachment(id, app)
  strings("postgres:delete_attachment", { "id", "app" }, id, app)
  local res, err = call(self.client, "Postgres_attachments_delete",
    { postgres_cluster_id = id, app_name = app }, nil, 2)
  return res, err
end

---------------------------------------------------------------------------- backups

--- Lists a cluster's backups.
-- @tparam string id the cluster's id
-- @treturn table `{ data = { { id, type, status, started_at, finished_at, size_bytes }, … } }`,
-- or nil, fly.Error
function Postgres:list_backups(id)
  strings("postgres:list_backups", { "id" }, id)
  local res, err = call(self.client, "Postgres_backups_list", { postgres_cluster_id = id }, nil, 2)
  return res, err
end

--- Starts a backup.
-- @tparam string id the cluster's id
-- @tparam string|table backup_type `"full"`, `"incr"` or `"diff"`, or the body `{ type = … }`
-- @return true (accepted), or nil, fly.Error (409 while another backup runs)
function Postgres:create_backup(id, backup_type)
  strings("postgres:create_backup", { "id" }, id)
  local body = body_of("postgres:create_backup", "type", backup_type)
  local res, err = call(self.client, "Postgres_backups_create", { postgres_cluster_id = id, body = body }, nil, 2)
  return res, err
end

---------------------------------------------------------------------------- databases

--- Lists a cluster's databases.
-- @tparam string id the cluster's id
-- @treturn table `{ data = { { name }, … } }`, or nil, fly.Error
function Postgres:list_databases(id)
  strings("postgres:list_databases", { "id" }, id)
  local res, err = call(self.client, "Postgres_databases_list", { postgres_cluster_id = id }, nil, 2)
  return res, err
end

--- Creates a database.
-- @tparam string id the cluster's id
-- @tparam string|table name the database's name, or the body `{ name = … }`
-- @treturn table `{ data = { name } }`, or nil, fly.Error (422 when it exists, 400 when reserved)
function Postgres:create_database(id, name)
  strings("postgres:create_database", { "id" }, id)
  local body = body_of("postgres:create_database", "name", name)
  local res, err = call(self.client, "Postgres_databases_create", { postgres_cluster_id = id, body = body }, nil, 2)
  return res, err
end

--- Drops a database and its data.
-- @tparam string id the cluster's id
-- @tparam string name the database's name
-- @treturn table `{ data = { name } }`, or nil, fly.Error (404)
function Postgres:destroy_database(id, name)
  strings("postgres:destroy_database", { "id", "name" }, id, name)
  local res, err = call(self.client, "Postgres_databases_delete",
    { postgres_cluster_id = id, database_name = name }, nil, 2)
  return res, err
end

---------------------------------------------------------------------------- extensions

--- Lists the extensions available in a database, with what is installed.
-- @tparam string id the cluster's id
-- @tparam string database the database's name
-- @treturn table `{ data = { { name, default_version, description, system, installed }, … } }`
-- (`installed` is fly.null or `{ schema, version }`), or nil, fly.Error
function Postgres:list_extensions(id, database)
  strings("postgres:list_extensions", { "id", "database" }, id, database)
  local res, err = call(self.client, "Postgres_extensions_list",
    { postgres_cluster_id = id, database_name = database }, nil, 2)
  return res, err
end

--- Enables an extension in a database.
-- @tparam string id the cluster's id
-- @tparam string database the database's name
-- @tparam string|table name the extension (`"citext"`), or the body `{ name, schema,
-- create_schema }`
-- @return true, or nil, fly.Error (409 when already installed, 422 when unknown)
function Postgres:enable_extension(id, database, name)
  strings("postgres:enable_extension", { "id", "database" }, id, database)
  local body = body_of("postgres:enable_extension", "name", name)
  local res, err = call(self.client, "Postgres_extensions_enable",
    { postgres_cluster_id = id, database_name = database, body = body }, nil, 2)
  return res, err
end

--- Disables an extension in a database.
-- @tparam string id the cluster's id
-- @tparam string database the database's name
-- @tparam string name the extension
-- @tparam[opt] table params `force` (boolean: also drop what depends on it)
-- @return true, or nil, fly.Error (400 when something depends on it)
function Postgres:disable_extension(id, database, name, params)
  strings("postgres:disable_extension", { "id", "database", "name" }, id, database, name)
  opt_table(params, "params", "postgres:disable_extension")
  local res, err = call(self.client, "Postgres_extensions_disable", resource.merge(params,
    { postgres_cluster_id = id, database_name = database, extension_name = name }), nil, 2)
  return res, err
end

---------------------------------------------------------------------------- users

--- Lists a cluster's users.
-- @tparam string id the cluster's id
-- @treturn table `{ data = { { username, role }, … } }`, or nil, fly.Error
function Postgres:list_users(id)
  strings("postgres:list_users", { "id" }, id)
  local res, err = call(self.client, "Postgres_users_list", { postgres_cluster_id = id }, nil, 2)
  return res, err
end

--- Creates a user.
-- @tparam string id the cluster's id
-- @tparam table body `username` and `role` (schema_admin, writer, reader)
-- @treturn table `{ data = { username, role } }`, or nil, fly.Error (409 when it exists)
function Postgres:create_user(id, body)
  strings("postgres:create_user", { "id" }, id)
  check(body, "table", "body", "postgres:create_user")
  local res, err = call(self.client, "Postgres_users_create", { postgres_cluster_id = id, body = body }, nil, 2)
  return res, err
end

--- Deletes a user.
-- @tparam string id the cluster's id
-- @tparam string username
-- @return true, or nil, fly.Error (404)
function Postgres:delete_user(id, username)
  strings("postgres:delete_user", { "id", "username" }, id, username)
  local res, err = call(self.client, "Postgres_users_delete", { postgres_cluster_id = id, username = username },
    nil, 2)
  return res, err
end

--- Changes a user's role.
-- @tparam string id the cluster's id
-- @tparam string username
-- @tparam string|table role `"schema_admin"`, `"writer"` or `"reader"`, or the body `{ role = … }`
-- @return true, or nil, fly.Error
function Postgres:update_user_role(id, username, role)
  strings("postgres:update_user_role", { "id", "username" }, id, username)
  local body = body_of("postgres:update_user_role", "role", role)
  local res, err = call(self.client, "Postgres_users_update_role",
    { postgres_cluster_id = id, username = username, body = body }, nil, 2)
  return res, err
end

--- Gets a user's credentials.
-- @tparam string id the cluster's id
-- @tparam string username
-- @treturn table `{ data = { username, password } }`, or nil, fly.Error
function Postgres:get_credentials(id, username)
  strings("postgres:get_credentials", { "id", "username" }, id, username)
  local res, err = call(self.client, "Postgres_users_credentials",
    { postgres_cluster_id = id, username = username }, nil, 2)
  return res, err
end

--- Gives a user a new password.
-- @tparam string id the cluster's id
-- @tparam string username
-- @tparam[opt] table body `kill_sessions` (boolean: end the user's open sessions)
-- @treturn table `{ data = { username, password } }` (the new password), or nil, fly.Error
function Postgres:rotate_password(id, username, body)
  strings("postgres:rotate_password", { "id", "username" }, id, username)
  opt_table(body, "body", "postgres:rotate_password")
  local res, err = call(self.client, "Postgres_users_rotate_password",
    { postgres_cluster_id = id, username = username, body = body or {} }, nil, 2)
  return res, err
end

return Postgres

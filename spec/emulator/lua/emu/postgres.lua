-- Emulates the Fly Machines API Managed Postgres operations (all 19 Postgres_*):
--   clusters (list, create, show, delete), attachments (create, delete), backups (list,
--   create), databases (list, create, delete), extensions (list, enable, disable), fork,
--   restore, users (list, create, delete, update role, credentials, rotate password).
--
-- Errors here have the Postgres body: {"error": "message"} only.
--
-- Life of a cluster: created "creating" (201); every later request that touches it counts
-- as a poll and after state.config.postgres_polls_to_ready polls (default 1) it is "ready"
-- with endpoints. Delete answers 202 and marks it "deleting"; the next touch makes it
-- "deleted". A deleting/deleted cluster answers 410 where the description documents 410
-- (delete, attachments, fork, rotate_password) and 404 elsewhere; lists show it only with
-- include_deleted=true. A backup starts "running" (a second one is 409) and is "completed"
-- on the next request that touches the cluster. New clusters get a database "fly-db" and a schema_admin "fly-user".
--
-- State: state.table("postgres")[cluster_id] = cluster record (see new_cluster).

local cjson = require "cjson"
local state = require "emu.state"
local util = require "emu.util"

local M = {}

local PLANS = {
  basic = { cpu_kind = "shared", cpus = 1, memory_mb = 1024, replicas = 0 },
  starter = { cpu_kind = "shared", cpus = 2, memory_mb = 2048, replicas = 0 },
  launch = { cpu_kind = "performance", cpus = 2, memory_mb = 8192, replicas = 1 },
  scale = { cpu_kind = "performance", cpus = 4, memory_mb = 32768, replicas = 1 },
  Performance = { cpu_kind = "performance", cpus = 8, memory_mb = 65536, replicas = 1 },
}
local ROLES = { schema_admin = true, writer = true, reader = true }
local BACKUP_TYPES = { full = "F", incr = "I", diff = "D" }
local SYSTEM_DATABASES = { postgres = true, template0 = true, template1 = true }
local RESERVED_USERS = { postgres = true, flypgadmin = true, repmgr = true, replicator = true,
  pgbouncer = true, postgres_exporter = true }

-- the extension catalogue: name -> {default_version, description, system, requires, postgis}
local EXTENSIONS = {
  plpgsql = { "1.0", "PL/pgSQL procedural language", system = true },
  pg_stat_statements = { "1.10", "track planning and execution statistics of all SQL statements executed",
    system = true },
  citext = { "1.6", "data type for case-insensitive character strings" },
  hstore = { "1.8", "data type for storing sets of (key, value) pairs" },
  pgcrypto = { "1.3", "cryptographic functions" },
  ["uuid-ossp"] = { "1.1", "generate universally unique identifiers (UUIDs)" },
  pg_trgm = { "1.6", "text similarity measurement and index searching based on trigrams" },
  vector = { "0.8.0", "vector data type and ivfflat and hnsw access methods" },
  unaccent = { "1.1", "text search dictionary that removes accents" },
  fuzzystrmatch = { "1.2", "determine similarities and distance between strings" },
  btree_gin = { "1.3", "support for indexing common datatypes in GIN" },
  btree_gist = { "1.7", "support for indexing common datatypes in GiST" },
  ltree = { "1.2", "data type for hierarchical tree-like structures" },
  tablefunc = { "1.0", "functions that manipulate whole tables, including crosstab" },
  cube = { "1.5", "data type for multidimensional cubes" },
  earthdistance = { "1.1", "calculate great-circle distances on the surface of the Earth", requires = "cube" },
  postgis = { "3.5.2", "PostGIS geometry and geography spatial types and functions", postgis = true },
  postgis_topology = { "3.5.2", "PostGIS topology spatial types and functions", postgis = true, requires = "postgis" },
}

local function perr(status, message) return status, { error = message } end

local function clusters() return state.table("postgres") end

local function org_exists(slug)
  local ok, orgs = pcall(require, "emu.orgs")
  if ok and type(orgs.org_exists) == "function" then return orgs.org_exists(slug) end
  return type(slug) == "string" and slug ~= ""
end

local function org_name(slug)
  local ok, orgs = pcall(require, "emu.orgs")
  if ok and type(orgs.org_name) == "function" then return orgs.org_name(slug) end
  return slug
end

local function parse_time(s)
  local ok, orgs = pcall(require, "emu.orgs")
  if ok and type(orgs.parse_time) == "function" then return orgs.parse_time(s) end
  return nil
end

local function sorted_keys(t)
  local keys = {}
  for k in pairs(t) do keys[#keys + 1] = k end
  table.sort(keys)
  return keys
end

local function password() return util.hex(24) end

---------------------------------------------------------------------------- cluster records

local function valid_name(name)
  return type(name) == "string" and #name <= 63 and name:match("^[a-z0-9][a-z0-9%-]*$") ~= nil
end

local function name_taken(org_slug, name)
  for _, c in pairs(clusters()) do
    if c.org_slug == org_slug and c.name == name and c.status ~= "deleted" then return true end
  end
  return false
end

local function new_cluster(attrs)
  local now = util.now_iso()
  local seq = 1 -- creation order (clusters are never removed, only marked deleted)
  for _ in pairs(clusters()) do seq = seq + 1 end
  local c = {
    id = util.hex(16),
    seq = seq,
    name = attrs.name,
    org_slug = attrs.org_slug,
    plan = attrs.plan,
    region = attrs.region,
    disk_size_gb = attrs.disk_size_gb or 10,
    pg_major_version = attrs.pg_major_version or "17",
    pool_mode = attrs.pool_mode or "transaction",
    postgis_enabled = attrs.postgis_enabled == true,
    status = "creating",
    polls = 0,
    created_at = now,
    attachments = {},  -- array of {app_name, attached_at}
    databases = { ["fly-db"] = { schemas = { public = true }, extensions = {} } },
    users = { ["fly-user"] = { role = "schema_admin", password = password() } },
    backups = {},
  }
  clusters()[c.id] = c
  return c
end

-- every request that finds a cluster advances it: provisioning, deletion, running backups
-- (keep_backups: Postgres_backups_create must still see the running one to answer 409)
local function touch(c, keep_backups)
  c.polls = c.polls + 1
  if c.status == "creating" or c.status == "initializing" then
    local needed = tonumber(state.config.postgres_polls_to_ready) or 1
    if c.polls >= needed then c.status = "ready"
    elseif c.polls >= math.ceil(needed / 2) then c.status = "initializing" end
  elseif c.status == "deleting" then
    c.status, c.deleted_at = "deleted", util.now_iso()
  end
  if keep_backups then return end
  for _, b in ipairs(c.backups) do
    if b.status == "running" then
      b.status, b.finished_at = "completed", util.now_iso()
      b.size_bytes = (b.type == "full" and 48 or 6) * 1024 * 1024 + #c.backups * 4096
    end
  end
end

local function gone(c) return c.status == "deleting" or c.status == "deleted" end

local function gone_message(c)
  return c.status == "deleted" and "This cluster has been deleted" or "This cluster is being deleted"
end

-- look the cluster up; gone clusters give 410 when allow_410, else 404
local function find(req, allow_410, keep_backups)
  local c = clusters()[req.params.postgres_cluster_id]
  if not c then return nil, 404, "Cluster not found" end
  touch(c, keep_backups)
  if gone(c) then
    if allow_410 then return nil, 410, gone_message(c) end
    return nil, 404, "Cluster not found"
  end
  return c
end

local function attached_apps(c)
  local out = {}
  for i, a in ipairs(c.attachments) do out[i] = { name = a.app_name } end
  return util.arr(out)
end

local function render(c)
  local plan = PLANS[c.plan] or PLANS.basic
  local out = {
    id = c.id, name = c.name, status = c.status, plan = c.plan, region = c.region,
    organization = { slug = c.org_slug, name = org_name(c.org_slug) },
    cpu_kind = plan.cpu_kind, cpus = plan.cpus, memory_mb = plan.memory_mb, replicas = plan.replicas,
    disk_size_gb = c.disk_size_gb, pg_major_version = c.pg_major_version,
    postgis_enabled = c.postgis_enabled, attached_apps = attached_apps(c), created_at = c.created_at,
  }
  if c.status == "ready" then
    out.endpoints = { primary = {
      direct = { host = "direct." .. c.id .. ".flympg.net", port = 5432 },
      pooler = { host = "pgbouncer." .. c.id .. ".flympg.net", port = 5432 },
    } }
  end
  return out
end

local function summary(c)
  return {
    id = c.id, name = c.name, status = c.status, plan = c.plan, region = c.region,
    attached_apps = attached_apps(c), created_at = c.created_at, deleted_at = c.deleted_at,
  }
end

local function body_of(req, required)
  if req.bad_json then return nil, "Invalid JSON in request body" end
  if req.body == nil and not required then return {} end
  if type(req.body) ~= "table" then return nil, "Request body must be a JSON object" end
  return req.body
end

-- a copy of src under a new name (fork and restore): same settings, databases and users
local function clone(src, name)
  local c = new_cluster { name = name, org_slug = src.org_slug, plan = src.plan, region = src.region,
    disk_size_gb = src.disk_size_gb, pg_major_version = src.pg_major_version,
    pool_mode = src.pool_mode, postgis_enabled = src.postgis_enabled }
  c.databases = {}
  for db, d in pairs(src.databases) do
    local schemas, exts = {}, {}
    for s in pairs(d.schemas) do schemas[s] = true end
    for e, inst in pairs(d.extensions) do exts[e] = { schema = inst.schema, version = inst.version } end
    c.databases[db] = { schemas = schemas, extensions = exts }
  end
  c.users = {}
  for u, rec in pairs(src.users) do c.users[u] = { role = rec.role, password = password() } end
  return c
end

---------------------------------------------------------------------------- clusters

local function list(req)
  local q = req.query or {}
  local slug = util.qval(q.org_slug)
  if slug == nil or slug == "" then return perr(422, "org_slug is required") end
  local inc = util.qval(q.include_deleted)
  if inc ~= nil and inc ~= "true" and inc ~= "false" then return perr(422, "include_deleted must be true or false") end
  if not org_exists(slug) then return perr(404, "Organization not found") end
  local rows = {}
  for _, c in pairs(clusters()) do
    if c.org_slug == slug then
      touch(c)
      if inc == "true" or c.status ~= "deleted" then rows[#rows + 1] = c end
    end
  end
  table.sort(rows, function(a, b) return a.seq < b.seq end)
  local out = {}
  for i, c in ipairs(rows) do out[i] = summary(c) end
  return 200, { data = util.arr(out) }
end

local function create(req)
  local body, berr = body_of(req, true)
  if not body then return perr(422, berr) end
  if type(body.org_slug) ~= "string" or body.org_slug == "" then return perr(422, "org_slug is required") end
  if type(body.plan) ~= "string" or not PLANS[body.plan] then
    return perr(422, "plan must be one of basic, starter, launch, scale, Performance")
  end
  if type(body.region) ~= "string" or body.region == "" then return perr(422, "region is required") end
  local v = body.pg_major_version
  if type(v) == "number" then v = tostring(math.floor(v)) end
  if v ~= nil and v ~= "16" and v ~= "17" then return perr(422, "pg_major_version must be 16 or 17") end
  if body.pool_mode ~= nil and body.pool_mode ~= "session" and body.pool_mode ~= "transaction" then
    return perr(422, "pool_mode must be session or transaction")
  end
  local disk = body.disk_size_gb
  if disk ~= nil and (type(disk) ~= "number" or disk ~= math.floor(disk) or disk < 10 or disk > 500) then
    return perr(422, "disk_size_gb must be an integer between 10 and 500")
  end
  if body.postgis_enabled ~= nil and type(body.postgis_enabled) ~= "boolean" then
    return perr(422, "postgis_enabled must be a boolean")
  end
  local name = body.name
  if name == nil or name == "" then
    name = "pg-" .. util.hex(8)
  elseif not valid_name(name) then
    return perr(422, "name must be lowercase letters, digits and dashes (at most 63)")
  end
  if not org_exists(body.org_slug) then return perr(404, "Organization not found") end
  local ok, platform = pcall(require, "emu.platform")
  if ok and type(platform.region_codes) == "table" and not platform.region_codes[body.region] then
    return perr(422, "region " .. body.region .. " is not a valid region")
  end
  if name_taken(body.org_slug, name) then return perr(422, "name " .. name .. " has already been taken") end
  local c = new_cluster { name = name, org_slug = body.org_slug, plan = body.plan, region = body.region,
    disk_size_gb = disk, pg_major_version = v, pool_mode = body.pool_mode, postgis_enabled = body.postgis_enabled }
  return 201, { data = render(c) }
end

local function show(req)
  local c, status, msg = find(req, false)
  if not c then return perr(status, msg) end
  return 200, { data = render(c) }
end

local function delete(req)
  local c, status, msg = find(req, true)
  if not c then return perr(status, msg) end
  c.status = "deleting"
  return 202, nil
end

---------------------------------------------------------------------------- attachments

local function attach(req)
  local c, status, msg = find(req, true)
  if not c then return perr(status, msg) end
  local body, berr = body_of(req, true)
  if not body then return perr(422, berr) end
  local app_name = body.app_name
  if type(app_name) ~= "string" or app_name == "" then return perr(422, "app_name is required") end
  if not state.table("apps")[app_name] then return perr(404, "App not found") end
  for _, a in ipairs(c.attachments) do
    if a.app_name == app_name then
      return 200, { data = { app_name = app_name, attached_at = a.attached_at, postgres_cluster_id = c.id } }
    end
  end
  local a = { app_name = app_name, attached_at = util.now_iso() }
  table.insert(c.attachments, a)
  return 201, { data = { app_name = app_name, attached_at = a.attached_at, postgres_cluster_id = c.id } }
end

local function detach(req)
  local c, status, msg = find(req, true)
  if not c then return perr(status, msg) end
  local app_name = req.params.app_name
  if not state.table("apps")[app_name] then return perr(404, "App not found") end
  for i, a in ipairs(c.attachments) do
    if a.app_name == app_name then
      table.remove(c.attachments, i)
      return 204, nil
    end
  end
  return perr(404, "Attachment not found")
end

---------------------------------------------------------------------------- backups

local function render_backup(b)
  return { id = b.id, type = b.type, status = b.status, started_at = b.started_at,
    finished_at = b.finished_at, size_bytes = b.size_bytes }
end

local function backups_list(req)
  local c, status, msg = find(req, false)
  if not c then return perr(status, msg) end
  local out = {}
  for i, b in ipairs(c.backups) do out[i] = render_backup(b) end
  return 200, { data = util.arr(out) }
end

local function backups_create(req)
  local c, status, msg = find(req, false, true)
  if not c then return perr(status, msg) end
  local body, berr = body_of(req, true)
  if not body then return perr(422, berr) end
  local letter = BACKUP_TYPES[body.type]
  if not letter then return perr(422, "type must be one of full, incr, diff") end
  for _, b in ipairs(c.backups) do
    if b.status == "running" then return perr(409, "A backup is currently running") end
  end
  local now = os.time()
  local id = os.date("!%Y%m%d-%H%M%S", now) .. letter
  for _, b in ipairs(c.backups) do -- labels are per second: keep them unique
    if b.id == id then id = os.date("!%Y%m%d-%H%M%S", now) .. "_" .. (#c.backups + 1) .. letter end
  end
  table.insert(c.backups, { id = id, type = body.type, status = "running", started_at = util.now_iso() })
  return 202, nil
end

---------------------------------------------------------------------------- databases and extensions

local function valid_identifier(s)
  return type(s) == "string" and #s <= 63 and s:match("^[A-Za-z_][A-Za-z0-9_%-]*$") ~= nil
end

local function db_names(c)
  local out = {}
  for i, name in ipairs(sorted_keys(c.databases)) do out[i] = { name = name } end
  return util.arr(out)
end

local function databases_list(req)
  local c, status, msg = find(req, false)
  if not c then return perr(status, msg) end
  return 200, { data = db_names(c) }
end

local function databases_create(req)
  local c, status, msg = find(req, false)
  if not c then return perr(status, msg) end
  local body, berr = body_of(req, true)
  if not body then return perr(422, berr) end
  local name = body.name
  if name == nil or name == "" then return perr(422, "name is required") end
  if SYSTEM_DATABASES[name] or not valid_identifier(name) then
    return perr(400, "Database name is reserved, a system database, or malformed")
  end
  if c.databases[name] then return perr(422, "Database " .. name .. " already exists") end
  c.databases[name] = { schemas = { public = true }, extensions = {} }
  return 201, { data = { name = name } }
end

local function databases_delete(req)
  local c, status, msg = find(req, false)
  if not c then return perr(status, msg) end
  local name = req.params.database_name
  if SYSTEM_DATABASES[name] or not valid_identifier(name) then
    return perr(400, "Database name is reserved, a system database, or malformed")
  end
  if not c.databases[name] then return perr(404, "Database not found") end
  c.databases[name] = nil
  return 200, { data = { name = name } }
end

-- the cluster and one of its databases, or an error
local function find_db(req)
  local c, status, msg = find(req, false)
  if not c then return nil, nil, status, msg end
  local name = req.params.database_name
  if not valid_identifier(name) then return nil, nil, 400, "Database name is malformed" end
  local db = c.databases[name]
  if not db then return nil, nil, 404, "Database not found" end
  return c, db
end

local function installed_of(db, ext)
  if ext == "plpgsql" then return { schema = "pg_catalog", version = EXTENSIONS.plpgsql[1] } end
  if ext == "pg_stat_statements" then return { schema = "public", version = EXTENSIONS.pg_stat_statements[1] } end
  return db.extensions[ext]
end

local function extensions_list(req)
  local c, db, status, msg = find_db(req)
  if not c then return perr(status, msg) end
  local out = {}
  for _, name in ipairs(sorted_keys(EXTENSIONS)) do
    local e = EXTENSIONS[name]
    if not e.postgis or c.postgis_enabled then
      out[#out + 1] = { name = name, default_version = e[1], description = e[2], system = e.system == true,
        installed = installed_of(db, name) or cjson.null }
    end
  end
  return 200, { data = out }
end

local function extensions_enable(req)
  local c, db, status, msg = find_db(req)
  if not c then return perr(status, msg) end
  local body, berr = body_of(req, true)
  if not body then return perr(422, berr) end
  local name = body.name
  local e = type(name) == "string" and EXTENSIONS[name]
  if not e then return perr(422, "Unknown or unsupported extension: " .. tostring(name)) end
  if e.postgis and not c.postgis_enabled then return perr(409, "PostGIS is not enabled on this cluster") end
  local schema = body.schema
  if schema ~= nil and not valid_identifier(schema) then return perr(422, "schema is invalid") end
  schema = schema or "public"
  local inst = installed_of(db, name)
  if inst then
    return perr(409, "Extension " .. name .. " is already installed in schema " .. inst.schema)
  end
  if not db.schemas[schema] then
    if body.create_schema ~= true then return perr(422, "schema " .. schema .. " does not exist") end
    db.schemas[schema] = true
  end
  if e.requires and not db.extensions[e.requires] then -- CREATE EXTENSION ... CASCADE
    db.extensions[e.requires] = { schema = schema, version = EXTENSIONS[e.requires][1] }
  end
  db.extensions[name] = { schema = schema, version = e[1] }
  return 204, nil
end

local function extensions_disable(req)
  local c, db, status, msg = find_db(req)
  if not c then return perr(status, msg) end
  local name = req.params.extension_name
  local e = EXTENSIONS[name]
  if not e then return perr(422, "Invalid extension name") end
  if e.system then return perr(400, "System extensions cannot be disabled") end
  if not db.extensions[name] then return 204, nil end -- DROP EXTENSION IF EXISTS
  local force = util.qval(req.query and req.query.force) == "true"
  for other in pairs(db.extensions) do
    if EXTENSIONS[other].requires == name then
      if not force then
        return perr(400, "Extension " .. other .. " depends on " .. name .. "; use force to drop it too")
      end
      db.extensions[other] = nil
    end
  end
  db.extensions[name] = nil
  return 204, nil
end

---------------------------------------------------------------------------- fork and restore

local function fork(req)
  local c, status, msg = find(req, true)
  if not c then return perr(status, msg) end
  local body, berr = body_of(req, false)
  if not body then return perr(422, berr) end
  if c.status ~= "ready" then return perr(409, "The source cluster is not ready to be forked yet") end
  local name = body.name
  if name == nil or name == "" then name = c.name .. "-fork" end
  if not valid_name(name) then return perr(422, "name is invalid") end
  if name_taken(c.org_slug, name) then return perr(422, "name " .. name .. " has already been taken") end
  return 201, { data = render(clone(c, name)) }
end

local function restore(req)
  local c, status, msg = find(req, false)
  if not c then return perr(status, msg) end
  local body, berr = body_of(req, true)
  if not body then return perr(422, berr) end
  local backup_id, pitr = body.backup_id, body.pitr_time
  if backup_id == "" then backup_id = nil end
  if pitr == "" then pitr = nil end
  if not backup_id and not pitr then return perr(422, "A restore target is missing: give backup_id or pitr_time") end
  if backup_id and pitr then return perr(422, "backup_id and pitr_time are mutually exclusive") end
  local suffix
  if backup_id then
    local found
    for _, b in ipairs(c.backups) do if b.id == backup_id then found = b end end
    if not found then return perr(404, "Backup " .. tostring(backup_id) .. " not found for cluster " .. c.id) end
    if found.status ~= "completed" then
      return perr(400, "Restore failed: backup " .. found.id .. " has not completed")
    end
    suffix = found.id:lower():gsub("[^a-z0-9]", "")
  else
    local t = parse_time(pitr)
    if not t then return perr(422, "pitr_time must be an RFC 3339 timestamp with a UTC offset") end
    local from, now = parse_time(c.created_at) or 0, parse_time(util.now_iso()) or os.time()
    if t < from or t > now + 1 then return perr(422, "point-in-time restore is outside the recovery window") end
    suffix = os.date("!%Y%m%d%H%M%S", math.floor(t))
  end
  local name = body.name
  if name == nil or name == "" then name = c.name .. "-restore-" .. suffix end
  if not valid_name(name) then return perr(422, "name is invalid") end
  if name_taken(c.org_slug, name) then return perr(422, "name " .. name .. " has already been taken") end
  return 201, { data = render(clone(c, name)) }
end

---------------------------------------------------------------------------- users

local function valid_username(u)
  return type(u) == "string" and #u <= 63 and u:match("^[A-Za-z_][A-Za-z0-9_%-]*$") ~= nil
    and not RESERVED_USERS[u] and not u:match("^pg_")
end

local function users_list(req)
  local c, status, msg = find(req, false)
  if not c then return perr(status, msg) end
  local out = {}
  for i, u in ipairs(sorted_keys(c.users)) do out[i] = { username = u, role = c.users[u].role } end
  return 200, { data = util.arr(out) }
end

local function users_create(req)
  local c, status, msg = find(req, false)
  if not c then return perr(status, msg) end
  local body, berr = body_of(req, true)
  if not body then return perr(422, berr) end
  local username, role = body.username, body.role
  if username == nil or username == "" or role == nil then return perr(422, "username and role are required") end
  if not ROLES[role] then return perr(422, "role must be one of schema_admin, writer, reader") end
  if not valid_username(username) then return perr(400, "Username is reserved, a system user, or malformed") end
  if c.users[username] then return perr(409, "User already exists") end
  c.users[username] = { role = role, password = password() }
  return 201, { data = { username = username, role = role } }
end

-- the cluster and one of its users, or an error (410 only where documented)
local function find_user(req, allow_410)
  local c, status, msg = find(req, allow_410)
  if not c then return nil, nil, status, msg end
  local username = req.params.username
  if not valid_username(username) then return nil, nil, 400, "Username is reserved, a system user, or malformed" end
  local u = c.users[username]
  if not u then return nil, nil, 404, "User not found" end
  return c, u
end

local function users_delete(req)
  local c, _, status, msg = find_user(req, false)
  if not c then return perr(status, msg) end
  c.users[req.params.username] = nil
  return 204, nil
end

local function users_update_role(req)
  local c, u, status, msg = find_user(req, false)
  if not c then return perr(status, msg) end
  local body, berr = body_of(req, true)
  if not body then return perr(422, berr) end
  if not ROLES[body.role] then return perr(422, "role must be one of schema_admin, writer, reader") end
  u.role = body.role
  return 204, nil
end

local function users_credentials(req)
  local c, u, status, msg = find_user(req, false)
  if not c then return perr(status, msg) end
  return 200, { data = { username = req.params.username, password = u.password } }
end

local function users_rotate_password(req)
  local c, u, status, msg = find_user(req, true)
  if not c then return perr(status, msg) end
  local body, berr = body_of(req, false)
  if not body then return perr(422, berr) end
  if body.kill_sessions ~= nil and type(body.kill_sessions) ~= "boolean" then
    return perr(422, "kill_sessions must be true or false")
  end
  u.password = password()
  return 200, { data = { username = req.params.username, password = u.password } }
end

---------------------------------------------------------------------------- routes

local base = "/v1/postgres"
local one = base .. "/{postgres_cluster_id}"
local db = one .. "/databases/{database_name}"
local user = one .. "/users/{username}"
M.routes = {
  { op = "Postgres_list", method = "GET", path = base, handler = list },
  { op = "Postgres_create", method = "POST", path = base, handler = create },
  { op = "Postgres_show", method = "GET", path = one, handler = show },
  { op = "Postgres_delete", method = "DELETE", path = one, handler = delete },
  { op = "Postgres_attachments_create", method = "POST", path = one .. "/attachments", handler = attach },
  { op = "Postgres_attachments_delete", method = "DELETE", path = one .. "/attachments/{app_name}", handler = detach },
  { op = "Postgres_backups_list", method = "GET", path = one .. "/backups", handler = backups_list },
  { op = "Postgres_backups_create", method = "POST", path = one .. "/backups", handler = backups_create },
  { op = "Postgres_databases_list", method = "GET", path = one .. "/databases", handler = databases_list },
  { op = "Postgres_databases_create", method = "POST", path = one .. "/databases", handler = databases_create },
  { op = "Postgres_databases_delete", method = "DELETE", path = db, handler = databases_delete },
  { op = "Postgres_extensions_list", method = "GET", path = db .. "/extensions", handler = extensions_list },
  { op = "Postgres_extensions_enable", method = "POST", path = db .. "/extensions", handler = extensions_enable },
  { op = "Postgres_extensions_disable", method = "DELETE", path = db .. "/extensions/{extension_name}",
    handler = extensions_disable },
  { op = "Postgres_fork", method = "POST", path = one .. "/fork", handler = fork },
  { op = "Postgres_restore", method = "POST", path = one .. "/restore", handler = restore },
  { op = "Postgres_users_list", method = "GET", path = one .. "/users", handler = users_list },
  { op = "Postgres_users_create", method = "POST", path = one .. "/users", handler = users_create },
  { op = "Postgres_users_delete", method = "DELETE", path = user, handler = users_delete },
  { op = "Postgres_users_update_role", method = "PATCH", path = user, handler = users_update_role },
  { op = "Postgres_users_credentials", method = "GET", path = user .. "/credentials", handler = users_credentials },
  { op = "Postgres_users_rotate_password", method = "POST", path = user .. "/rotate_password",
    handler = users_rotate_password },
}

return M

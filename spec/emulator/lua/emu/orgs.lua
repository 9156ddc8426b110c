-- Emulates the Fly Machines API organization-wide listings:
--   Machines_org_list and Volumes_org_list.
--
-- Both read the apps / machines / volumes state of the apps whose org_slug is the
-- requested organization, sort by (updated_at, id) and page with an opaque cursor
-- (next_cursor is present while more remain). Pages are deliberately small so clients must
-- follow cursors: the page size is state.config.org_page_size (default 2); `limit` may ask
-- for fewer, never more. Filters: include_deleted, region, state (comma list), summary,
-- updated_after (RFC 3339; a cursor takes precedence).
--
-- M.org_exists(slug) is shared with postgres.lua: an organization exists when an app
-- belongs to it, when it is listed in state.config.orgs or state.table("orgs"), or when it
-- is the default organization (state.config.org_slug, default "personal").

local state = require "emu.state"
local util = require "emu.util"

local M = {}

local function app_org(app)
  if type(app) ~= "table" then return nil end
  return app.org_slug or (type(app.organization) == "table" and app.organization.slug) or nil
end

function M.org_exists(slug)
  if type(slug) ~= "string" or slug == "" then return false end
  if slug == (state.config.org_slug or "personal") then return true end
  local listed = state.config.orgs
  if type(listed) == "table" then
    if listed[slug] then return true end
    for _, s in ipairs(listed) do if s == slug then return true end end
  end
  if state.table("orgs")[slug] ~= nil then return true end
  for _, app in pairs(state.table("apps")) do
    if app_org(app) == slug then return true end
  end
  return false
end

-- the organization's display name
function M.org_name(slug)
  local o = state.table("orgs")[slug]
  if type(o) == "table" and o.name then return o.name end
  for _, app in pairs(state.table("apps")) do
    if app_org(app) == slug and app.org_name then return app.org_name end
  end
  if slug == "personal" then return "Personal" end
  return slug
end

local function org_apps(slug)
  local names = {}
  for name, app in pairs(state.table("apps")) do
    if app_org(app) == slug then names[#names + 1] = name end
  end
  table.sort(names)
  return names
end

---------------------------------------------------------------------------- time and cursors

local function days_from_civil(y, m, d)
  if m <= 2 then y = y - 1 end
  local era = math.floor(y / 400)
  local yoe = y - era * 400
  local doy = math.floor((153 * ((m + 9) % 12) + 2) / 5) + d - 1
  local doe = yoe * 365 + math.floor(yoe / 4) - math.floor(yoe / 100) + doy
  return era * 146097 + doe - 719468
end

-- RFC 3339 -> seconds since the epoch (fractions kept), or nil
function M.parse_time(s)
  if type(s) ~= "string" then return nil end
  local y, mo, d, h, mi, sec, rest = s:match("^(%d%d%d%d)%-(%d%d)%-(%d%d)[Tt ](%d%d):(%d%d):(%d%d)(.*)$")
  if not y then return nil end
  local frac, tz = rest:match("^(%.%d+)(.*)$")
  if not frac then frac, tz = "0", rest end
  local offset = 0
  if tz ~= "Z" and tz ~= "z" then
    local sign, oh, om = tz:match("^([%+%-])(%d%d):?(%d%d)$")
    if not sign then return nil end
    offset = (tonumber(oh) * 3600 + tonumber(om) * 60) * (sign == "+" and 1 or -1)
  end
  return days_from_civil(tonumber(y), tonumber(mo), tonumber(d)) * 86400
    + tonumber(h) * 3600 + tonumber(mi) * 60 + tonumber(sec) + tonumber("0" .. frac:gsub("^0", "")) - offset
end

-- the cursor carries the last item's timestamp text and id (re-parsed, so it compares equal)
local function make_cursor(item) return util.hex_encode(item.ts .. "|" .. item.id) end

local function read_cursor(c)
  local raw = util.hex_decode(c)
  local ts, id = (raw or ""):match("^([^|]*)|(.+)$")
  if not ts then return nil end
  return { t = M.parse_time(ts) or 0, id = id }
end

local function after(a, b) return a.t > b.t or (a.t == b.t and a.id > b.id) end

-- the shared paging logic. items: array of {ts=, t=, id=, row=}; returns the response or an error
local function page(req, items)
  local q = req.query or {}
  local cap = tonumber(state.config.org_page_size) or 2
  local size = cap
  local lq = util.qval(q.limit)
  if lq ~= nil and lq ~= "" then
    local n = tonumber(lq)
    if not n or n ~= math.floor(n) or n < 1 then return nil, "limit must be a positive integer" end
    size = math.min(n, cap, 1000)
  end
  local from
  local cq = util.qval(q.cursor)
  if cq ~= nil and cq ~= "" then
    from = read_cursor(cq)
    if not from then return nil, "invalid cursor" end
  else
    local ua = util.qval(q.updated_after)
    if ua ~= nil and ua ~= "" then
      local t = M.parse_time(ua)
      if not t then return nil, "updated_after must be an RFC 3339 timestamp" end
      from = { t = t, id = "\255" } -- strictly after that instant
    end
  end
  table.sort(items, function(a, b) return after(b, a) end)
  local rows, last, more = {}, nil, false
  for _, item in ipairs(items) do
    if not from or after(item, from) then
      if #rows == size then more = true; break end
      rows[#rows + 1] = item.row
      last = item
    end
  end
  return { rows = util.arr(rows), last = last, next_cursor = more and make_cursor(last) or nil }
end

local function filters(req)
  local q = req.query or {}
  local states
  local sq = util.qval(q.state)
  if sq and sq ~= "" then
    states = {}
    for s in sq:gmatch("[^,%s]+") do states[s] = true end
  end
  local region = util.qval(q.region)
  if region == "" then region = nil end
  return {
    include_deleted = util.qbool(q.include_deleted),
    summary = util.qbool(q.summary),
    region = region,
    states = states,
  }
end

local function keep(f, obj)
  if obj.state == "destroyed" and not f.include_deleted then return false end
  if f.region and obj.region ~= f.region then return false end
  if f.states and not f.states[obj.state] then return false end
  return true
end

---------------------------------------------------------------------------- handlers

local function render_machine(app_name, m, summary)
  return {
    id = m.id,
    name = m.name,
    app_name = app_name,
    state = m.state,
    region = m.region,
    private_ip = m.private_ip,
    version = m.version or m.instance_id,
    created_at = m.created_at,
    updated_at = m.updated_at,
    config = (not summary) and m.config or nil,
  }
end

-- machines of an app, destroyed ones included: through emu.machine_store when present
-- (it settles pending lifecycle steps), else from state.table("machines") (flat, by id)
local function app_machines(app_name)
  local ok, store = pcall(require, "emu.machine_store")
  if ok and type(store) == "table" and type(store.machines_of) == "function" then
    return store.machines_of(app_name, true)
  end
  local out = {}
  for _, m in pairs(state.table("machines")) do
    if type(m) == "table" and m.app_name == app_name then out[#out + 1] = m end
  end
  return out
end

local function machines(req)
  local slug = req.params.org_slug
  if not M.org_exists(slug) then return util.err(404, "organization not found") end
  local f = filters(req)
  local items = {}
  for _, app_name in ipairs(org_apps(slug)) do
    for _, m in ipairs(app_machines(app_name)) do
      if keep(f, m) then
        local ts = m.updated_at or m.created_at or ""
        items[#items + 1] = { ts = ts, t = M.parse_time(ts) or 0, id = m.id,
          row = render_machine(app_name, m, f.summary) }
      end
    end
  end
  local p, err = page(req, items)
  if not p then return util.err(400, err) end
  return 200, {
    machines = p.rows,
    next_cursor = p.next_cursor,
    last_machine_id = p.last and p.last.id or nil,
    last_updated_at = p.last and p.last.row.updated_at or nil,
    error_regions = util.arr({}),
  }
end

local function volumes(req)
  local slug = req.params.org_slug
  if not M.org_exists(slug) then return util.err(404, "organization not found") end
  local f = filters(req)
  local volmod = require "emu.volumes"
  local in_org = {}
  for _, app_name in ipairs(org_apps(slug)) do in_org[app_name] = true end
  local items = {}
  for id, v in pairs(state.table("volumes")) do
    if type(v) == "table" and in_org[v.app_name] and volmod.current(v) and keep(f, v) then
      local ts = v.updated_at or v.created_at or ""
      items[#items + 1] = { ts = ts, t = M.parse_time(ts) or 0, id = v.id or id,
        row = volmod.render(v, f.summary, true) }
    end
  end
  local p, err = page(req, items)
  if not p then return util.err(400, err) end
  return 200, {
    volumes = p.rows,
    next_cursor = p.next_cursor,
    last_volume_id = p.last and p.last.id or nil,
    last_updated_at = p.last and p.last.row.updated_at or nil,
  }
end

M.routes = {
  { op = "Machines_org_list", method = "GET", path = "/v1/orgs/{org_slug}/machines", handler = machines },
  { op = "Volumes_org_list", method = "GET", path = "/v1/orgs/{org_slug}/volumes", handler = volumes },
}

return M

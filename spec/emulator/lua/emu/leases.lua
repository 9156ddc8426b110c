-- emu.leases: Machines_show_lease, Machines_create_lease, Machines_release_lease.
--
-- Responses use the live API's wrapped shape (API-NOTES):
--   { status = "success", data = { nonce, expires_at (unix s), owner, version, description },
--     message = "", code = "" }
-- Create without a nonce header while another lease is active -> 409. Create with the header
-- refreshes (new expires_at = now + ttl) when the nonce matches the active lease, 409 when it
-- does not; when the lease already lapsed and nobody took it, the same nonce is re-issued.
-- Release needs the nonce header (400 without, 409 wrong nonce, 404 no active lease).
-- Show answers 404 when no lease is active. Expired leases vanish lazily.
local util = require "emu.util"
local state = require "emu.state"
local store = require "emu.machine_store"
local machines_mod = require "emu.machines"

local M = {}

local function wrap(l)
  return {
    status = "success",
    data = {
      nonce = l.nonce,
      expires_at = l.expires_at,
      owner = l.owner,
      version = l.version,
      description = l.description,
    },
    message = "",
    code = "",
  }
end

local function show(req)
  local m, st, eb = store.find(req)
  if not m then return st, eb end
  local l = store.active_lease(m)
  if not l then return util.err(404, "lease not found") end
  local out = wrap(l)
  out.data.nonce = nil -- only the holder knows the nonce
  return 200, out
end

local function ttl_of(body)
  local ttl = tonumber(body.ttl)
  if ttl == nil then return state.config.lease_ttl or 30 end
  return math.floor(ttl)
end

local function create(req)
  local m, st, eb = store.find(req)
  if not m then return st, eb end
  local body, bst, beb = util.json_body(req, false)
  if not body then return bst, beb end
  local ttl = ttl_of(body)
  if ttl < 1 then return util.err(400, "invalid_argument: ttl must be positive", "invalid_argument") end
  local nonce = store.nonce_of(req)
  if nonce == "" then nonce = nil end
  local l = store.active_lease(m)
  if l then
    if nonce ~= l.nonce then
      return util.err(409, string.format("lease currently held by %s (%s), expires at %s",
        l.owner, l.description or "", util.now_iso(l.expires_at)))
    end
    l.expires_at = math.floor(util.now()) + ttl
    if type(body.description) == "string" then l.description = body.description end
    return 201, wrap(l)
  end
  l = machines_mod.new_lease(m, ttl, type(body.description) == "string" and body.description or "")
  if nonce then l.nonce = nonce end
  return 201, wrap(l)
end

local function release(req)
  local m, st, eb = store.find(req)
  if not m then return st, eb end
  local nonce = store.nonce_of(req)
  if not nonce or nonce == "" then
    return util.err(400, "invalid_argument: fly-machine-lease-nonce header is required",
                    "invalid_argument")
  end
  local l = store.active_lease(m)
  if not l then return util.err(404, "lease not found") end
  if l.nonce ~= nonce then return util.err(409, "lease nonce does not match the active lease") end
  m.lease = nil
  return 200
end

local PL = "/v1/apps/{app_name}/machines/{machine_id}/lease"
M.routes = {
  { op = "Machines_show_lease", method = "GET", path = PL, handler = show },
  { op = "Machines_create_lease", method = "POST", path = PL, handler = create },
  { op = "Machines_release_lease", method = "DELETE", path = PL, handler = release },
}

return M

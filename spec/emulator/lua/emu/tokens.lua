-- Emulates the Fly Machines API token endpoints:
--   Tokens_request_OIDC and Tokens_request_Kms (text/plain: the token itself),
--   CurrentToken_show, Tokens_authenticate, Tokens_authorize.
--
-- A token is "valid" when it is the emulator's token (state.config.token, default
-- "emulator-token", with or without a "Bearer "/"FlyV1 " prefix), a deploy token issued by
-- apps.lua (state.table("__issued_tokens")), or any comma-separated macaroon part starting
-- fm1r_, fm1a_ or fm2_ (the formats fly-go recognises).
-- The organization is state.config.org_slug (default "personal"). OIDC tokens are
-- unsigned-looking JWTs (header.payload.signature) whose claims name an app and machine of
-- that organization when there is one.

local cjson = require "cjson"
local state = require "emu.state"
local util = require "emu.util"

local M = {}

local B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
local function b64url(s)
  local out = {}
  for i = 1, #s, 3 do
    local a, b, c = s:byte(i, i + 2)
    local n = a * 65536 + (b or 0) * 256 + (c or 0)
    local q = { math.floor(n / 262144) % 64, math.floor(n / 4096) % 64, math.floor(n / 64) % 64, n % 64 }
    local len = c and 4 or (b and 3 or 2)
    for j = 1, len do out[#out + 1] = B64:sub(q[j] + 1, q[j] + 1) end
  end
  return table.concat(out)
end

local function hash32(s, seed) return util.hash32(s, seed or 5381, 33) end

-- n bytes determined by s, as an array of integers
local function byte_array(s, n)
  local x, out = hash32(s, 2166136), {}
  for i = 1, n do
    x = (x * 69069 + 1) % 4294967296
    out[i] = math.floor(x / 16777216)
  end
  return out
end

local function random_bytes(n)
  local hex, out = util.hex(n * 2), {}
  for i = 1, n do out[i] = string.char(tonumber(hex:sub(2 * i - 1, 2 * i), 16)) end
  return table.concat(out)
end

local function org_slug() return state.config.org_slug or "personal" end

local function configured_token() return state.config.token or "emulator-token" end

local function strip_scheme(h)
  return (h:gsub("^%s+", ""):gsub("^[Bb]earer%s+", ""):gsub("^[Ff]ly[Vv]1%s+", ""))
end

-- the token parts of an Authorization-style header, or nil when none verifies
local function verify(header)
  if type(header) ~= "string" or header == "" then return nil end
  local token = strip_scheme(header)
  if token == strip_scheme(configured_token()) then return { token } end
  if state.table("__issued_tokens")[token] ~= nil then return { token } end
  local parts = {}
  for part in token:gmatch("[^,%s]+") do
    if part:match("^fm1r_") or part:match("^fm1a_") or part:match("^fm2_") then parts[#parts + 1] = part end
  end
  if #parts == 0 then return nil end
  return parts
end

local function verified_token(part)
  return {
    header = part,
    caveats = { caveats = util.arr({}) },
    nonce = { kid = byte_array("kid|" .. part, 16), rnd = byte_array("rnd|" .. part, 16), proof = false },
    permission_token = byte_array("perm|" .. part, 32),
  }
end

local function numeric_id(s) return hash32(s) % 1000000 + 1 end

-- an app (and a machine of it) of the organization, for OIDC claims
local function sample_app()
  local names = {}
  for name, app in pairs(state.table("apps")) do
    if (app.org_slug or org_slug()) == org_slug() then names[#names + 1] = name end
  end
  table.sort(names)
  local app_name = state.config.oidc_app or names[1] or "app"
  local machine
  for _, m in pairs(state.table("machines")) do -- flat, by machine id
    if type(m) == "table" and m.app_name == app_name and m.state ~= "destroyed"
        and (not machine or m.id < machine.id) then
      machine = m
    end
  end
  return app_name, machine
end

---------------------------------------------------------------------------- handlers

local function oidc(req)
  if req.bad_json then return util.err(400, "invalid JSON in request body") end
  local body = type(req.body) == "table" and req.body or {}
  if body.aud ~= nil and type(body.aud) ~= "string" then return util.err(400, "aud must be a string") end
  if body.aws_principal_tags ~= nil and type(body.aws_principal_tags) ~= "boolean" then
    return util.err(400, "aws_principal_tags must be a boolean")
  end
  local org = org_slug()
  local app_name, m = sample_app()
  local machine_id = m and m.id or util.machine_id()
  local machine_name = m and m.name or "machine"
  local now = util.now_epoch()
  local claims = {
    iss = "https://oidc.fly.io/" .. org,
    aud = (body.aud and body.aud ~= "") and body.aud or ("https://fly.io/" .. org),
    sub = org .. ":" .. app_name .. ":" .. machine_name,
    jti = util.ulid(),
    iat = now, nbf = now, exp = now + 600,
    org_id = tostring(numeric_id(org)), org_name = org, -- Fly puts the slug here, as in sub
    app_id = tostring(numeric_id(app_name)), app_name = app_name,
    machine_id = machine_id, machine_name = machine_name,
    machine_version = m and (m.instance_id or m.version) or util.ulid(),
    region = m and m.region or "iad",
    image = m and type(m.config) == "table" and m.config.image or "registry.fly.io/" .. app_name .. ":latest",
  }
  if body.aws_principal_tags then
    claims["https://aws.amazon.com/tags"] = {
      principal_tags = { app_name = { app_name }, org_name = { org }, machine_id = { machine_id } },
      transitive_tag_keys = { "app_name", "org_name", "machine_id" },
    }
  end
  local header = { alg = "RS256", typ = "JWT", kid = "fly-emulator-1" }
  local jwt = b64url(cjson.encode(header)) .. "." .. b64url(cjson.encode(claims)) .. "." .. b64url(random_bytes(256))
  return 200, jwt, { ["Content-Type"] = "text/plain; charset=utf-8" }
end

local function kms(_req)
  local token = "FlyV1 fm2_" .. b64url(random_bytes(48)) .. ",fm2_" .. b64url(random_bytes(48))
  return 200, token, { ["Content-Type"] = "text/plain; charset=utf-8" }
end

local function current(req)
  local auth = req.headers and req.headers.authorization
  local parts = verify(auth)
  if not parts then return util.err(401, "no tokens found in header") end
  local tokens = {}
  for i, part in ipairs(parts) do
    -- a deploy token issued by App_create_deploy_token is scoped to its app and that app's org
    local issued = state.table("__issued_tokens")[part]
    local app = type(issued) == "table" and state.table("apps")[issued.app] or nil
    local org = app and app.org_slug or org_slug()
    tokens[i] = {
      token_id = string.format("tok_%08x", hash32(part)),
      org_slug = org,
      organization = app and app.org_name or org,
      apps = app and { app.name } or util.arr({}),
      user = not app and string.format("user_%08x", hash32(part, 7)) or nil,
    }
  end
  return 200, { tokens = tokens }
end

local function authenticate(req)
  if req.bad_json then return util.err(400, "invalid JSON in request body") end
  local body = type(req.body) == "table" and req.body or {}
  if type(body.header) ~= "string" or body.header == "" then return util.err(400, "header is required") end
  local parts = verify(body.header)
  if not parts then return util.err(400, "no verified tokens found in header") end
  local out = {}
  for i, part in ipairs(parts) do out[i] = verified_token(part) end
  return 200, out
end

-- which fields need which others (resset rules as documented on main.TokenAccess)
local REQUIRES = {
  { "app_feature", "app_name" }, { "machine_id", "app_name" }, { "machine_feature", "machine_id" },
  { "command", "machine_id" }, { "org_feature", "org_slug" }, { "storage_object", "org_slug" },
}

local function authorize(req)
  if req.bad_json then return util.err(400, "invalid JSON in request body") end
  local body = type(req.body) == "table" and req.body or {}
  if type(body.header) ~= "string" or body.header == "" then return util.err(400, "header is required") end
  local access = body.access
  if type(access) ~= "table" then return util.err(400, "access is required") end
  local parts = verify(body.header)
  if not parts then return util.err(400, "no verified tokens found in header") end
  local action = access.action or 0
  if type(action) ~= "number" or action ~= math.floor(action) or action < 0 or action > 31 then
    return util.err(400, "action must be a combination of r, w, c, d, C (0-31)")
  end
  for _, rule in ipairs(REQUIRES) do
    if access[rule[1]] ~= nil and access[rule[2]] == nil then
      return util.err(400, rule[1] .. " requires " .. rule[2])
    end
  end
  if access.app_name ~= nil then
    local app = state.table("apps")[access.app_name]
    if not app then return util.err(400, "unauthorized: no access to app " .. tostring(access.app_name)) end
    if access.machine_id ~= nil then
      local m = state.table("machines")[access.machine_id]
      if type(m) ~= "table" or m.app_name ~= access.app_name or m.state == "destroyed" then
        return util.err(400, "unauthorized: no access to machine " .. tostring(access.machine_id))
      end
    end
  end
  local org = access.org_slug or org_slug()
  return 200, {
    access = {
      action = action,
      orgid = numeric_id(org),
      appid = access.app_name and numeric_id(access.app_name) or nil,
      app_feature = access.app_feature,
      machine = access.machine_id,
      machine_feature = access.machine_feature,
      command = access.command,
      mutation = access.mutation,
      feature = access.org_feature,
      storage_object = access.storage_object,
      volume = access.volume_id,
      sourceMachine = access.source_machine,
    },
    verified_token = verified_token(parts[1]),
  }
end

M.routes = {
  { op = "Tokens_request_OIDC", method = "POST", path = "/v1/tokens/oidc", handler = oidc },
  { op = "Tokens_request_Kms", method = "POST", path = "/v1/tokens/kms", handler = kms },
  { op = "CurrentToken_show", method = "GET", path = "/v1/tokens/current", handler = current },
  { op = "Tokens_authenticate", method = "POST", path = "/v1/tokens/authenticate", handler = authenticate },
  { op = "Tokens_authorize", method = "POST", path = "/v1/tokens/authorize", handler = authorize },
}

return M

-- Emulates the Fly Machines API platform endpoints:
--   Platform_regions_get (a fixed, realistic region table) and Platform_placements_post
--   (simulated placement of `count` machines over a region expression).
--
-- Other modules use M.region_codes (set of valid codes) to validate regions.
-- Settings read from state.config: nearest_region (default "iad"),
-- placement_region_limit (machines an org may place per region, default 100).

local state = require "emu.state"
local util = require "emu.util"

local M = {}

-- code, name, geo_region, latitude, longitude, flags
-- flags: d = deprecated, g = gateway available, p = requires paid plan, m = Managed Postgres
local REGIONS = {
  { "ams", "Amsterdam, Netherlands", "eu", 52.374342, 4.895439, "gm" },
  { "arn", "Stockholm, Sweden", "eu", 59.6512, 17.9178, "g" },
  { "atl", "Atlanta, Georgia (US)", "na", 33.6407, -84.4277, "d" },
  { "bog", "Bogotá, Colombia", "sa", 4.70159, -74.1469, "d" },
  { "bom", "Mumbai, India", "as", 19.097403, 72.874245, "gp" },
  { "bos", "Boston, Massachusetts (US)", "na", 42.366978, -71.022362, "d" },
  { "cdg", "Paris, France", "eu", 48.860875, 2.353477, "g" },
  { "den", "Denver, Colorado (US)", "na", 39.7392, -104.9847, "d" },
  { "dfw", "Dallas, Texas (US)", "na", 32.778287, -96.7984, "gm" },
  { "ewr", "Secaucus, NJ (US)", "na", 40.789543, -74.056534, "g" },
  { "eze", "Ezeiza, Argentina", "sa", -34.8222, -58.5358, "d" },
  { "fra", "Frankfurt, Germany", "eu", 50.1167, 8.6833, "gm" },
  { "gdl", "Guadalajara, Mexico", "na", 20.5217, -103.3109, "d" },
  { "gig", "Rio de Janeiro, Brazil", "sa", -22.8099, -43.2505, "d" },
  { "gru", "Sao Paulo, Brazil", "sa", -23.549664, -46.654351, "g" },
  { "hkg", "Hong Kong, Hong Kong", "as", 22.250971, 114.203224, "d" },
  { "iad", "Ashburn, Virginia (US)", "na", 39.02214, -77.462555, "gm" },
  { "jnb", "Johannesburg, South Africa", "af", -26.13629, 28.20298, "gp" },
  { "lax", "Los Angeles, California (US)", "na", 33.9416, -118.4085, "gm" },
  { "lhr", "London, United Kingdom", "eu", 51.516434, -0.125656, "gm" },
  { "mad", "Madrid, Spain", "eu", 40.4381, -3.82, "d" },
  { "mia", "Miami, Florida (US)", "na", 25.7877, -80.2241, "d" },
  { "nrt", "Tokyo, Japan", "as", 35.621247, 139.741053, "gm" },
  { "ord", "Chicago, Illinois (US)", "na", 41.891544, -87.630211, "gm" },
  { "otp", "Bucharest, Romania", "eu", 44.4325, 26.1039, "d" },
  { "phx", "Phoenix, Arizona (US)", "na", 33.416084, -112.009383, "d" },
  { "qro", "Querétaro, Mexico", "na", 20.62, -100.1863, "d" },
  { "scl", "Santiago, Chile", "sa", -33.36572, -70.64292, "d" },
  { "sea", "Seattle, Washington (US)", "na", 47.6097, -122.3331, "d" },
  { "sin", "Singapore, Singapore", "as", 1.3, 103.8, "gm" },
  { "sjc", "San Jose, California (US)", "na", 37.351601, -121.896744, "gm" },
  { "syd", "Sydney, Australia", "oc", -33.866033, 151.216853, "gm" },
  { "waw", "Warsaw, Poland", "eu", 52.1657, 20.9671, "d" },
  { "yul", "Montreal, Canada", "na", 45.48647, -73.75549, "g" },
  { "yyz", "Toronto, Canada", "na", 43.644, -79.387, "gm" },
}

-- region aliases accepted in placement expressions
local ALIASES = {
  us = { "iad", "ord", "dfw", "lax", "sjc", "ewr" },
  na = { "iad", "ord", "dfw", "lax", "sjc", "ewr", "yyz", "yul" },
  eu = { "ams", "fra", "lhr", "cdg", "arn" },
  as = { "nrt", "sin", "bom" },
  sa = { "gru" },
  oc = { "syd" },
  af = { "jnb" },
}

M.region_codes = {}
local ROWS = {}
for i, r in ipairs(REGIONS) do
  local flags = r[6]
  ROWS[i] = {
    code = r[1], name = r[2], geo_region = r[3], latitude = r[4], longitude = r[5],
    deprecated = flags:find("d", 1, true) ~= nil,
    gateway_available = flags:find("g", 1, true) ~= nil,
    requires_paid_plan = flags:find("p", 1, true) ~= nil,
    mpg_available = flags:find("m", 1, true) ~= nil,
  }
  M.region_codes[r[1]] = true
end

local function nearest()
  local n = state.config.nearest_region
  if type(n) == "string" and M.region_codes[n] then return n end
  return "iad"
end

local function copy(t)
  local c = {}
  for k, v in pairs(t) do c[k] = v end
  return c
end

---------------------------------------------------------------------------- handlers

local function regions(_req)
  local rows = {}
  for i, r in ipairs(ROWS) do rows[i] = copy(r) end
  return 200, { nearest = nearest(), regions = rows }
end

-- "lhr,eu" -> {"lhr", "ams", "fra", ...} (deduplicated, in order); "any" = every
-- non-deprecated region, nearest first. Returns nil, bad_token on an unknown name.
local function expand(expr)
  local out, seen = {}, {}
  local function add(code)
    if not seen[code] then seen[code] = true; out[#out + 1] = code end
  end
  for token in expr:gmatch("[^,%s]+") do
    token = token:lower()
    if token == "any" then
      add(nearest())
      for _, r in ipairs(ROWS) do if not r.deprecated then add(r.code) end end
    elseif ALIASES[token] then
      for _, code in ipairs(ALIASES[token]) do add(code) end
    elseif M.region_codes[token] then
      add(token)
    else
      return nil, token
    end
  end
  return out
end

local function placements(req)
  if req.bad_json then return util.err(400, "invalid JSON in request body") end
  local body = type(req.body) == "table" and req.body or {}
  if type(body.org_slug) ~= "string" or body.org_slug == "" then return util.err(400, "org_slug is required") end
  local count = body.count or 0
  if type(count) ~= "number" or count ~= math.floor(count) or count < 0 then
    return util.err(400, "count must be a non-negative integer")
  end
  local expr = body.region
  if expr ~= nil and type(expr) ~= "string" then return util.err(400, "region must be a string") end
  if expr == nil or expr == "" then expr = nearest() .. ",any" end
  local codes, bad = expand(expr)
  if not codes then return util.err(400, "unknown region or alias: " .. bad) end
  if #codes == 0 then return util.err(400, "region expression matches no region") end

  -- A volume name narrows placement to the regions holding an unattached volume of that name.
  if type(body.volume_name) == "string" and body.volume_name ~= "" then
    local where = {}
    local apps = state.table("apps")
    local okv, volmod = pcall(require, "emu.volumes")
    local attached = okv and volmod.attached_machine or function(v) return v.attached_machine_id end
    for _, v in pairs(state.table("volumes")) do
      local app = type(v) == "table" and apps[v.app_name]
      if app and app.org_slug == body.org_slug and v.name == body.volume_name and v.state ~= "destroyed"
          and not attached(v) then
        where[v.region] = (where[v.region] or 0) + 1
      end
    end
    local kept = {}
    for _, code in ipairs(codes) do if where[code] then kept[#kept + 1] = code end end
    if #kept == 0 then
      return util.err(400, "no unattached volume named " .. body.volume_name .. " in the requested regions",
        "volume_placement_capacity")
    end
    codes = kept
  end

  local limit = tonumber(state.config.placement_region_limit) or 100
  local out = {}
  if count == 0 then
    for i, code in ipairs(codes) do out[i] = { region = code, count = limit, concurrency = limit } end
    return 200, { regions = out }
  end
  -- Fill the preferred regions first; spread > 0 in weights round-robins instead.
  local spread = type(body.weights) == "table" and tonumber(body.weights.spread) or 0
  local placed, left = {}, count
  if spread > 0 then
    local i = 0
    while left > 0 do
      local code = codes[i % #codes + 1]
      if (placed[code] or 0) < limit then placed[code] = (placed[code] or 0) + 1; left = left - 1 end
      i = i + 1
      if i > count * #codes + #codes then break end
    end
  else
    for _, code in ipairs(codes) do
      local n = math.min(left, limit)
      if n > 0 then placed[code] = n; left = left - n end
    end
  end
  if left > 0 then
    return util.err(400, "insufficient capacity to place " .. count .. " machines", "insufficient_capacity")
  end
  for _, code in ipairs(codes) do
    if placed[code] then
      out[#out + 1] = { region = code, count = placed[code], concurrency = math.min(placed[code], 10) }
    end
  end
  return 200, { regions = out }
end

M.routes = {
  { op = "Platform_regions_get", method = "GET", path = "/v1/platform/regions", handler = regions },
  { op = "Platform_placements_post", method = "POST", path = "/v1/platform/placements", handler = placements },
}

return M

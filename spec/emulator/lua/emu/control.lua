-- emu.control: test-control endpoints under /__emulator/ (no auth, not counted in stats).
--
--   POST   /__emulator/reset          empty every table (apps, machines, stats, faults, buckets,
--                                     other modules' data) and reset config -> {ok=true}
--   GET    /__emulator/stats          see emu/stats.lua
--   GET    /__emulator/config         current config
--   POST   /__emulator/config         deep-merge a JSON object into config -> config
--   GET    /__emulator/faults         pending faults
--   POST   /__emulator/faults         append one fault (see emu/faults.lua) -> {ok=true, faults=n}
--   DELETE /__emulator/faults         clear faults -> {ok=true}
--   POST   /__emulator/machine_state  {id=, state=} force a machine state (e.g. "failed")
--   GET    /__emulator/routes         [{op, method, path}] of every loaded route
--   GET    /__emulator/health         {ok=true}
local util = require "emu.util"
local state = require "emu.state"
local stats = require "emu.stats"
local faults = require "emu.faults"

local control = {}

local function body()
  ngx.req.read_body()
  local raw = ngx.req.get_body_data()
  if not raw or not raw:find("%S") then return {} end
  local v = util.json_decode(raw)
  if type(v) ~= "table" then return nil end
  return v
end

local function bad(msg) return 400, { error = msg, status = "invalid_argument" } end

local handlers = {}

handlers["POST reset"] = function()
  state.reset()
  return 200, { ok = true }
end

handlers["GET stats"] = function()
  return 200, stats.snapshot()
end

handlers["GET config"] = function()
  return 200, state.config
end

handlers["POST config"] = function()
  local b = body()
  if not b then return bad("config must be a JSON object") end
  state.merge_config(b)
  return 200, state.config
end

handlers["GET faults"] = function()
  return 200, util.array(util.copy(faults.all()))
end

handlers["POST faults"] = function(router)
  local b = body()
  if not b then return bad("fault must be a JSON object") end
  if b.op ~= nil then -- a fault for an operation that does not exist would never fire
    local known = {}
    for _, r in ipairs(router.routes()) do known[r.op] = true end
    if not known[b.op] then
      return bad(("unknown operation %s: GET /__emulator/routes lists them (in Lua, "
        .. "client.machines.operations.<method> names a method's)"):format(util.json_encode(b.op)))
    end
  end
  local n, err = faults.add(b)
  if not n then return bad(err) end
  return 200, { ok = true, faults = n }
end

handlers["DELETE faults"] = function()
  faults.clear()
  return 200, { ok = true }
end

handlers["POST machine_state"] = function()
  local b = body()
  if not b or type(b.id) ~= "string" or type(b.state) ~= "string" then
    return bad("body must be {id=…, state=…}")
  end
  if not require("emu.machines").force_state(b.id, b.state) then
    return 404, { error = "machine not found", status = "unknown" }
  end
  return 200, { ok = true }
end

handlers["GET health"] = function()
  return 200, { ok = true }
end

function control.handle(method, segs, router)
  if #segs ~= 2 then return 404, { error = "unknown control endpoint", status = "unknown" } end
  if segs[2] == "routes" and method == "GET" then
    return 200, util.array(router.routes())
  end
  local h = handlers[method .. " " .. segs[2]]
  if not h then return 404, { error = "unknown control endpoint", status = "unknown" } end
  return h(router)
end

return control

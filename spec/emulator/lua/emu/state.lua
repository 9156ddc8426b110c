-- emu.state: the emulator's one mutable database (nginx runs a single worker, so a module
-- table is the whole database) and its configuration.
--
--   state.table(name)   the named sub-table, created on first use. The same table object is
--                       returned for the life of the process: reset() empties it in place, so
--                       modules may keep `local apps = state.table("apps")` at load time.
--   state.reset()       empties every named table and resets state.config to its defaults.
--   state.generation    how many resets so far: a request that slept across one (a `delay`
--                       fault) belongs to a spec that is over
--   state.config        configuration (also reset in place):
--       token                  the accepted API token (default: the one given to `run`)
--       delays                 { transition = 0.05, start =, stop =, suspend =, restart =,
--                                update =, destroy =, create = } seconds per lifecycle step;
--                                a specific kind overrides `transition`; 0 = immediate
--       rate_limits            { enabled = false, scale = 1, retry_after = false }
--       wait_max               cap in seconds on how long one wait request really blocks (60)
--       wait_404_after_create  wait answers 404 this many seconds after create (0)
--       wait_poll              wait poll step in seconds (0.02)
--       lease_ttl              default lease TTL in seconds (30)
--       strict_macaroon_scheme macaroon tokens (fm1r_/fm1a_/fm2_) must use FlyV1 (true)
--   state.merge_config(t)  deep-merges a table into state.config
--   state.set_default_token(t)  sets the token that reset() restores
--
-- Tables used by the machines/apps side (other modules may read them):
--   apps[name]      = { id, name, org_slug, org_name, network, created_at, seq, internal_numeric_id }
--   machines[id]    = machine record (see emu/machines.lua), field app_name
--   Names starting with "__" are the emulator's own bookkeeping (stats, faults, buckets).
local state = {}

local tables = {}
local default_token = "emulator-token"

local function defaults()
  return {
    token = default_token,
    delays = { transition = 0.05 },
    rate_limits = { enabled = false, scale = 1, retry_after = false },
    wait_max = 60,
    wait_404_after_create = 0,
    wait_poll = 0.02,
    lease_ttl = 30,
    strict_macaroon_scheme = true,
  }
end

state.config = defaults()

function state.table(name)
  local t = tables[name]
  if not t then
    t = {}
    tables[name] = t
  end
  return t
end

local function clear(t)
  for k in pairs(t) do t[k] = nil end
end

local function merge(dst, src)
  for k, v in pairs(src) do
    if type(v) == "table" and type(dst[k]) == "table" and next(v) ~= nil and #v == 0 then
      merge(dst[k], v)
    else
      dst[k] = v
    end
  end
end

function state.merge_config(t)
  merge(state.config, t)
end

function state.set_default_token(token)
  default_token = token
  state.config.token = token
end

state.generation = 0

function state.reset()
  state.generation = state.generation + 1
  for _, t in pairs(tables) do clear(t) end
  clear(state.config)
  merge(state.config, defaults())
end

return state

-- emu.ratelimit: Fly's documented per-action rate limits as token buckets, off unless
-- config.rate_limits.enabled.
--   bucket key: (operationId, machine_id | app_name | org_slug | postgres_cluster_id | "")
--               except Apps_delete, which is one global bucket
--   Machines_show: 5/s burst 10;  Apps_delete: 100 per 60 s burst 100;  others: 1/s burst 3
--   config.rate_limits.scale multiplies every rate (bursts unchanged).
-- ratelimit.take(op, params) -> true, or false, seconds until a token is available.
local state = require "emu.state"
local util = require "emu.util"

local ratelimit = {}

local RATES = {
  Machines_show = { rate = 5, burst = 10 },
  Apps_delete = { rate = 100 / 60, burst = 100 },
}
local DEFAULT = { rate = 1, burst = 3 }

local function key_of(op, p)
  if op == "Apps_delete" then return "" end
  return p.machine_id or p.app_name or p.org_slug or p.postgres_cluster_id or ""
end

function ratelimit.take(op, params)
  local cfg = state.config.rate_limits or {}
  if not cfg.enabled then return true end
  local spec = RATES[op] or DEFAULT
  local rate = spec.rate * (tonumber(cfg.scale) or 1)
  local buckets = state.table("__buckets")
  local k = op .. "\0" .. key_of(op, params or {})
  local now = util.now()
  local b = buckets[k]
  if not b then
    b = { tokens = spec.burst, t = now }
    buckets[k] = b
  end
  b.tokens = math.min(spec.burst, b.tokens + (now - b.t) * rate)
  b.t = now
  if b.tokens >= 1 then
    b.tokens = b.tokens - 1
    return true
  end
  return false, (1 - b.tokens) / rate
end

return ratelimit

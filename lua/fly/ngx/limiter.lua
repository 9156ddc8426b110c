--- Rate-limit buckets shared by every nginx worker through `lua_shared_dict fly_limits`
-- (the dict's name is part of the API). `require "fly.ngx.limiter"`.
--
-- The semantics are those of the core's buckets (csrc/ratelimit.c): a bucket of `burst`
-- tokens refilled at `rate` per second, created full; every request takes one token at once
-- and gets the time it may be sent ("ready at"), later than now when it has to wait for the
-- refill; a 429 empties the bucket. Each bucket is stored as one number, the time at which it
-- will be full again (TAT, the "theoretical arrival time" of GCRA):
--
--   tokens(now) = burst - rate * max(0, TAT - now)
--   reserve:  ready at = max(now, TAT + 1/rate - burst/rate + margin);  TAT := max(TAT, now) + 1/rate
--   penalize: TAT := max(TAT, now + burst/rate)         (tokens := min(tokens, 0))
--
-- which is the core's arithmetic rewritten (tokens' = tokens(now) - 1 and ready = now +
-- -tokens'/rate give the same ready time). A request goes `margin` after the moment its
-- bucket came to hold its token, TAT (before the reservation) + 1/rate - burst/rate, or at
-- once when that is past. A key expires a second after its bucket is full again, and a
-- missing key is a bucket full for longer than that: idle keys go away on their own.
--
-- Admission must be atomic across workers, and a shared dict has get/set/add/incr but no
-- compare-and-set. `incr` alone cannot do it: `max(TAT, now)` is not an addition (an idle
-- bucket's TAT lies in the past and must be raised to now, and concurrent raises computed from
-- stale reads over-correct). So each admission takes a lock: `add` of a lock key, which only
-- one worker can win; the lock key expires after `lock_expiry` seconds (default 1), so a
-- worker that dies holding it delays the others, never blocks them. The critical section is
-- one `get` and one `set`, with no yield in between.
--
-- Without the dict every worker keeps its own buckets (N workers may then send N times the
-- limit), and one warning goes to the error log.
local M = {}

local ngx = rawget(_G, "ngx")
local max, huge = math.max, math.huge

-- The longest margin a client may give (rate_limit.margin), in seconds.
local MARGIN_MAX = 1

-- Seconds a bucket's key outlives the time its bucket is full again: until a missing key (a
-- bucket full for long) would give every later request the same time, as the core drops its
-- buckets and the Redis script lets its keys expire. A request taking the oldest token of a
-- full bucket keeps its margin from when that token came, `burst - 1` intervals before the
-- bucket filled: nothing for every published limit, up to MARGIN_MAX for a burst of 1.
local function keep(rate, burst)
  return max(0, MARGIN_MAX - (burst - 1) / rate)
end

--- The shared dict's name.
M.DICT = "fly_limits"

local Limiter = {}
Limiter.__index = Limiter

local warned = false
local full_warned = false -- said once per worker: the dict ran out of room
local worker_buckets -- without the dict: this worker's buckets, shared by its limiters

-- Per-worker buckets (no shared dict): TAT by key, and when each may go (TAT plus its keep),
-- with the core's sweep of buckets that may go.
local Local = {}
Local.__index = Local

local SWEEP_ABOVE = 512

function Local:get(key) return self.tat[key] end

-- Stores the bucket's TAT, kept `ttl` seconds from `now` (a missing key is a bucket full for
-- long); buckets past their time are dropped once there are many.
function Local:set(key, tat, ttl, now)
  local t, drop = self.tat, self.drop
  if not t[key] then
    if self.count >= SWEEP_ABOVE then
      for k, at in pairs(drop) do
        if at <= now then
          t[k], drop[k] = nil, nil
          self.count = self.count - 1
        end
      end
    end
    self.count = self.count + 1
  end
  t[key], drop[key] = tat, now + ttl
end

local function clock()
  ngx.update_time()
  return ngx.now()
end

--- Makes a limiter on the shared dict `fly_limits` (or `opts.dict`), or on per-worker buckets
-- when nginx has no such dict (with one warning in the error log).
-- @tparam[opt] table opts `dict` (name), `lock_expiry` (seconds), `now` (a clock in seconds)
-- @treturn table the limiter
function M.new(opts)
  opts = opts or {}
  local name = opts.dict or M.DICT
  local shared = ngx and ngx.shared and ngx.shared[name]
  local self = setmetatable({ now = opts.now or clock, lock_expiry = opts.lock_expiry or 1, name = name }, Limiter)
  if shared then
    self.dict = shared
  else
    worker_buckets = worker_buckets or setmetatable({ tat = {}, drop = {}, count = 0 }, Local)
    self.dict = worker_buckets
    if not warned and ngx and ngx.log then
      warned = true
      ngx.log(ngx.WARN, "fly: no lua_shared_dict ", name, ": each nginx worker paces API calls on its own, ",
        "so the workers together may exceed Fly's rate limits; add `lua_shared_dict ", name, " 1m;` to http {}")
    end
  end
  return self
end

--- Whether the buckets are shared by every worker.
function Limiter:shared() return getmetatable(self.dict) ~= Local end

-- Runs f(tat or nil, now) -> new tat under the bucket's lock (nil: no key, a bucket full for
-- long), for a bucket of `rate` and `burst`; returns f's second result. A new tat of nil
-- leaves the bucket as it was.
function Limiter:_update(key, rate, burst, f)
  local dict = self.dict
  if getmetatable(dict) == Local then
    local now = self.now()
    local tat, result = f(dict:get(key), now)
    if tat then dict:set(key, tat, max(tat - now, 0) + keep(rate, burst), now) end
    return result
  end
  local lock = key .. "|lock"
  local spins = 0
  while true do
    local ok, err = dict:add(lock, true, self.lock_expiry)
    if ok then break end
    if err ~= "exists" then return nil, "fly: cannot lock the rate-limit bucket: " .. tostring(err) end
    spins = spins + 1
    -- the holder runs a get and a set; yield to the event loop only when it takes longer
    if spins % 16 == 0 then ngx.sleep(0.001) end
  end
  local now = self.now()
  local tat, result = f(dict:get(key), now)
  if not tat then
    dict:delete(lock)
    return result
  end
  -- kept past the time the bucket is full again (TAT) while a request may still need to see
  -- when its token came (keep); never 0, which would mean for ever (a refund may leave the
  -- bucket full now)
  local ok, err, forcible = dict:set(key, tat, max(max(tat - now, 0) + keep(rate, burst), 0.001))
  dict:delete(lock)
  if not ok then return nil, "fly: cannot store the rate-limit bucket: " .. tostring(err) end
  if forcible and not full_warned and ngx.log then
    -- nginx made room by dropping the least recently used keys: buckets still refilling among
    -- them start over full, and their next requests may draw 429s
    full_warned = true
    ngx.log(ngx.WARN, "fly: lua_shared_dict ", self.name, " is full: nginx dropped rate-limit buckets ",
      "to make room; make it larger (1m holds about 4,000 buckets)")
  end
  return result
end

--- Takes one token from the bucket `key` (created full) and returns how long the request
-- must wait before it is sent: until `margin` seconds after its token came, 0 when that is
-- past (so 0 when a token was there, without a margin). The reservation is made at once, so
-- requests queued behind it wait longer.
-- @tparam string key the bucket (the core's "identity|action|scope")
-- @tparam number rate tokens per second
-- @tparam number burst bucket size
-- @tparam[opt=0] number margin seconds a request keeps from the moment its token came
-- @tparam[opt] number max_wait the request can go in time only if it waits less: one that
-- would wait longer takes no token (the wait returned says how long it would have been)
-- @treturn number seconds to wait (or nil, message when the dict fails)
function Limiter:reserve(key, rate, burst, margin, max_wait)
  return self:_update(key, rate, burst, function(prev, now)
    local interval = 1 / rate
    -- when the bucket came to hold the token taken (long ago when full for long), as the core's
    -- buckets and the Redis script have it
    local at = prev and prev + interval - burst * interval or -huge
    local wait = max(0, at + (margin or 0) - now)
    if max_wait and wait >= max_wait then return nil, wait end -- too late: no token
    return max(prev or now, now) + interval, wait
  end)
end

--- Gives back the token a reservation took for a request that never went out (cancelled while
-- it waited, past its deadline, or its connection could not be made): the bucket moves one
-- interval back, never past full. The requests after it keep their waits; the next
-- reservation may use the token.
function Limiter:refund(key, rate, burst)
  return self:_update(key, rate, burst, function(tat, now)
    if not tat or tat <= now then return nil, true end -- full already
    return max(tat - 1 / rate, now), true
  end)
end

--- The server answered 429 for `key`: empty the bucket, so the next reservation waits for a
-- refill.
function Limiter:penalize(key, rate, burst)
  return self:_update(key, rate, burst, function(tat, now)
    return max(tat or now, now + burst / rate), true
  end)
end

return M

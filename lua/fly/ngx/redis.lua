--- Rate-limit buckets shared through Redis by every nginx worker on every host, and by every
-- plain Lua process whose client has `rate_limit.redis` set to the same Redis.
-- `require "fly.ngx.redis"`.
--
-- The interface of `fly.ngx.limiter` (`reserve`, `penalize`), on nginx cosockets with
-- lua-resty-redis (Debian's lua-nginx-redis, `require "nginx.redis"`), running the core's
-- script (csrc/redis.c: the same text, so the same SHA-1 for `EVALSHA`) on the same key names:
-- the core's bucket key "owner|action|scope" is stored as "fly:rl:owner:action:scope". One
-- round trip per admission, over the cosocket pool's kept-alive connections; `NOSCRIPT` (a
-- restarted or flushed Redis) is answered by sending the whole script once.
--
-- Redis away, slow or wrong never fails an admission: after `timeout` seconds (default 0.1)
-- the limiter uses its fallback (`fly.ngx.limiter` on the `fly_limits` shared dict, or the
-- `fallback` given), says so once in the error log, and tries Redis again after `retry`
-- seconds (default 5), saying so again when it is back. The fallback counts every request
-- all along, so that it goes on from where this host stood, but while Redis answers only
-- Redis's answer is used: admissions run concurrently on several connections, so Redis and the
-- fallback see them in different orders, and the later of two answers given in different
-- orders could bunch requests past the limit.
local M = {}

local ngx = rawget(_G, "ngx")
local max = math.max

--- The reservation, atomic on the server: byte for byte csrc/redis.c's SCRIPT.
M.SCRIPT = table.concat {
  "if redis.replicate_commands then pcall(redis.replicate_commands) end\n",
  "local t = redis.call('TIME')\n",
  "local now = tonumber(t[1]) * 1000000 + tonumber(t[2])\n",
  "local interval = tonumber(ARGV[1])\n",
  "local burst = tonumber(ARGV[2])\n",
  "if not interval or not burst or interval <= 0 or burst < 1 then\n",
  "  return redis.error_reply('fly: bad limit')\n",
  "end\n",
  "local prev = tonumber(redis.call('GET', KEYS[1]))\n",
  "local keep = 1000000 - (burst - 1) * interval\n",
  "if keep < 0 then keep = 0 end\n",
  "if ARGV[3] == '2' then\n",
  "  if prev and prev > now then\n",
  "    local tat = prev - interval\n",
  "    if tat < now then tat = now end\n",
  "    redis.call('SET', KEYS[1], string.format('%.0f', tat), 'PX', math.ceil((tat - now + keep) / 1000) + 1)\n",
  "  end\n",
  "  return 0\n",
  "end\n",
  "local penalized = false\n",
  "if ARGV[3] == '1' and (prev or 0) < now + burst * interval then\n",
  "  prev, penalized = now + burst * interval, true\n",
  "end\n",
  "local delay = -1e12\n",
  "if prev then delay = prev + interval - burst * interval - now end\n",
  "local latest = tonumber(ARGV[4])\n",
  "local tat\n",
  "if latest and delay >= latest then\n",
  "  if not penalized then return math.floor(delay) end\n",
  "  tat = prev\n",
  "else\n",
  "  tat = prev or now\n",
  "  if tat < now then tat = now end\n",
  "  tat = tat + interval\n",
  "end\n",
  "redis.call('SET', KEYS[1], string.format('%.0f', tat), 'PX', math.ceil((tat - now + keep) / 1000))\n",
  "return math.floor(delay)\n",
}

local sha
--- The script's SHA-1 in hex, as `EVALSHA` wants it.
function M.sha()
  if not sha then
    local bin = ngx.sha1_bin(M.SCRIPT)
    sha = (bin:gsub(".", function(c) return ("%02x"):format(c:byte()) end))
  end
  return sha
end

local function decode(s, what)
  if s:find("%%[^%x]") or s:find("%%%x[^%x]") or s:find("%%%x?$") then
    error("fly.ngx.redis: redis URL: " .. what .. " is badly percent-encoded", 4)
  end
  return (s:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
end

local function bad(msg) error("fly.ngx.redis: redis URL: " .. msg, 4) end

local function number(s, lo, hi, msg)
  local v = s:match("^%d+$") and #s <= 9 and tonumber(s)
  if not v or v < lo or v > hi then bad(msg) end
  return v
end

-- The URL's parts, as csrc/redis.c reads them: redis://[[user]:password@]host[:port][/db] or
-- unix:///path.sock[?db=N][&password=P]. Raises (a programmer error) when it does not parse;
-- the message never shows the password.
local function parse(url)
  local c = { db = 0 }
  local rest = url:match("^redis://(.*)$")
  if rest then
    local hostpart, db = rest:match("^([^/]*)/?(.*)$")
    local auth, hp = hostpart:match("^(.*)@([^@]*)$")
    if auth then
      local user, password = auth:match("^([^:]*):(.*)$")
      if not user then bad("the credentials need the form [user]:password@") end
      c.user = user ~= "" and decode(user, "the user name") or nil
      c.password = decode(password, "the password")
      hostpart = hp
    end
    local host, port = hostpart:match("^%[([^%]]+)%]:?(.*)$")
    if not host then
      if hostpart:find("^%[") then bad("bad [IPv6] host") end
      host, port = hostpart:match("^([^:]*):?(.*)$")
    end
    if host == "" then bad("the host is missing") end
    c.host = host
    c.port = port ~= "" and number(port, 1, 65535, "the port must be a number from 1 to 65535") or 6379
    if hostpart:find(":$") then bad("the port must be a number from 1 to 65535") end
    if db ~= "" then c.db = number(db, 0, 100000, "the database after '/' must be a number") end
    c.shown = host:find(":") and ("redis://[%s]:%d/%d"):format(host, c.port, c.db)
      or ("redis://%s:%d/%d"):format(host, c.port, c.db)
    return c
  end
  rest = url:match("^unix://(.*)$")
  if not rest then bad("expected redis://[[user]:password@]host[:port][/db] or unix:///path.sock[?db=N]") end
  local path, query = rest:match("^([^?]*)%??(.*)$")
  if not path:find("^/.") then bad("the socket path must be absolute") end
  c.path = path
  for pair in query:gmatch("[^&]+") do
    local k, v = pair:match("^([^=]*)=(.*)$")
    if not k then bad("query parameters need the form name=value") end
    if k == "db" then
      c.db = number(v, 0, 100000, "db must be a number")
    elseif k == "password" then
      c.password = decode(v, "the password")
    else
      bad("unknown query parameter (db and password are known)")
    end
  end
  c.shown = ("unix://%s?db=%d"):format(path, c.db)
  return c
end

local Limiter = {}
Limiter.__index = Limiter

-- Per worker, per Redis: whether it is marked down and until when (shared by the limiters on
-- the same URL, as each worker has one connection pool).
local health = {}

local function clock()
  ngx.update_time()
  return ngx.now()
end

--- Makes a limiter on the Redis at `opts.url`.
-- @tparam table opts `url` (required; the forms of `rate_limit.redis`), `timeout` (seconds an
-- admission may take, default 0.1), `retry` (seconds between attempts while Redis is away,
-- default 5), `pool_size` (kept-alive connections per worker, default 16), `fallback` (a
-- limiter with `reserve` and `penalize`; default `fly.ngx.limiter.new(opts)`)
-- @treturn table the limiter
-- @raise when the URL does not parse or an option has the wrong type
function M.new(opts)
  if type(opts) ~= "table" or type(opts.url) ~= "string" then
    error("fly.ngx.redis.new: opts.url (a redis:// or unix:// URL) is required", 2)
  end
  for _, k in ipairs { "timeout", "retry", "pool_size" } do
    if opts[k] ~= nil and (type(opts[k]) ~= "number" or opts[k] ~= opts[k] or opts[k] <= 0) then
      error(("fly.ngx.redis.new: opts.%s must be a number > 0"):format(k), 2)
    end
  end
  local c = parse(opts.url)
  local self = setmetatable({
    conn = c, timeout = opts.timeout or 0.1, retry = opts.retry or 5, pool_size = opts.pool_size or 16,
    fallback = opts.fallback or require("fly.ngx.limiter").new(opts), now = opts.now or clock,
    retries = {}, -- key -> when its retry may go, from penalize's round trip
  }, Limiter)
  self.health = health[c.shown .. (c.password or "")]
  if not self.health then
    self.health = { down = false, retry_at = 0 }
    health[c.shown .. (c.password or "")] = self.health
  end
  return self
end

local function warn(self, available, why)
  if not ngx.log then return end
  if available then
    ngx.log(ngx.WARN, "fly: the shared rate limiter at ", self.conn.shown, " is available again")
  else
    ngx.log(ngx.WARN, "fly: the shared rate limiter at ", self.conn.shown, " is unavailable (", why,
      "): using local rate limits, retrying every ", self.retry, " s")
  end
end

-- A connection from the pool, authenticated and on its database; nil, err.
function Limiter:_connect()
  local redis = require "nginx.redis"
  local c = self.conn
  local red, err = redis:new()
  if not red then return nil, err end
  red:set_timeout(self.timeout * 1000)
  local pool = { pool = "fly-redis:" .. c.shown .. ":" .. (c.user or "") }
  local ok
  if c.path then ok, err = red:connect("unix:" .. c.path, pool)
  else ok, err = red:connect(c.host, c.port, pool) end
  if not ok then return nil, err end
  if (red:get_reused_times() or 0) == 0 then
    if c.password then
      if c.user then ok, err = red:auth(c.user, c.password) else ok, err = red:auth(c.password) end
      if not ok then
        red:close()
        return nil, "AUTH: " .. tostring(err)
      end
    end
    if c.db ~= 0 then
      ok, err = red:select(c.db)
      if not ok then
        red:close()
        return nil, "SELECT: " .. tostring(err)
      end
    end
  end
  return red
end

-- The script's ARGV[4] for a latest delay of `latest` seconds: whole microseconds, rounded up,
-- so that a delay the script refuses is never one the caller would let go.
local function latest_us(latest)
  return math.ceil(max(latest, -1e12) * 1e6)
end

-- One admission through Redis: the delay in seconds to when the bucket held the token taken
-- (negative when that is past), or nil, why. `latest` (seconds, optional): the latest delay
-- that is in time; a later one takes no token.
function Limiter:_admit(key, rate, burst, penalize, latest)
  local red, err = self:_connect()
  if not red then return nil, err end
  local interval, b = ("%.6f"):format(1e6 / rate), ("%.6f"):format(burst)
  local l = latest and ("%.0f"):format(latest_us(latest)) or nil
  local res
  res, err = red:evalsha(M.sha(), 1, key, interval, b, penalize, l)
  if res == nil and err == "closed" and (red:get_reused_times() or 0) > 0 then
    -- a kept-alive connection Redis closed (a restart) before the command reached it: once
    -- more on a new one
    red, err = self:_connect()
    if not red then return nil, err end
    res, err = red:evalsha(M.sha(), 1, key, interval, b, penalize, l)
  end
  if not res and type(err) == "string" and err:find("^NOSCRIPT") then
    -- the script cache was flushed: send it whole, which loads it; the reservation did not happen
    res, err = red:eval(M.SCRIPT, 1, key, interval, b, penalize, l)
  end
  if type(res) ~= "number" then
    red:close()
    return nil, (res == nil or res == false) and ("EVALSHA: " .. tostring(err)) or "EVALSHA: unexpected answer"
  end
  red:set_keepalive(10000, self.pool_size)
  return res / 1e6
end

-- Redis's key for the core's bucket key "owner|action|scope".
local function shared_key(key)
  local owner, action, scope = key:match("^([^|]*)|([^|]*)|(.*)$")
  if not owner then return "fly:rl:" .. key end
  return ("fly:rl:%s:%s:%s"):format(owner, action, scope)
end

-- The delay Redis gives, or nil when Redis is (or just went) away.
function Limiter:_shared(key, rate, burst, penalize, latest)
  local h = self.health
  if h.down and self.now() < h.retry_at then return nil end
  local wait, err = self:_admit(shared_key(key), rate, burst, penalize, latest)
  if not wait then
    if not h.down then warn(self, false, err) end
    h.down, h.retry_at = true, self.now() + self.retry
    return nil
  end
  if h.down then
    h.down = false
    warn(self, true)
  end
  return wait
end

--- Takes one token from the bucket `key` (created full) in Redis, or in the fallback while
-- Redis is away, and returns how long the request must wait before it is sent: until
-- `margin` seconds after its token came, 0 when that is past. The fallback takes a token for
-- every request, also while Redis answers (its answer is then not used), so that when Redis
-- is lost pacing goes on from where this host stood, as the core's local buckets do.
-- @tparam string key the bucket (the core's "owner|action|scope")
-- @tparam number rate tokens per second
-- @tparam number burst bucket size
-- @tparam[opt=0] number margin seconds a request keeps from the moment its token came
-- @tparam[opt] number max_wait the request can go in time only if it waits less: one that
-- would wait longer takes no token (the wait returned says how long it would have been)
-- @treturn number seconds to wait (or nil, message when Redis is away and the fallback fails)
function Limiter:reserve(key, rate, burst, margin, max_wait)
  local here, err = self.fallback:reserve(key, rate, burst, margin, max_wait)
  local shared
  local retry_at = self.retries[key]
  if retry_at then -- the retry after a 429: penalize took its token in Redis already
    self.retries[key] = nil
    shared = retry_at - self.now()
  else
    shared = self:_shared(key, rate, burst, "0", max_wait and max_wait - (margin or 0))
  end
  if shared then return max(0, shared + (margin or 0)) end
  return here, err
end

--- The server answered 429 for `key`: empty the bucket in Redis and in the fallback, so the
-- next reservation waits for a refill. Redis empties the bucket and takes the retry's token in
-- one round trip: the next `reserve` of this key is that retry's, and costs no round trip.
-- Given `max_wait` (with the retry's `margin`), a retry that cannot go in time takes no token:
-- the bucket is emptied all the same, and the next `reserve` asks Redis again.
function Limiter:penalize(key, rate, burst, margin, max_wait)
  local ok, err = self.fallback:penalize(key, rate, burst)
  local latest = max_wait and max_wait - (margin or 0)
  local shared = self:_shared(key, rate, burst, "1", latest)
  if not shared then return ok, err end
  -- the script refused the token when its delay (whole µs) reached the latest it was given
  if not (latest and shared >= latest_us(latest) / 1e6) then
    self.retries[key] = self.now() + shared
  end
  return true
end

--- Gives back the token a reservation took for a request that never went out (cancelled while
-- it waited, past its deadline, or its connection could not be made): in Redis and in the
-- fallback. The requests after it keep their waits; the next reservation may use the token.
function Limiter:refund(key, rate, burst)
  self.fallback:refund(key, rate, burst)
  self:_shared(key, rate, burst, "2")
end

--- Whether the limiter is on Redis now (false while it is marked away).
function Limiter:shared() return not self.health.down end

return M

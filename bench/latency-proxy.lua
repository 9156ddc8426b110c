--- A TCP proxy on loopback that adds a round trip: every byte is delivered RTT/2 later in each
-- direction, and a new connection's first byte from the client reaches the server no sooner
-- than one RTT after the accept (the TCP handshake a real network costs). No bandwidth shaping.
--
--   lua5.4 bench/latency-proxy.lua --target 127.0.0.1:PORT [--rtt MS] [--port N] [--stats FILE]
--
-- Prints `listening 127.0.0.1:PORT` once ready (port 0 = any free port). With --stats, FILE
-- holds `connections N` (connections accepted so far) and `bytes UP DOWN`, rewritten on
-- every accept and every close. Runs until killed. Built on lua-luv (libuv).
local uv = require "luv"

local opts = { rtt = 50, port = 0 }
local i = 1
while i <= #arg do
  local k, v = arg[i], arg[i + 1]
  if k == "--target" then opts.target = v
  elseif k == "--rtt" then opts.rtt = tonumber(v)
  elseif k == "--port" then opts.port = tonumber(v)
  elseif k == "--stats" then opts.stats = v
  else error("latency-proxy: unknown argument " .. tostring(k)) end
  i = i + 2
end
local thost, tport = (opts.target or ""):match("^([%d%.]+):(%d+)$")
assert(thost, "latency-proxy: --target HOST:PORT (an IPv4 address) is required")
assert(thost:find("^127%."), "latency-proxy: the target must be on loopback")
assert(opts.rtt and opts.rtt >= 0, "latency-proxy: --rtt must be a number of milliseconds")
local half = opts.rtt / 2

local counts = { connections = 0, up = 0, down = 0 }

local function write_stats()
  if not opts.stats then return end
  local tmp = opts.stats .. ".tmp"
  local f = assert(io.open(tmp, "w"))
  f:write(("connections %d\nbytes %d %d\n"):format(counts.connections, counts.up, counts.down))
  f:close()
  assert(os.rename(tmp, opts.stats))
end

-- Milliseconds, to the nanosecond: uv.now() counts whole milliseconds, which would let a chunk
-- go up to 1 ms before its due time in each direction.
local function now()
  return uv.hrtime() / 1e6
end

-- One direction: chunks read from `from` are written to `to` at their due time (FIFO: with a
-- constant delay, due times never decrease). EOF (nil chunk) is delivered as a shutdown.
local function pipe(pair, from, to, counter, first_due)
  local queue, head, tail = {}, 1, 0
  local timer = uv.new_timer()
  pair.timers[#pair.timers + 1] = timer
  local flush
  local function arm()
    if head > tail then return end
    local wait = queue[head].due - now()
    timer:start(wait > 0 and math.ceil(wait) or 0, 0, flush)
  end
  flush = function()
    local t = now()
    while head <= tail and queue[head].due <= t do
      local item = queue[head]
      queue[head] = nil
      head = head + 1
      if pair.closed then return end
      if item.data then
        to:write(item.data)
      else
        to:shutdown(function() pair.ends = pair.ends + 1; if pair.ends == 2 then pair.close() end end)
      end
    end
    arm()
  end
  local function push(data)
    tail = tail + 1
    local due = now() + half
    if first_due and due < first_due then due = first_due end
    queue[tail] = { due = due, data = data }
    if head == tail then arm() end
  end
  from:read_start(function(err, data)
    if err or not data then
      from:read_stop()
      push(nil)
    else
      counts[counter] = counts[counter] + #data
      push(data)
    end
  end)
end

local server = uv.new_tcp()
assert(server:bind("127.0.0.1", opts.port))
assert(server:listen(1024, function(err)
  assert(not err, err)
  local client = uv.new_tcp()
  server:accept(client)
  client:nodelay(true)
  counts.connections = counts.connections + 1
  write_stats()
  local accepted = now()
  local upstream = uv.new_tcp()
  upstream:nodelay(true)
  local pair = { timers = {}, ends = 0, closed = false }
  function pair.close()
    if pair.closed then return end
    pair.closed = true
    for _, t in ipairs(pair.timers) do t:close() end
    if not client:is_closing() then client:close() end
    if not upstream:is_closing() then upstream:close() end
    write_stats()
  end
  upstream:connect(thost, tonumber(tport), function(cerr)
    if cerr then return pair.close() end
    pipe(pair, client, upstream, "up", accepted + opts.rtt + half)
    pipe(pair, upstream, client, "down")
  end)
end))

local addr = server:getsockname()
io.stdout:write(("listening 127.0.0.1:%d\n"):format(addr.port))
io.stdout:flush()
write_stats()
uv.run()

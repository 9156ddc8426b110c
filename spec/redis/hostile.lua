--- A server that speaks Redis's protocol, badly, for the shared limiter's specs.
--
--   lua5.4 spec/redis/hostile.lua MODE
--
-- Listens on 127.0.0.1 on a free port, prints "<port> <pid>" on its first line, then serves
-- until killed (by that pid), one connection at a time. It answers AUTH and SELECT with +OK
-- and SCRIPT LOAD with the script's SHA-1, as Redis does, and every other command (the
-- limiter's EVALSHA and EVAL) as MODE says:
--   double     two answers (:0) to each
--   huge       :9000000000000000000 (a delay of 285,000 years, in microseconds)
--   endless    a bulk string announced as 2 GB, then its bytes, 64 KB at a time, until the
--              client goes
--   silent     nothing
--   greeting   :0 as it is served, before any command (then as Redis)
-- and `auth-echo` answers AUTH with an error that quotes its arguments, as a server without
-- AUTH does ("ERR unknown command 'AUTH', with args beginning with: '<password>'").
local socket = require "socket"

local mode = assert(arg[1], "usage: hostile.lua MODE")

-- SHA-1 of a string (SCRIPT LOAD's answer), with sha1sum(1): the client checks it.
local function sha1(s)
  local name = os.tmpname()
  local f = assert(io.open(name, "wb"))
  f:write(s)
  f:close()
  local p = assert(io.popen("sha1sum " .. name))
  local hex = p:read("*l"):match("^(%x+)")
  p:close()
  os.remove(name)
  return hex
end

-- Reads one command (an array of bulk strings); nil when the client has gone.
local function command(c)
  local head = c:receive("*l")
  if not head then return nil end
  local n = assert(tonumber(head:match("^%*(%d+)$")), "not a command: " .. head)
  local args = {}
  for i = 1, n do
    local len = tonumber((c:receive("*l") or ""):match("^%$(%d+)$"))
    if not len then return nil end
    args[i] = c:receive(len)
    if not args[i] or not c:receive("*l") then return nil end
  end
  return args
end

local function serve(c)
  if mode == "greeting" then c:send((":0\r\n"):rep(10)) end
  while true do
    local args = command(c)
    if not args then return end
    local name = args[1]:upper()
    if name == "AUTH" and mode == "auth-echo" then
      c:send(("-ERR unknown command 'AUTH', with args beginning with: '%s' \r\n"):format(args[#args]))
    elseif name == "AUTH" or name == "SELECT" then
      c:send("+OK\r\n")
    elseif name == "SCRIPT" then
      local sha = sha1(args[3])
      c:send(("$%d\r\n%s\r\n"):format(#sha, sha))
    elseif mode == "double" then
      c:send(":0\r\n:0\r\n")
    elseif mode == "huge" then
      c:send(":9000000000000000000\r\n")
    elseif mode == "endless" then
      c:send("$2000000000\r\n")
      local block = ("x"):rep(64 * 1024)
      while c:send(block) do end
      return
    elseif mode ~= "silent" then
      c:send(":0\r\n")
    end
  end
end

local server = assert(socket.bind("127.0.0.1", 0))
local _, port = server:getsockname()
local pid = io.open("/proc/self/stat"):read("*n")
io.stdout:write(("%d %d\n"):format(port, pid))
io.stdout:flush()

while true do
  local c = server:accept()
  if c then
    c:settimeout(30)
    pcall(serve, c)
    c:close()
  end
end

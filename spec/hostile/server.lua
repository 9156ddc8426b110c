--- A hostile HTTP server for the client's specs: every answer is one a
-- broken server, a misconfigured proxy or a bad day could give.
--
--   lua5.4 spec/hostile/server.lua [workdir]
--
-- Listens on 127.0.0.1 on a free port, prints "<port> <pid>" on its first
-- line, then serves until killed (by that pid). One connection at a time,
-- each closed after its answer. The case is the request path's last
-- segment (`client.apps:get("gzip-bomb")` asks for /v1/apps/gzip-bomb);
-- see `cases` below. The gzip bomb is made once with gzip(1) and kept in
-- workdir (default: build/hostile).
local socket = require "socket"

local workdir = arg[1] or "build/hostile"

local MB = 1024 * 1024

-- Sends s on the client socket; false once the peer has gone.
local function send(c, s)
  local i = 1
  while i <= #s do
    local last, err, partial = c:send(s, i)
    if not last then
      if err ~= "timeout" then return false end
      i = partial + 1
    else
      i = last + 1
    end
  end
  return true
end

local function head(status, headers)
  local out = { "HTTP/1.1 " .. status .. "\r\n" }
  for _, h in ipairs(headers) do out[#out + 1] = h .. "\r\n" end
  out[#out + 1] = "Connection: close\r\n\r\n"
  return table.concat(out)
end

-- A whole answer: status, content type and body.
local function answer(status, ctype, body, extra)
  local headers = { "Content-Type: " .. ctype, "Content-Length: " .. #body }
  for _, h in ipairs(extra or {}) do headers[#headers + 1] = h end
  return function(c) send(c, head(status, headers) .. body) end
end

-- `size` bytes of body made of `first`, repeats of `unit` and `last`.
local function stream(ctype, first, unit, last, size, status)
  return function(c)
    local n = (size - #first - #last) // #unit
    if not send(c, head(status or "200 OK", { "Content-Type: " .. ctype,
      "Content-Length: " .. (#first + n * #unit + #last) }) .. first) then return end
    local block = unit:rep((64 * 1024) // #unit)
    local per = #block // #unit
    while n > 0 do
      local k = math.min(n, per)
      if not send(c, k == per and block or unit:rep(k)) then return end
      n = n - k
    end
    send(c, last)
  end
end

local function bomb_file()
  local path = workdir .. "/bomb-1g.gz"
  local f = io.open(path, "rb")
  if not f then
    -- a temporary file of its own: another suite's server may be making the same file
    assert(os.execute("mkdir -p '" .. workdir .. "' && t=$(mktemp '" .. path .. ".XXXXXX') && "
      .. "head -c 1073741824 /dev/zero | gzip -9 > \"$t\" && mv \"$t\" '" .. path .. "'"))
    f = assert(io.open(path, "rb"))
  end
  local data = f:read("*a")
  f:close()
  return data
end

local ESC = "\27"

local cases = {
  -- 1 MB of gzip that inflates to 1 GB of zeros, labelled JSON
  ["gzip-bomb"] = function(c)
    local data = bomb_file()
    send(c, head("200 OK", { "Content-Type: application/json", "Content-Encoding: gzip",
      "Content-Length: " .. #data }) .. data)
  end,
  -- 100 MB of valid JSON: one long string
  ["big-body"] = stream("application/json", '{"id":"', "abcdefghijklmnop", '"}', 100 * MB),
  -- 30 MB of [{},{},…]
  ["many-objects"] = stream("application/json", "[", "{},", "{}]", 30 * MB),
  -- a status line and a length, then a close before the body ends
  ["truncated"] = function(c)
    send(c, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n" ..
      '{"id":"partial","name":')
  end,
  -- headers only, promising a body that never comes
  ["truncated-empty"] = function(c)
    send(c, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 500\r\n\r\n")
  end,
  -- a status line, then a close: no length, no body
  ["close-after-status"] = function(c)
    send(c, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n")
  end,
  -- a chunked body whose trailer line starts with HTTP/
  ["trailer-http"] = function(c)
    local body = '{"id":"intact","name":"trailer-http","organization":{"slug":"personal"}}'
    send(c, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n" ..
      "Trailer: X-Check\r\nConnection: close\r\n\r\n" ..
      ("%x\r\n%s\r\n"):format(#body, body) .. "0\r\nHTTP/1.1-Status: 200\r\nX-Check: 1\r\n\r\n")
  end,
  ["json-false"] = answer("200 OK", "application/json", "false"),
  ["json-null"] = answer("200 OK", "application/json", "null"),
  ["json-string"] = answer("200 OK", "application/json", '"just a string"'),
  ["json-as-text"] = answer("200 OK", "text/plain", '{"id":"labelled-text","name":"json-as-text"}'),
  ["html"] = answer("200 OK", "text/html", "<html><body>Welcome to nginx!</body></html>"),
  ["not-json"] = answer("200 OK", "application/json", '{"id":"x",'),
  -- a JSON media type longer than 63 characters
  ["long-content-type"] = answer("200 OK",
    "application/vnd.example.fly-machines.a-rather-long-media-type-name.v1+json",
    '{"id":"long","name":"long-content-type"}'),
  -- a text media type longer than 63 characters, on a JSON body
  ["long-text-type"] = answer("200 OK",
    "text/plain; charset=utf-8; profile=a-rather-long-parameter-that-goes-on-and-on",
    '{"id":"long","name":"long-text-type"}'),
  -- rate limited for a day
  ["retry-after-day"] = answer("429 Too Many Requests", "application/json", '{"error":"rate limited"}',
    { "Retry-After: 86399" }),
  -- rate limited for two seconds
  ["retry-after-2"] = answer("429 Too Many Requests", "application/json", '{"error":"rate limited"}',
    { "Retry-After: 2" }),
  -- rate limited until this time tomorrow, as an HTTP date
  ["retry-after-date"] = function(c)
    answer("429 Too Many Requests", "application/json", '{"error":"rate limited"}',
      { "Retry-After: " .. os.date("!%a, %d %b %Y %H:%M:%S GMT", os.time() + 86400) })(c)
  end,
  -- error text carrying terminal escape sequences and other control characters
  ["control-chars"] = answer("400 Bad Request", "application/json",
    '{"error":"bad \\u001b[31mred\\u001b[0m\\u001b]0;title\\u0007 \\r\\nforged: line\\u0000end\\u007f"}'),
  ["control-chars-text"] = answer("500 Internal Server Error", "text/plain",
    "bad " .. ESC .. "[2J" .. ESC .. "[31mred" .. ESC .. "[0m\a\r\nforged: line\0end\127"),
  -- an error whose text is 10 MB long
  ["big-error"] = stream("application/json", '{"error":"', "too long ", '"}', 10 * MB, "400 Bad Request"),
  -- a listing that never ends: empty pages, each naming a next one never given before
  -- (`orgs:each_machine` asks for /v1/orgs/<org>/machines)
  ["machines"] = (function()
    local served = 0
    return function(c)
      served = served + 1
      answer("200 OK", "application/json", ('{"machines":[],"next_cursor":"page-%d"}'):format(served))(c)
    end
  end)(),
  -- a lease granted without a nonce (`machines:with_lease` asks for …/machines/<id>/lease)
  ["lease"] = answer("200 OK", "application/json", '{"status":"success","data":{"expires_at":1759424761}}'),
  -- a plain good answer, to show the server itself works
  ["ok"] = answer("200 OK", "application/json; charset=utf-8",
    '{"id":"ok","name":"ok","organization":{"slug":"personal"}}'),
}

local server = assert(socket.bind("127.0.0.1", 0))
local _, port = server:getsockname()
local pid = io.open("/proc/self/stat"):read("*n")
io.stdout:write(("%d %d\n"):format(port, pid))
io.stdout:flush()

while true do
  local c = server:accept()
  if c then
    c:settimeout(30)
    local line = c:receive("*l")
    local path = line and line:match("^%u+ (%S+) HTTP/1%.%d$")
    local length, auth = 0, ""
    repeat
      local h = c:receive("*l")
      local n = h and h:lower():match("^content%-length:%s*(%d+)")
      if n then length = tonumber(n) end
      auth = h and h:match("^[Aa]uthorization:%s*(.-)%s*$") or auth
    until not h or h == ""
    if length > 0 then c:receive(length) end
    local name = path and path:match("([^/?]*)%f[?\0]")
    local case = cases[name]
    local text = auth:gsub('[%c"\\]', "") -- the request's own credentials, to send back
    if name == "echo-token" then -- in the error text
      answer("401 Unauthorized", "application/json", ('{"error":"bad credentials: %s"}'):format(text))(c)
    elseif name == "echo-token-escaped" or name == "echo-token-escaped-200" then
      -- JSON-escaped: `/` as `\/`, every third byte as \u00XX; in an error, or in a success
      local i = 0
      local escaped = text:gsub(".", function(ch)
        i = i + 1
        if ch == "/" then return "\\/" end
        if i % 3 == 0 then return ("\\u%04x"):format(ch:byte()) end
      end)
      if name == "echo-token-escaped" then
        answer("401 Unauthorized", "application/json", ('{"error":"bad credentials: %s"}'):format(escaped))(c)
      else
        answer("200 OK", "application/json", ('{"name":"x","token":"%s"}'):format(escaped))(c)
      end
    elseif name == "echo-token-broken" then -- in a 200 whose JSON does not parse
      answer("200 OK", "application/json", ('{"name":"x","token":"%s",'):format(text))(c)
    elseif name == "echo-token-id" then -- in the request id of a success
      answer("200 OK", "application/json", '{"name":"x"}', { "fly-request-id: " .. text })(c)
    elseif name == "echo-token-cut" then -- in an error whose connection drops inside the token
      local start = '{"error":"bad credentials: ' .. text:sub(1, 30)
      send(c, "HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/json\r\nContent-Length: " ..
        (#start + 200) .. "\r\n\r\n" .. start)
    elseif name == "echo-token-short" then -- a server that cuts the token short in its message
      local bare = text:gsub("^%S+%s+", "")
      answer("401 Unauthorized", "application/json",
        ('{"error":"invalid token %s..."}'):format(bare:sub(1, 20)))(c)
    elseif name == "echo-token-percent" then -- percent-encoded, as in a URL the server quotes
      local encoded = text:gsub("[^%w_.~-]", function(ch) return ("%%%02X"):format(ch:byte()) end)
      answer("401 Unauthorized", "application/json", ('{"error":"bad link: /x?t=%s"}'):format(encoded))(c)
    elseif name == "echo-token-id-503" then -- in the request id of a failure, longer than it is kept
      answer("503 Service Unavailable", "application/json", '{"error":"later"}',
        { "fly-request-id: " .. text:gsub("^%S+%s+", "") })(c)
    elseif case then
      case(c)
    elseif path then
      answer("404 Not Found", "application/json", '{"error":"no such case"}')(c)
    end
    c:close()
  end
end

-- fly.ngx.http: one HTTP/1.1 exchange over nginx cosockets, run inside a real nginx (two
-- workers) against a scripted server on the same nginx that controls every byte.
local harness = require "nginx.harness"

-- Lua run inside nginx before each chunk: `call(name, req, opts)` plays to the script `name`.
-- Each script's calls name a host of their own (NAME.script, connecting to 127.0.0.1), so they
-- have a connection pool of their own: a connection an earlier spec left in the worker's pool,
-- whose server is about to close it, never serves a spec that counts connections.
local PRELUDE = [[
local http = require "fly.ngx.http"
local script = require "nginx.script"
local port = tonumber(ngx.var.server_port)
local function call(name, req, opts)
  req = req or {}
  opts = opts or {}
  req.method = req.method or "GET"
  req.scheme = req.scheme or "http"
  req.host = req.host or (name .. ".script")
  opts.address = opts.address or "127.0.0.1"
  req.port = req.port or port
  req.target = req.target or ("/__script/" .. name)
  if req.safe == nil then req.safe = true end
  return http.request(req, opts)
end
]]

-- A 200 response with a Content-Length body, as a Lua string literal.
local function ok_response(body)
  return ("%q"):format("HTTP/1.1 200 OK\r\nContent-Length: " .. #body .. "\r\n\r\n" .. body)
end

describe("fly.ngx.http #nginx", function()
  local ngx_
  local function run(code) return ngx_:run(PRELUDE .. code) end

  setup(function() ngx_ = harness.start {} end)
  teardown(function() if ngx_ then ngx_:stop() end end)

  it("sends a well-formed request and reads a Content-Length response", function()
    local status, body, last, headers = run([[
      script.define("basic", { {"send", "HTTP/1.1 201 Created\r\nX-A: 1\r\nx-a: 2\r\nContent-Length: 5\r\n\r\nhello"} })
      local res = assert(call("basic", { method = "POST", body = '{"a":1}', safe = false,
        headers = { "Authorization: Bearer t", "Content-Type: application/json" } }))
      return res.status, res.body, script.last("basic"), res.headers
    ]])
    assert.equal(201, status)
    assert.equal("hello", body)
    assert.equal("1, 2", headers["x-a"])
    assert.truthy(last:find("^POST /__script/basic HTTP/1%.1\r\n"))
    assert.truthy(last:find("\r\nHost: basic%.script:%d+\r\n"))
    assert.truthy(last:find("\r\nAuthorization: Bearer t\r\n", 1, true))
    assert.truthy(last:find("\r\nContent-Length: 7\r\n", 1, true))
    assert.truthy(last:find("\r\nConnection: close\r\n", 1, true))
    assert.truthy(last:find('\r\n\r\n{"a":1}$'))
  end)

  it("parses the head: names any case, values trimmed, repeated ones joined, bad lines refused", function()
    local headers, lines, e1, e2, head = run([[
      script.define("head", { {"send", "HTTP/1.1 200 OK\r\nX-A:1\r\nx-a: \t2 \t\r\nX-Empty:\r\n"
        .. "Content-Type:  application/json ;x=1\r\nContent-Length: 2\r\n\r\nok"} })
      script.define("nameless", { {"send", "HTTP/1.1 200 OK\r\n: v\r\nContent-Length: 0\r\n\r\n"} })
      script.define("spaced", { {"send", "HTTP/1.1 200 OK\r\nBad Name: v\r\nContent-Length: 0\r\n\r\n"} })
      local res = assert(call("head"))
      local _, e1 = call("nameless")
      local _, e2 = call("spaced")
      return res.headers, res.header_lines, e1, e2, res.head
    ]])
    assert.equal("1, 2", headers["x-a"])
    assert.equal("", headers["x-empty"])
    assert.equal("application/json ;x=1", headers["content-type"])
    assert.same({ "X-A: 1", "x-a: 2", "X-Empty: ", "Content-Type: application/json ;x=1", "Content-Length: 2" },
      lines)
    assert.equal("protocol", e1.code)
    assert.equal("protocol", e2.code)
    assert.equal("HTTP/1.1 200 OK\r\nX-A:1\r\n", head:sub(1, 24))
  end)

  it("reads a response that arrives in small pieces", function()
    local status, body = run([[
      script.define("split", {
        {"send", "HTTP/1.1 2"}, {"sleep", 0.02}, {"send", "00 OK\r\nContent-Le"}, {"sleep", 0.02},
        {"send", "ngth: 5\r\n\r"}, {"sleep", 0.02}, {"send", "\nhel"}, {"sleep", 0.02}, {"send", "lo"} })
      local res = assert(call("split"))
      return res.status, res.body
    ]])
    assert.equal(200, status)
    assert.equal("hello", body)
  end)

  it("reuses a kept-alive connection for safe requests", function()
    local a, b, reused, count = run([[
      script.define("keep", { {"send", ]] .. ok_response("one") .. [[}, {"request"},
        {"send", ]] .. ok_response("two") .. [[} })
      local r1 = assert(call("keep"))
      local r2 = assert(call("keep"))
      return r1.body, r2.body, r2.reused, script.count("keep")
    ]])
    assert.equal("one", a)
    assert.equal("two", b)
    assert.equal(1, reused)
    assert.equal(2, count)
  end)

  it("reads chunked bodies: extensions, split framing, trailers that look like a status line", function()
    local body, second, count = run([[
      script.define("chunked", {
        {"send", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"},
        {"send", "5;name=value;x=\"y\"\r\nhello\r\n"}, {"sleep", 0.01},
        {"send", "A\r\n 01234567"}, {"sleep", 0.01}, {"send", "8\r"}, {"sleep", 0.01}, {"send", "\n"},
        {"send", "0\r\nX-Trailer: HTTP/1.1 500 Oops\r\nHTTP/1.1 500 Oops\r\n\r\n"},
        {"request"},
        {"send", "HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"} })
      local r1 = assert(call("chunked"))
      local r2 = assert(call("chunked"))
      return r1.body, r2.status .. " " .. r2.body, script.count("chunked")
    ]])
    assert.equal("hello 012345678", body)
    assert.equal("201 abc", second)
    assert.equal(2, count)
  end)

  it("fails with protocol on a bad chunk size and on a missing chunk CRLF", function()
    local e1, e2 = run([[
      script.define("badsize", { {"send", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"} })
      script.define("nocrlf", { {"send", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabXY0\r\n\r\n"} })
      local _, e1 = call("badsize")
      local _, e2 = call("nocrlf")
      return e1, e2
    ]])
    assert.same({ "protocol", true }, { e1.code, e1.sent })
    assert.equal("protocol", e2.code)
  end)

  it("reads a body delimited by the connection's close, and does not reuse that connection", function()
    local body, reused = run([[
      script.define("toclose", { {"send", "HTTP/1.1 200 OK\r\n\r\nuntil "}, {"sleep", 0.02}, {"send", "close"} })
      local r1 = assert(call("toclose"))
      local r2 = assert(call("toclose"))
      return r1.body, r2.reused
    ]])
    assert.equal("until close", body)
    assert.equal(0, reused)
  end)

  it("skips interim 1xx responses, also when the final one comes in the same packet", function()
    local status, body, joined = run([[
      script.define("interim", { {"send", "HTTP/1.1 100 Continue\r\n\r\n"},
        {"send", ]] .. ok_response("final") .. [[} })
      script.define("interim1", { {"send", "HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" .. ]]
        .. ok_response("joined") .. [[} })
      local r = assert(call("interim"))
      local r2 = assert(call("interim1"))
      return r.status, r.body, r2.body
    ]])
    assert.equal(200, status)
    assert.equal("final", body)
    assert.equal("joined", joined)
  end)

  it("does not reuse a connection whose response came with bytes beyond its framing", function()
    local first, second, reused = run([[
      script.define("extra", { {"send", ]] .. ok_response("one") .. [[ .. ]] .. ok_response("stale") .. [[},
        {"request"}, {"send", ]] .. ok_response("two") .. [[} })
      local r1 = assert(call("extra"))
      local r2 = assert(call("extra"))
      return r1.body, r2.body, r2.reused
    ]])
    assert.equal("one", first)
    assert.equal("one", second) -- the script again, on a new connection
    assert.equal(0, reused)
  end)

  it("takes a fresh connection when the server closed a pooled one", function()
    local body, reused = run([[
      script.define("closed", { {"send", ]] .. ok_response("first") .. [[} }) -- then closes
      assert(call("closed"))
      ngx.sleep(0.05)
      local r = assert(call("closed"))
      return r.body, r.reused
    ]])
    assert.equal("first", body)
    assert.equal(0, reused)
  end)

  it("sends a safe request once more when a pooled connection dies before answering", function()
    local body, count = run([[
      script.define("dies", { {"send", ]] .. ok_response("again") .. [[}, {"request"}, {"close"} })
      assert(call("dies"))
      local r = assert(call("dies"))
      return r.body, script.count("dies")
    ]])
    assert.equal("again", body)
    assert.equal(3, count) -- the first, the one the dying connection read, the one sent again
  end)

  it("never sends an unsafe request on a pooled connection, nor twice", function()
    local reused, count, err, count2 = run([[
      script.define("unsafe", { {"send", ]] .. ok_response("ok") .. [[}, {"request"}, {"close"} })
      assert(call("unsafe"))            -- safe: leaves a pooled connection
      local r = assert(call("unsafe", { method = "POST", safe = false }))
      local count = script.count("unsafe")
      script.define("dropped", { {"close"} })
      local _, err = call("dropped", { method = "POST", safe = false })
      return r.reused, count, err, script.count("dropped")
    ]])
    assert.equal(0, reused)
    assert.equal(2, count)
    assert.same({ "reset", true }, { err.code, err.sent })
    assert.equal(1, count2)
  end)

  it("bounds the whole attempt by its timeout", function()
    local err, elapsed = run([[
      script.define("slow", { {"send", "HTTP/1.1 200 OK\r\n"}, {"sleep", 2}, {"send", "Content-Length: 0\r\n\r\n"} })
      local t0 = ngx.now()
      local _, err = call("slow", nil, { timeout = 0.2 })
      ngx.update_time()
      return err, ngx.now() - t0
    ]])
    assert.same({ "timeout", true }, { err.code, err.sent })
    assert.is_true(elapsed < 1.5)
  end)

  it("reports a refused connection as not sent", function()
    local err = run([[
      local _, err = call("none", { port = 1 })
      return err
    ]])
    assert.same({ "connect", false }, { err.code, err.sent })
  end)

  it("caps the response head and body (too_large)", function()
    local e1, e2, e3 = run([[
      script.define("bighead", { {"send", "HTTP/1.1 200 OK\r\nX-Long: " .. string.rep("a", 500) .. "\r\n\r\n"} })
      script.define("bigbody", { {"send", "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" .. string.rep("b", 100)} })
      script.define("bigchunks", { {"send", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        .. "8\r\n12345678\r\n8\r\n12345678\r\n0\r\n\r\n"} })
      local _, e1 = call("bighead", nil, { max_header = 200 })
      local _, e2 = call("bigbody", nil, { max_body = 10 })
      local _, e3 = call("bigchunks", nil, { max_body = 10 })
      return e1, e2, e3
    ]])
    assert.equal("too_large", e1.code)
    assert.equal("too_large", e2.code)
    assert.equal("too_large", e3.code)
  end)

  it("raises on a header line that could split the request", function()
    local err = run([[
      local ok, err = pcall(call, "x", { headers = { "X-A: 1\r\nX-B: 2" } })
      return not ok and err
    ]])
    assert.truthy(err:find("bad header line", 1, true))
  end)
end)

describe("fly.ngx.http over TLS #nginx", function()
  local tls_server = [[
    server {
      listen 127.0.0.1:@TLS_PORT@ ssl;
      ssl_certificate @CERT@;
      ssl_certificate_key @KEY@;
      location / { return 200 "secure"; }
    }
  ]]
  local CODE = PRELUDE .. [[
    local tls = tonumber(ngx.var.arg_tls)
    local function get(server_name, insecure)
      local r, err = call("tls", { scheme = "https", host = "localhost", port = tls, target = "/" },
        { address = "127.0.0.1", server_name = server_name, insecure = insecure })
      if r then return r.body end
      return err.code .. (err.sent and " sent" or " not sent")
    end
  ]]
  local trusted, untrusted
  setup(function()
    trusted = harness.start { tls = true, http = tls_server .. "lua_ssl_trusted_certificate @CERT@;" }
    untrusted = harness.start { tls = true, http = tls_server }
  end)
  teardown(function()
    if trusted then trusted:stop() end
    if untrusted then untrusted:stop() end
  end)

  local function run(n, code)
    return n:run(CODE:gsub("ngx%.var%.arg_tls", tostring(n.tls_port)) .. code)
  end

  it("verifies the certificate and the host name by default", function()
    local ok, wrong = run(trusted, [[ return get(), get("other.example") ]])
    assert.equal("secure", ok)
    assert.equal("tls not sent", wrong)
  end)

  it("fails with tls on an untrusted certificate, and insecure turns verification off", function()
    local before, insecure, after = run(untrusted, [[ return get(), get(nil, true), get() ]])
    assert.equal("tls not sent", before)
    assert.equal("secure", insecure)
    -- the connection kept from the insecure call is never handed to a verifying one
    assert.equal("tls not sent", after)
  end)
end)

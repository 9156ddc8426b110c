-- client.tokens: OIDC and KMS tokens (text/plain), and token introspection.
local H = require "helper"

describe("client.tokens", function()
  local c
  before_each(function()
    H.reset()
    c = H.client()
  end)
  after_each(function() c:close() end)

  -- the claims of a JWT (base64url JSON in the middle part)
  local function claims(jwt)
    local payload = jwt:match("^[%w_-]+%.([%w_-]+)%.[%w_-]+$")
    assert.is_string(payload)
    local B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    local bits = payload:gsub(".", function(ch)
      local n, s = B64:find(ch, 1, true) - 1, ""
      for i = 6, 1, -1 do s = s .. (math.floor(n / 2 ^ (i - 1)) % 2) end
      return s
    end)
    local text = bits:gsub("%d%d%d%d%d%d%d%d", function(b) return string.char(tonumber(b, 2)) end)
    text = text:gsub("[01]+$", "")
    return require("cjson").decode(text)
  end

  it("gives an OIDC token as a string, with the audience asked for", function()
    local app = H.app(c)
    local token = assert(c.tokens:request_oidc { aud = "https://example.com" })
    assert.is_string(token)
    local cl = claims(token)
    assert.equals("https://example.com", cl.aud)
    assert.equals(app, cl.app_name)
    assert.is_string(assert(c.tokens:request_oidc()))
  end)

  it("gives a KMS token as a string", function()
    local token = assert(c.tokens:request_kms())
    assert.is_string(token)
    assert.matches("^FlyV1 fm2_", token)
  end)

  it("describes the current token", function()
    local res = assert(c.tokens:get_current())
    assert.equals("personal", res.tokens[1].org_slug)
  end)

  it("a client with a wrong token gets 401 for current", function()
    local bad = H.client { token = "wrong-token" }
    local r, err = bad.tokens:get_current()
    assert.is_nil(r)
    assert.equals(401, err.status)
    bad:close()
  end)

  it("authenticates a header, by string or body", function()
    local res = assert(c.tokens:authenticate("FlyV1 fm2_abc,fm2_def"))
    assert.equals(2, #res)
    assert.equals("fm2_abc", res[1].header)
    res = assert(c.tokens:authenticate { header = "Bearer " .. H.TOKEN })
    assert.equals(1, #res)
    local r, err = c.tokens:authenticate("Bearer nonsense")
    assert.is_nil(r)
    assert.equals(400, err.status)
  end)

  it("authorizes an access for an app that exists, and refuses one that does not", function()
    local app = H.app(c)
    local res = assert(c.tokens:authorize { header = "Bearer " .. H.TOKEN, access = { action = 1, app_name = app } })
    assert.is_table(res.access)
    assert.is_table(res.verified_token)
    local r, err = c.tokens:authorize { header = "Bearer " .. H.TOKEN, access = { app_name = "nope" } }
    assert.is_nil(r)
    assert.equals(400, err.status)
  end)

  it("raises programmer errors at the caller's line", function()
    H.raises("tokens_spec%.lua:%d+: fly: tokens:request_oidc: body must be a table",
      function() c.tokens:request_oidc("aud") end)
    H.raises("tokens_spec%.lua:%d+: fly: tokens:authenticate: header must be",
      function() c.tokens:authenticate(nil) end)
    H.raises("tokens_spec%.lua:%d+: fly: tokens:authorize: body must be a table", function() c.tokens:authorize() end)
  end)
end)

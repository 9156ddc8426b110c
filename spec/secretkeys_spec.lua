-- client.secretkeys: keys that sign, verify, encrypt and decrypt without leaving Fly.
local H = require "helper"
local compat = require "fly.compat"

-- base64 of a Lua string, as Fly's Go client sends byte fields
local B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
local function b64(s)
  return (s:gsub(".", function(ch)
    local b, bits = ch:byte(), ""
    for i = 8, 1, -1 do bits = bits .. (math.floor(b / 2 ^ (i - 1)) % 2) end
    return bits
  end) .. "0000"):gsub("%d%d%d?%d?%d?%d?", function(x)
    if #x < 6 then return "" end
    local n = tonumber(x, 2)
    return B64:sub(n + 1, n + 1)
  end) .. ({ "", "==", "=" })[#s % 3 + 1]
end

describe("client.secretkeys", function()
  local c, app
  before_each(function()
    H.reset()
    c = H.client()
    app = H.app(c)
  end)
  after_each(function() c:close() end)

  it("sets, gets, lists by type and deletes keys", function()
    local k = assert(c.secretkeys:set(app, "mac", { type = "hs256", value = b64("0123456789abcdef0123456789abcdef") }))
    assert.equals("mac", k.name)
    assert.equals("hs256", k.type)
    assert.is_number(k.version)
    assert(c.secretkeys:generate(app, "box", "nacl_box"))
    assert(c.secretkeys:generate(app, "sealed", { type = "xaes256gcm" }))

    local got = assert(c.secretkeys:get(app, "box"))
    assert.equals("nacl_box", got.type)
    assert.is_not_nil(got.public_key)

    local all = assert(c.secretkeys:list(app))
    assert.equals(3, #all.secret_keys)
    local some = assert(c.secretkeys:list(app, { types = { "hs256", "xaes256gcm" } }))
    assert.equals(2, #some.secret_keys)
    some = assert(c.secretkeys:list(app, { types = "nacl_box" }))
    assert.equals(1, #some.secret_keys)
    assert.equals("box", some.secret_keys[1].name)

    assert.is_number(assert(c.secretkeys:delete(app, "box")).version)
    local r, err = c.secretkeys:get(app, "box")
    assert.is_nil(r)
    assert.equals(404, err.status)
  end)

  it("encrypts and decrypts round trip, with associated data", function()
    assert(c.secretkeys:generate(app, "k", "xaes256gcm"))
    local plain, ad = b64("hello, fly"), b64("ctx")
    local enc = assert(c.secretkeys:encrypt(app, "k", { plaintext = plain, associated_data = ad }))
    assert.is_string(enc.ciphertext)
    local dec = assert(c.secretkeys:decrypt(app, "k", { ciphertext = enc.ciphertext, associated_data = ad }))
    assert.equals(plain, dec.plaintext)
    -- wrong associated data fails authentication: 400
    local r, err = c.secretkeys:decrypt(app, "k", { ciphertext = enc.ciphertext, associated_data = b64("other") })
    assert.is_nil(r)
    assert.equals(400, err.status)
  end)

  it("works with byte arrays as the description shows them", function()
    assert(c.secretkeys:generate(app, "k", "nacl_secretbox"))
    local enc = assert(c.secretkeys:encrypt(app, "k", { plaintext = { 1, 2, 3 } }))
    assert.is_table(enc.ciphertext)
    local dec = assert(c.secretkeys:decrypt(app, "k", { ciphertext = enc.ciphertext }))
    assert.same({ 1, 2, 3 }, dec.plaintext)
  end)

  it("signs and verifies; a bad signature is a 400", function()
    assert(c.secretkeys:generate(app, "signer", "hs512"))
    local msg = b64("message")
    local sig = assert(c.secretkeys:sign(app, "signer", { plaintext = msg }))
    assert.is_string(sig.signature)
    assert.is_true(c.secretkeys:verify(app, "signer", { plaintext = msg, signature = sig.signature }))
    local r, err = c.secretkeys:verify(app, "signer", { plaintext = b64("tampered"), signature = sig.signature })
    assert.is_nil(r)
    assert.equals(400, err.status)
    assert.equals("Secretkey_verify", err.operation)
  end)

  it("passes min_version to the crypto operations", function()
    local k = assert(c.secretkeys:generate(app, "signer", "hs256"))
    local v = compat.tointeger(k.version)
    assert(c.secretkeys:sign(app, "signer", { plaintext = b64("m") }, { min_version = v }))
    assert.matches("min_version=" .. v, H.stats().last_request.uri)
    local r, err = c.secretkeys:sign(app, "signer", { plaintext = b64("m") }, { min_version = v + 5 })
    assert.is_nil(r)
    assert.equals(404, err.status)
  end)

  it("refuses a key type that cannot do the operation", function()
    assert(c.secretkeys:generate(app, "mac", "hs256"))
    local r, err = c.secretkeys:encrypt(app, "mac", { plaintext = b64("x") })
    assert.is_nil(r)
    assert.equals(400, err.status)
    r, err = c.secretkeys:generate(app, "bad", "rot13")
    assert.is_nil(r)
    assert.equals(400, err.status)
  end)

  it("raises programmer errors at the caller's line", function()
    H.raises("secretkeys_spec%.lua:%d+: fly: secretkeys:encrypt: body must be a table",
      function() c.secretkeys:encrypt(app, "k", "plaintext") end)
    H.raises("secretkeys_spec%.lua:%d+: fly: secretkeys:sign: name must be a string",
      function() c.secretkeys:sign(app, 7, {}) end)
    H.raises("secretkeys_spec%.lua:%d+: fly: secretkeys:generate: key_type must be",
      function() c.secretkeys:generate(app, "k") end)
    H.raises("secretkeys_spec%.lua:%d+: fly: secretkeys:get: unknown parameter 'x' %(it takes min_version%)",
      function() c.secretkeys:get(app, "k", { x = 1 }) end)
    H.raises("secretkeys_spec%.lua:%d+: fly: secretkeys:verify: unknown parameter 'x' %(it takes min_version%)",
      function() c.secretkeys:verify(app, "k", {}, { x = 1 }) end)
  end)
end)

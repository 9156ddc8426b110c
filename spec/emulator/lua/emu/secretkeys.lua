-- Emulates the Fly Machines API app secret keys (the /.fly/kms keys):
--   Secretkeys_list, Secretkey_get, Secretkey_set, Secretkey_delete, Secretkey_generate,
--   Secretkey_encrypt, Secretkey_decrypt, Secretkey_sign, Secretkey_verify.
--
-- Key types are those of fly-go/flyctl: hs256 hs384 hs512 (HMAC: sign/verify), nacl_auth
-- (sign/verify), nacl_sign and es256 (signatures, with a public key), xaes256gcm and
-- nacl_secretbox (symmetric encrypt/decrypt), nacl_box (encrypt/decrypt, with a public key).
-- The "cryptography" is a deterministic stand-in: encryption is a keyed byte shift with a
-- key id header and a keyed check value (so a wrong key, wrong associated data or a
-- tampered ciphertext fails with 400), signatures are a keyed hash.
--
-- Byte fields: the description shows arrays of integers; fly-go (Go []byte) sends base64
-- strings. Requests may use either; a response uses base64 when the request did (or when
-- state.config.secretkey_bytes == "base64"), arrays of integers otherwise.
--
-- State: state.table("secretkeys")[app_name] = {app_id, items = {[name] = {name, type,
-- material, public_key, created_at, updated_at, version}}}; versions are shared with secrets.lua
-- (secrets.bump_version, secrets.min_version) through state.table("secret_versions").

local cjson = require "cjson"
local state = require "emu.state"
local util = require "emu.util"
local secrets = require "emu.secrets"

local M = {}

local TYPES = {
  hs256 = { size = 32, sig = 32, min_size = 1 },
  hs384 = { size = 48, sig = 48, min_size = 1 },
  hs512 = { size = 64, sig = 64, min_size = 1 },
  nacl_auth = { size = 32, sig = 32 },
  nacl_sign = { size = 64, sig = 64, public = 32 },
  es256 = { size = 32, sig = 64, public = 65 },
  xaes256gcm = { size = 32, encrypt = true },
  nacl_secretbox = { size = 32, encrypt = true },
  nacl_box = { size = 32, encrypt = true, public = 32 },
}
M.types = TYPES

-- the app's secret keys (a fresh set when the app was deleted and created again)
local function app_keys(app_name) return util.app_items("secretkeys", app_name) end

---------------------------------------------------------------------------- bytes

local B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
local B64_INDEX = {}
for i = 1, 64 do B64_INDEX[B64:byte(i)] = i - 1 end
B64_INDEX[("-"):byte()] = 62 -- accept the URL-safe alphabet too
B64_INDEX[("_"):byte()] = 63

local function b64encode(s)
  local out = {}
  for i = 1, #s, 3 do
    local a, b, c = s:byte(i, i + 2)
    local n = a * 65536 + (b or 0) * 256 + (c or 0)
    local q = { math.floor(n / 262144) % 64, math.floor(n / 4096) % 64, math.floor(n / 64) % 64, n % 64 }
    out[#out + 1] = B64:sub(q[1] + 1, q[1] + 1) .. B64:sub(q[2] + 1, q[2] + 1)
      .. (b and B64:sub(q[3] + 1, q[3] + 1) or "=") .. (c and B64:sub(q[4] + 1, q[4] + 1) or "=")
  end
  return table.concat(out)
end

local function b64decode(s)
  s = s:gsub("=+$", "")
  local out, bits, nbits = {}, 0, 0
  for i = 1, #s do
    local v = B64_INDEX[s:byte(i)]
    if not v then return nil end
    bits, nbits = bits * 64 + v, nbits + 6
    if nbits >= 8 then
      nbits = nbits - 8
      local p = 2 ^ nbits
      out[#out + 1] = string.char(math.floor(bits / p))
      bits = bits % p
    end
  end
  return table.concat(out)
end

-- a request byte field: array of 0..255 or a base64 string -> Lua string, format; or nil, err
local function bytes_in(v, field, required)
  if v == nil or v == cjson.null then
    if required then return nil, field .. " is required" end
    return "", nil
  end
  if type(v) == "string" then
    local s = b64decode(v)
    if not s then return nil, field .. " is not valid base64" end
    return s, "base64"
  end
  if type(v) ~= "table" then return nil, field .. " must be an array of bytes" end
  local chars = {}
  for i = 1, #v do
    local b = v[i]
    if type(b) ~= "number" or b ~= math.floor(b) or b < 0 or b > 255 then
      return nil, field .. " must be an array of bytes (0-255)"
    end
    chars[i] = string.char(b)
  end
  return table.concat(chars), "array"
end

local function bytes_out(s, format)
  if format == "base64" or (format == nil and state.config.secretkey_bytes == "base64") then
    return b64encode(s)
  end
  local t = {}
  for i = 1, #s do t[i] = s:byte(i) end
  return util.arr(t)
end

---------------------------------------------------------------------------- stand-in crypto

-- n pseudo-random bytes determined by s (a tiny keyed stream)
local function stream(s, n)
  local x = util.hash32(s, 2166136, 131)
  local out = {}
  for i = 1, n do
    x = (x * 69069 + 1) % 4294967296
    out[i] = string.char(math.floor(x / 16777216))
  end
  return table.concat(out)
end

local function tag(s, n) return stream("tag|" .. s, n) end

local function shift(s, key, sign)
  local ks = stream("enc|" .. key, #s)
  local out = {}
  for i = 1, #s do out[i] = string.char((s:byte(i) + sign * ks:byte(i)) % 256) end
  return table.concat(out)
end

local HEADER = "\241\1" -- format marker

local function encrypt(key, plaintext, ad)
  local kid = tag("kid|" .. key.material, 4)
  local mac = tag(key.material .. "|" .. ad .. "|" .. plaintext, 8)
  return HEADER .. kid .. shift(plaintext, key.material, 1) .. mac
end

local function decrypt(key, ciphertext, ad)
  if #ciphertext < 14 or ciphertext:sub(1, 2) ~= HEADER then return nil end
  if ciphertext:sub(3, 6) ~= tag("kid|" .. key.material, 4) then return nil end
  local plaintext = shift(ciphertext:sub(7, -9), key.material, -1)
  if ciphertext:sub(-8) ~= tag(key.material .. "|" .. ad .. "|" .. plaintext, 8) then return nil end
  return plaintext
end

local function sign(key, plaintext)
  return tag("sig|" .. key.material .. "|" .. plaintext, TYPES[key.type].sig)
end

---------------------------------------------------------------------------- records

local function render(key, format)
  return {
    name = key.name,
    type = key.type,
    public_key = key.public_key and bytes_out(key.public_key, format) or nil,
    created_at = key.created_at,
    updated_at = key.updated_at,
  }
end

local function valid_name(name)
  return type(name) == "string" and name ~= "" and #name <= 255 and not name:find("[/%z]")
    and name ~= "." and name ~= ".."
end

local function store(app_name, name, ktype, material)
  local keys = app_keys(app_name)
  local now = util.now_iso()
  local key = keys[name] or { name = name, created_at = now }
  key.type, key.material, key.updated_at = ktype, material, now
  local pub = TYPES[ktype].public
  key.public_key = nil
  if pub then
    key.public_key = (ktype == "es256" and "\4" or "") .. tag("pub|" .. material, ktype == "es256" and pub - 1 or pub)
  end
  key.version = secrets.bump_version(app_name)
  keys[name] = key
  return key
end

-- common preamble: app, key name, body checks. Returns key (or nil), body, or an error.
local function lookup(req)
  local app_name, name = req.params.app_name, req.params.secret_name
  if not util.app_exists(app_name) then return nil, 404, "app not found" end
  local min = secrets.min_version(req)
  if min == false then return nil, 400, "min_version must be a non-negative integer" end
  local key = app_keys(app_name)[name]
  if not key or (min and key.version < min) then return nil, 404, "secret key not found" end
  return key
end

---------------------------------------------------------------------------- handlers

local function list(req)
  local app_name = req.params.app_name
  if not util.app_exists(app_name) then return util.err(404, "app not found") end
  local min = secrets.min_version(req)
  if min == false then return util.err(400, "min_version must be a non-negative integer") end
  local wanted
  local types = util.qval(req.query and req.query.types)
  if types and types ~= "" then
    wanted = {}
    for t in types:gmatch("[^,%s]+") do wanted[t:lower()] = true end
  end
  local keys = {}
  for _, key in pairs(app_keys(app_name)) do
    if (not wanted or wanted[key.type]) and (not min or key.version >= min) then keys[#keys + 1] = key end
  end
  table.sort(keys, function(a, b) return a.name < b.name end)
  local out = {}
  for i, key in ipairs(keys) do out[i] = render(key) end
  return 200, { secret_keys = util.arr(out) }
end

local function get(req)
  local key, status, msg = lookup(req)
  if not key then return util.err(status, msg) end
  return 200, render(key)
end

local function set_or_generate(req, generate)
  local app_name, name = req.params.app_name, req.params.secret_name
  if not util.app_exists(app_name) then return util.err(404, "app not found") end
  if not valid_name(name) then return util.err(400, "invalid secret key name") end
  local body, berr = util.body_object(req)
  if not body then return util.err(400, berr) end
  local ktype = type(body.type) == "string" and body.type:lower() or nil
  if not ktype or not TYPES[ktype] then
    return util.err(400, "type must be one of hs256, hs384, hs512, nacl_auth, nacl_box, "
      .. "nacl_secretbox, nacl_sign, es256, xaes256gcm")
  end
  local spec, material, format = TYPES[ktype]
  if generate then
    material = util.hex(spec.size * 2)
  else
    material, format = bytes_in(body.value, "value", true)
    if not material then return util.err(400, format) end
    if spec.min_size then
      if #material < spec.min_size then return util.err(400, "value must not be empty") end
    elseif #material ~= spec.size then
      return util.err(400, ktype .. " keys must be exactly " .. spec.size .. " bytes")
    end
  end
  local key = store(app_name, name, ktype, material)
  local out = render(key, format)
  out.version, out.Version = key.version, key.version
  return 201, out
end

local function set(req) return set_or_generate(req, false) end
local function generate(req) return set_or_generate(req, true) end

local function delete(req)
  local app_name, name = req.params.app_name, req.params.secret_name
  if not util.app_exists(app_name) then return util.err(404, "app not found") end
  local keys = app_keys(app_name)
  if not keys[name] then return util.err(404, "secret key not found") end
  keys[name] = nil
  local version = secrets.bump_version(app_name)
  return 200, { version = version, Version = version }
end

-- shared preamble of encrypt/decrypt/sign/verify: key found and able to do `what`
local function usable_key(req, what)
  local key, status, msg = lookup(req)
  if not key then return nil, util.err(status, msg) end
  local spec = TYPES[key.type]
  local ok = (what == "encrypt" and spec.encrypt) or (what == "sign" and spec.sig)
  if not ok then
    local verb = what == "encrypt" and "encryption" or "signing"
    return nil, util.err(400, "secret key type " .. key.type .. " does not support " .. verb)
  end
  local body, berr = util.body_object(req)
  if not body then return nil, util.err(400, berr) end
  return key, body
end

local function do_encrypt(req)
  local key, body, e = usable_key(req, "encrypt")
  if not key then return body, e end
  local plaintext, f1 = bytes_in(body.plaintext, "plaintext")
  if not plaintext then return util.err(400, f1) end
  local ad, f2 = bytes_in(body.associated_data, "associated_data")
  if not ad then return util.err(400, f2) end
  return 200, { ciphertext = bytes_out(encrypt(key, plaintext, ad), f1 or f2) }
end

local function do_decrypt(req)
  local key, body, e = usable_key(req, "encrypt")
  if not key then return body, e end
  local ciphertext, f1 = bytes_in(body.ciphertext, "ciphertext", true)
  if not ciphertext then return util.err(400, f1) end
  local ad, f2 = bytes_in(body.associated_data, "associated_data")
  if not ad then return util.err(400, f2) end
  local plaintext = decrypt(key, ciphertext, ad)
  if not plaintext then return util.err(400, "decryption failed: message authentication failed") end
  return 200, { plaintext = bytes_out(plaintext, f1 or f2) }
end

local function do_sign(req)
  local key, body, e = usable_key(req, "sign")
  if not key then return body, e end
  local plaintext, f = bytes_in(body.plaintext, "plaintext")
  if not plaintext then return util.err(400, f) end
  return 200, { signature = bytes_out(sign(key, plaintext), f) }
end

local function do_verify(req)
  local key, body, e = usable_key(req, "sign")
  if not key then return body, e end
  local plaintext, f1 = bytes_in(body.plaintext, "plaintext")
  if not plaintext then return util.err(400, f1) end
  local signature, f2 = bytes_in(body.signature, "signature", true)
  if not signature then return util.err(400, f2) end
  if signature ~= sign(key, plaintext) then return util.err(400, "signature verification failed") end
  return 204, nil
end

local base = "/v1/apps/{app_name}/secretkeys"
local one = base .. "/{secret_name}"
M.routes = {
  { op = "Secretkeys_list", method = "GET", path = base, handler = list },
  { op = "Secretkey_get", method = "GET", path = one, handler = get },
  { op = "Secretkey_set", method = "POST", path = one, handler = set },
  { op = "Secretkey_delete", method = "DELETE", path = one, handler = delete },
  { op = "Secretkey_generate", method = "POST", path = one .. "/generate", handler = generate },
  { op = "Secretkey_encrypt", method = "POST", path = one .. "/encrypt", handler = do_encrypt },
  { op = "Secretkey_decrypt", method = "POST", path = one .. "/decrypt", handler = do_decrypt },
  { op = "Secretkey_sign", method = "POST", path = one .. "/sign", handler = do_sign },
  { op = "Secretkey_verify", method = "POST", path = one .. "/verify", handler = do_verify },
}

return M

#!/usr/bin/env lua5.4
-- Derives csrc/operations.c from the Machines API description.
--
-- Usage: lua5.4 tools/gen-operations.lua path/to/openapi.json > csrc/operations.c
--
-- The description is reference data: this script is run by hand when it
-- changes, and its output is committed. Nothing reads the description at
-- build, install or test time.
local cjson = require "cjson"

local source = assert(arg[1], "usage: gen-operations.lua OPENAPI.json")
local f = assert(io.open(source, "rb"))
local doc = cjson.decode(f:read("a"))
f:close()

-- Lua-side names for header parameters.
local HEADER_NAMES = { ["fly-machine-lease-nonce"] = "lease_nonce" }

-- The same operationId appears for two methods on one path; the second one
-- gets its own name so `client:call` can reach both.
local RENAME = { ["PATCH /v1/apps/{app_name}/machines/{machine_id}/metadata"] = "Machines_patch_metadata" }

-- Published limits (API-NOTES.md, Rate limits): 1/s burst 3 per action by
-- default; Get Machine 5/s burst 10; app deletions 100 per minute.
local RATE_CLASS = { Machines_show = "FLY_RATE_GET_MACHINE", Apps_delete = "FLY_RATE_APP_DELETE" }

-- The parameter whose value keys a rate-limit bucket, most specific first.
local SCOPE_ORDER = { "machine_id", "app_name", "org_slug", "postgres_cluster_id" }

-- Safety classes (API-NOTES.md, Idempotency and retries): may a request be sent again after
-- an ambiguous failure? GET, PUT and DELETE are safe; a POST or PATCH is
-- never safe unless listed here: actions whose repeat ends in the same state,
-- and computations that change nothing.
local SAFE = {
  Machines_start = true, Machines_stop = true, Machines_suspend = true,
  Machines_cordon = true, Machines_uncordon = true,
  Machines_patch_metadata = true, Machines_upsert_metadata = true, -- set keys to given values
  App_Certificates_check = true,
  Secretkey_encrypt = true, Secretkey_decrypt = true, Secretkey_sign = true, Secretkey_verify = true,
  Tokens_authenticate = true, Tokens_authorize = true,
  Platform_placements_post = true,
}
-- Safe only when the request carries a lease nonce: the same config under
-- the same lease, and a lease refresh (a create without a nonce acquires one).
local WITH_LEASE = { Machines_update = true, Machines_create_lease = true }

local function safety(id, method)
  if WITH_LEASE[id] then return "FLY_SAFE_WITH_LEASE" end
  if method == "GET" or method == "PUT" or method == "DELETE" or SAFE[id] then return "FLY_SAFE" end
  return "FLY_NEVER"
end

local METHOD_ORDER = { "get", "post", "put", "patch", "delete" }

-- What a success returns (the 2xx responses' content): a JSON object or
-- array (every JSON schema the description gives for a success is one),
-- text (text/plain: the tokens), or nothing declared.
local function returns(o)
  local json, text, bytes = false, false, false
  for code, r in pairs(o.responses or {}) do
    if tostring(code):match("^2") then
      if r["$ref"] then r = doc.components.responses[r["$ref"]:match("([^/]+)$")] end
      for ctype in pairs(r.content or {}) do
        if ctype:find("json", 1, true) then json = true
        elseif ctype:find("^text/plain") then text = true
        elseif ctype == "application/octet-stream" then bytes = true end
      end
    end
  end
  assert(not (json and text), "an operation returning both JSON and text")
  -- JSON that the description also lets come labelled application/octet-stream (exec's answer)
  if json and bytes then return "FLY_RETURNS_JSON_BYTES" end
  return json and "FLY_RETURNS_JSON" or text and "FLY_RETURNS_TEXT" or "FLY_RETURNS_NONE"
end

local function resolve(p)
  if p["$ref"] then
    local name = p["$ref"]:match("([^/]+)$")
    return doc.components.parameters[name]
  end
  return p
end

local ops = {}
local paths = {}
for path in pairs(doc.paths) do paths[#paths + 1] = path end
table.sort(paths)
for _, path in ipairs(paths) do
  local item = doc.paths[path]
  for _, m in ipairs(METHOD_ORDER) do
    local o = item[m]
    if o then
      local method = m:upper()
      local id = RENAME[method .. " " .. path] or o.operationId
      local params = {}
      for _, raw in ipairs(o.parameters or {}) do
        local p = resolve(raw)
        local name, kind = p.name, p["in"]
        if kind == "header" then
          name = HEADER_NAMES[p.name] or p.name:gsub("-", "_")
        elseif kind == "query" and p.name:find("{key}", 1, true) then
          name, kind = p.name:match("^([^.]+)"), "query_map"
        elseif kind == "query" then
          -- a list the API reads from one comma-separated value (not from repeated keys)
          local d = (p.description or ""):lower()
          if d:find("comma[%s%-]*sep[ae]rated") and not d:find("repeated", 1, true) then kind = "query_list" end
        end
        params[#params + 1] = {
          name = name, wire = p.name, kind = kind,
          required = p.required == true or kind == "path",
        }
      end
      -- API-NOTES: while a lease is held, every mutating call on the machine
      -- must carry the nonce, so every such operation takes it.
      local has_machine, has_nonce = false, false
      for _, p in ipairs(params) do
        if p.name == "machine_id" then has_machine = true end
        if p.name == "lease_nonce" then has_nonce = true end
      end
      if has_machine and not has_nonce and method ~= "GET" then
        params[#params + 1] = { name = "lease_nonce", wire = "fly-machine-lease-nonce", kind = "header",
          required = false }
      end
      local scope = -1
      if RATE_CLASS[id] ~= "FLY_RATE_APP_DELETE" then
        for _, want in ipairs(SCOPE_ORDER) do
          for i, p in ipairs(params) do
            if scope < 0 and p.kind == "path" and p.name == want then scope = i - 1 end
          end
        end
      end
      local body = o.requestBody
      ops[#ops + 1] = {
        id = id, method = method, path = path, tag = (o.tags or {})[1] or "",
        params = params,
        safety = safety(id, method),
        has_body = body ~= nil, body_required = body ~= nil and body.required == true,
        action = o.operationId, rate = RATE_CLASS[id] or "FLY_RATE_DEFAULT", scope = scope,
        returns = returns(o),
      }
    end
  end
end
table.sort(ops, function(a, b) return a.id < b.id end)

local KIND = { path = "FLY_IN_PATH", query = "FLY_IN_QUERY", query_map = "FLY_IN_QUERY_MAP",
  header = "FLY_IN_HEADER", query_list = "FLY_IN_QUERY_LIST" }
local out = {}
local function emit(s, ...) out[#out + 1] = select("#", ...) > 0 and s:format(...) or s end

emit("/* Generated by tools/gen-operations.lua from the Machines API description. Do not edit. */")
emit('#include "operations.h"\n')
for i, op in ipairs(ops) do
  if #op.params > 0 then
    emit("static const fly_param p%d[] = {", i)
    for _, p in ipairs(op.params) do
      emit('  {"%s", "%s", %s, %d},', p.name, p.wire, KIND[p.kind], p.required and 1 or 0)
    end
    emit("};")
  end
end
emit("\nconst fly_operation fly_operations[] = {")
for i, op in ipairs(ops) do
  emit('  {"%s", "%s", "%s", "%s", %s, %d, %s, %d, %d, "%s", %s, %d, %s},',
    op.id, op.method, op.path, op.tag, #op.params > 0 and ("p" .. i) or "NULL", #op.params,
    op.safety, op.has_body and 1 or 0, op.body_required and 1 or 0,
    op.action, op.rate, op.scope, op.returns)
end
emit("};\n")
emit("const size_t fly_operation_count = sizeof fly_operations / sizeof fly_operations[0];")
io.write(table.concat(out, "\n"), "\n")

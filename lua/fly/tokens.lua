--- client.tokens: OIDC and KMS tokens, and what a token is and may do.
-- @module fly.tokens
local resource = require "fly.resource"

local Tokens = { __name = "fly.tokens" }
Tokens.__index = Tokens

--- The operation each method calls (filled by the declarations below).
Tokens.operations = {}

local function body(p, _, b) p.body = b end

-- Each entry: `{ method, operationId, … }` (see resource.declare).
resource.declare(Tokens, { name = "tokens", operations = Tokens.operations }, {
  --- `request_oidc(body)`: an OIDC token (a JWT naming the organization, app and machine); `aud`
  -- (default `https://fly.io/<org>`), `aws_principal_tags` -> the token (a string)
  { "request_oidc", "Tokens_request_OIDC", args = { "body:?table" },
    build = function(p, _, b) p.body = b or {} end },
  --- `request_kms()`: a token for Fly's KMS (Petsem) -> the token (`FlyV1 fm2_…`)
  { "request_kms", "Tokens_request_Kms" },
  --- `get_current()`: describes the token this client uses -> `{ tokens = { { token_id,
  -- org_slug, organization, apps, user? }, … } }` (401)
  { "get_current", "CurrentToken_show" },
  --- `authenticate(header)`: verifies the tokens of an Authorization header (`"FlyV1 fm2_…"`),
  -- or the body `{ header = … }` -> an array of VerifiedToken (400 when none verifies)
  { "authenticate", "Tokens_authenticate", args = { "header:string|table" },
    build = function(p, _, h) p.body = type(h) == "string" and { header = h } or h end },
  --- `authorize(body)`: whether the tokens of a header grant an access; `header` and `access`
  -- (a TokenAccess: `action`, `org_slug`, `app_name`, `machine_id`, …) -> `{ access = …,
  -- verified_token = … }` (400 when not allowed)
  { "authorize", "Tokens_authorize", args = { "body:table" }, build = body },
})

return Tokens

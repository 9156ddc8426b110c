--- fly.Error: the structured error of every failed call.
--
-- Runtime failures are returned as `nil, err`; `err` is a table with this
-- metatable. Fields: `status` (HTTP status, nil for transport failures),
-- `code` (the error body's `status` such as "name_taken", a name derived
-- from the HTTP status, or a transport code: timeout, connect, tls, resolve,
-- reset, protocol, too_large, cancelled), `message`, `request_id`,
-- `retryable`, `retry_after` (seconds, from a 429 or 503), `method`, `path`,
-- `operation`, `attempts`, `body` (the response text, at most its first
-- 4 KiB; `body_size` then gives its full length, or for a too_large the
-- bytes taken in before the stop).
--
-- Text from the server (message, code, request id) has its control
-- characters escaped (`\x1b`, `\n`, ...) in `message` and `tostring(err)`;
-- the request's credentials never appear in it (the core masks them).
-- @module fly.error
local Error = { __name = "fly.Error" }
Error.__index = Error

-- Names for HTTP statuses whose body does not say more.
local STATUS_CODES = {
  [400] = "bad_request", [401] = "unauthorized", [403] = "forbidden", [404] = "not_found",
  [408] = "timeout", [409] = "conflict", [410] = "gone", [412] = "precondition_failed",
  [422] = "unprocessable", [429] = "rate_limited", [500] = "server_error", [502] = "bad_gateway",
  [503] = "unavailable", [504] = "gateway_timeout",
}

-- Control characters as escapes, so that no server text can move a
-- terminal's cursor, forge a log line or cut one short.
local ESCAPES = { ["\n"] = "\\n", ["\r"] = "\\r", ["\t"] = "\\t" }
local function escape(s)
  if type(s) ~= "string" then return s end
  return (s:gsub("[%z\1-\31\127]", function(c) return ESCAPES[c] or ("\\x%02x"):format(c:byte()) end))
end

--- Control characters of a string as escapes (`\x1b`, `\n`, …); anything else as it is.
Error._escape = escape -- (for the library's own use)

--- Makes an error from a table of fields; control characters in its message are escaped (the
-- library's own messages may quote server text: a cursor, a state).
-- @tparam table fields
-- @treturn fly.Error
function Error.new(fields)
  fields.message = escape(fields.message)
  return setmetatable(fields, Error)
end

--- Whether a value is a fly.Error.
function Error.is(v)
  return getmetatable(v) == Error
end

--- The error for a finished request (see fly.core's request:result()).
-- @tparam table res the request's result table
-- @param[opt] decoded the decoded body, when it was JSON
function Error.from_result(res, decoded)
  local e = {
    status = res.status, method = res.method, path = res.path, operation = res.operation,
    request_id = escape(res.request_id), attempts = res.attempts, retryable = res.retryable,
    retry_after = res.retry_after, body = res.body, body_size = res.body_size,
    may_have_run = res.may_have_run,
  }
  if res.code then
    e.code, e.message = res.code, escape(res.message)
  else
    local message, code
    if type(decoded) == "table" then
      message = decoded.error or decoded.message
      code = decoded.status
    end
    if type(code) ~= "string" or code == "" or code == "unknown" or code == "error" then
      code = STATUS_CODES[res.status] or ("http_" .. tostring(res.status))
    end
    if type(message) ~= "string" then
      local text = res.body or ""
      message = (text ~= "" and #text < 300 and not text:find("^%s*[{[]")) and text:gsub("%s+$", "")
        or ("HTTP " .. tostring(res.status))
    end
    e.code, e.message = escape(code), escape(message)
  end
  return setmetatable(e, Error)
end

--- One line: `fly: 422 name_taken POST /v1/apps: message (request_id=…)`.
function Error:__tostring()
  local parts = { "fly:" }
  if self.status then parts[#parts + 1] = tostring(self.status) end
  parts[#parts + 1] = escape(tostring(self.code or "error"))
  if self.method and self.path then
    parts[#parts + 1] = self.method .. " " .. self.path .. ":"
  else
    parts[#parts] = parts[#parts] .. ":"
  end
  parts[#parts + 1] = escape(tostring(self.message or ""))
  local extra = {}
  if self.request_id then extra[#extra + 1] = "request_id=" .. escape(tostring(self.request_id)) end
  if self.attempts and self.attempts > 1 then extra[#extra + 1] = "attempts=" .. self.attempts end
  local line = table.concat(parts, " ")
  if #extra > 0 then line = line .. " (" .. table.concat(extra, ", ") .. ")" end
  return escape(line)
end

return Error

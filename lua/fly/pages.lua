--- Cursor pagination shared by the iterators (`orgs:each_machine`,
-- `orgs:each_volume`, `certificates:each`).
--
-- An iterator is a generic-for iterator whose loop variables are `item, err`:
-- it gives every item of every page, fetching the next page (`cursor =
-- next_cursor`) when one is used up, and ends after the page without a
-- `next_cursor`. A runtime failure is never silent: the iterator then
-- produces one last pair `false, err` (a fly.Error) and ends.
--
--     for m, err in client.orgs:each_machine("personal") do
--       if not m then error(tostring(err)) end
--       print(m.id)
--     end
-- @module fly.pages
local Error = require "fly.error"
local json = require "fly.json"

local pages = {}

--- Empty pages in a row that a listing may give before the iterator ends it
-- with a protocol error (each still naming a next page: a server that never
-- ends would otherwise keep the loop inside one step).
pages.MAX_EMPTY_PAGES = 100

local function present(cursor)
  return type(cursor) == "string" and cursor ~= ""
end

--- Makes an iterator over the items of a cursor-paginated listing.
-- @tparam function fetch `fetch(cursor, level)` returns one page (a table) or
-- nil, fly.Error; `cursor` is nil for the first page; `level` is the level to
-- give `resource.call` (fetch calls it directly) so that a programmer error
-- is raised at the line of the `for` loop
-- @tparam string field the name of the page's array of items (`"machines"`)
-- @tparam[opt] function bind called with each page before its items are given
-- @treturn function the iterator, giving `item` or, once, `false, err`
function pages.iterate(fetch, field, bind)
  local items, i, cursor, done = nil, 0, nil, false
  local seen, empty = {}, 0
  return function()
    while true do
      if items and i < #items then
        i = i + 1
        return items[i]
      end
      if done or (items and not present(cursor)) then
        done = true
        return nil
      end
      -- resource.call <- fetch <- this iterator <- the for loop: level 3
      local page, err = fetch(cursor, 3)
      if page == nil or type(page) ~= "table" then
        done = true
        if page ~= nil then
          err = Error.new { code = "protocol", message = "the listing answered something that is not a page",
            retryable = false }
        end
        return false, err
      end
      if bind then bind(page) end
      local list = page[field]
      items, i = (type(list) == "table") and list or {}, 0
      local next_cursor = page.next_cursor
      if next_cursor == json.null then next_cursor = nil end
      empty = #items == 0 and empty + 1 or 0
      if empty > pages.MAX_EMPTY_PAGES and present(next_cursor) then
        done = true
        return false, Error.new { code = "protocol", retryable = false,
          message = ("the listing answered %d empty pages in a row, each naming another"):format(empty) }
      end
      if present(next_cursor) then
        if seen[next_cursor] then
          done = true
          -- (not quoted: it is the server's text, anything at all)
          return false, Error.new { code = "protocol", retryable = false,
            message = "the listing answered a cursor it had already given" }
        end
        seen[next_cursor] = true
      end
      cursor = next_cursor
    end
  end
end

return pages

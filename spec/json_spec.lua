-- The JSON decoder of the C core (responses) and the encoder of request bodies.
local H = require "helper"
local fly = require "fly"
local json = require "fly.json"
local compat = require "fly.compat"

describe("JSON decoding", function()
  local decode = json.decode

  it("decodes whole numbers as integers and the rest as floats", function()
    local v = assert(decode('{"a":256,"b":-3,"c":1.5,"d":2e3,"e":0,"f":-0.25,"g":9007199254740993}'))
    assert.is_true(compat.is_integer(v.a))
    assert.equals(256, v.a)
    assert.equals(-3, v.b)
    assert.equals(1.5, v.c)
    assert.is_true(compat.is_integer(v.d) ~= compat.has_integers) -- a float where Lua has integers
    assert.equals(2000, v.d)
    assert.equals(0, v.e)
    assert.equals(-0.25, v.f)
    if compat.has_integers then
      assert.equals("9007199254740993", tostring(v.g)) -- exact, as a 64-bit integer
    else
      assert.equals(2 ^ 53, v.g) -- doubles: the nearest one, as the README says
    end
    assert.is_false(compat.is_integer(assert(decode("123456789012345678901234567890"))))
  end)

  it("keeps integers to integer literals: 1e0 and 1.0 are floats, -0 is 0, -0.0 is -0.0", function()
    local v = assert(decode('[1e0,1.0,1E2,-0,-0.0,0e0,10]'))
    if compat.has_integers then
      for i, t in ipairs { false, false, false, true, false, false, true } do
        assert.equals(t, compat.is_integer(v[i]), "element " .. i)
      end
    else -- doubles only: the values
      assert.same({ 1, 1, 100, 0, 0, 0, 10 }, { compat.unpack(v, 1, 7) })
    end
    assert.equals(0, v[4])
    assert.equals(-math.huge, 1 / v[5])
  end)

  it("reads integers exactly to 64 bits, and larger ones as the nearest float", function()
    local v = assert(decode('[9223372036854775807,-9223372036854775808,9223372036854775808,' ..
      '-9223372036854775809,18446744073709551616,1000000000000000000000,0,-1]'))
    if compat.has_integers then
      assert.equals(math.maxinteger, v[1])
      assert.equals(math.mininteger, v[2])
    else -- doubles: the nearest ones
      assert.equals(2 ^ 63, v[1])
      assert.equals(-(2 ^ 63), v[2])
    end
    assert.is_false(compat.is_integer(v[3]))
    assert.equals(2.0 ^ 63, v[3])
    assert.is_false(compat.is_integer(v[4]))
    assert.equals(-(2.0 ^ 63), v[4])
    assert.equals(2.0 ^ 64, v[5])
    assert.equals(1e21, v[6])
    assert.equals(0, v[7])
    assert.equals(-1, v[8])
  end)

  it("reads floats exactly (correctly rounded)", function()
    local cases = { "0.1", "1.2345678901234567", "2.2250738585072011e-308", "4.9e-324", "1.7976931348623157e308",
      "9007199254740993.0", "0.30000000000000004", "123456789012345678.5", "-2.5e-3",
      "3.14159265358979323846264338327950288419716939937510582097494459230781640628620899" }
    for _, text in ipairs(cases) do
      assert.equals(tonumber(text), decode(text), text)
    end
    assert.equals(0.1, decode("0.1000000000000000055511151231257827021181583404541015625"))
  end)

  it("keeps the last of duplicate member names", function()
    local v = assert(decode('{"a":1,"b":2,"a":3,"c":{"x":1,"x":null,"x":"last"},"a":4}'))
    assert.equals(4, v.a)
    assert.equals(2, v.b)
    assert.equals("last", v.c.x)
  end)

  it("gives every member its own name, whichever names came before", function()
    -- names alike in length and in most bytes, a name that starts another, the
    -- empty name, an escaped name equal to a plain one, a long one, many
    for _ = 1, 3 do
      local v = assert(decode('{"axbxc":1,"aybyc":2,"azbzc":3,"ab":4,"abc":5,"":6,"a\\u0062d":7,"abd":8,'
        .. '"' .. ("n"):rep(60) .. '":9,"' .. ("n"):rep(59) .. 'm":10}'))
      assert.same({ axbxc = 1, aybyc = 2, azbzc = 3, ab = 4, abc = 5, [""] = 6, abd = 8,
        [("n"):rep(60)] = 9, [("n"):rep(59) .. "m"] = 10 }, v)
      assert.same({ aybyc = { axbxc = true } }, assert(decode('{"aybyc":{"axbxc":true}}')))
    end
    local parts, want = {}, {}
    for i = 1, 3000 do
      parts[i] = ('"k%d":%d'):format(i, i)
      want["k" .. i] = i
    end
    local text = "{" .. table.concat(parts, ",") .. "}"
    assert.same(want, assert(decode(text)))
    assert.same(want, assert(decode(text)))
    assert.same({ k7 = 7, k2999 = "x" }, assert(decode('{"k7":7,"k2999":"x"}')))
    -- 40-byte names that differ in one byte the name's hash does not read: more of them
    -- than one set of remembered names holds
    parts, want = {}, {}
    for i = 1, 12 do
      local name = ("%s%c%s"):format(("p"):rep(10), 64 + i, ("q"):rep(29))
      parts[i] = ('"%s":%d'):format(name, i)
      want[name] = i
    end
    text = "{" .. table.concat(parts, ",") .. "}"
    for _ = 1, 3 do assert.same(want, assert(decode(text))) end
  end)

  it("decodes every member whatever size the objects before it had", function()
    -- objects that begin with the same name, each larger or smaller than the one before
    for _ = 1, 2 do
      for _, n in ipairs { 1, 40, 3, 64, 200, 2, 65, 0, 5 } do
        local parts, want = {}, {}
        for i = 1, n do
          parts[i] = ('"m%d":%d'):format(i, i * 7)
          want["m" .. i] = i * 7
        end
        assert.same(want, assert(decode("{" .. table.concat(parts, ",") .. "}")))
      end
    end
  end)

  -- Decodes `text` with the collector stopped: the value, and the KB of Lua memory it took.
  local function measured(text)
    collectgarbage()
    collectgarbage("stop")
    local before = collectgarbage("count")
    local v = assert(decode(text))
    local used = collectgarbage("count") - before
    collectgarbage("restart")
    return v, used
  end

  it("gives no object nested in another the size that one took, so a body's tables stay small", function()
    -- a large object, then 400 objects nested one in the next, each with one member,
    -- beginning as the large one did and under the same member name: each gets a table for
    -- the one member it has. A 100 KB string at the end gives the body room for large
    -- tables (one member per 4 bytes): only the sizes taken once keep them small.
    local parts = {}
    for i = 1, 64 do parts[i] = ('"%s":%d'):format(i == 1 and "a" or "b" .. i, i) end
    local text = '[{"a":{' .. table.concat(parts, ",") .. "}}," .. ('{"a":'):rep(400) .. "1" .. ("}"):rep(400)
      .. ',"' .. ("x"):rep(100000) .. '"]'
    assert.is_table(decode(text)) -- names and sizes remembered, as in the measured decode
    local v, used = measured(text)
    assert.equals(64, v[1].a.b64)
    assert.equals(100000, #v[3])
    local inner = v[2]
    for _ = 1, 399 do inner = inner.a end
    assert.equals(1, inner.a)
    assert.is_true(used < 300, ("the body took %.0f KB"):format(used))
  end)

  it("forgets a larger object's size two objects on", function()
    -- one object of 3 members, then 20,000 of one member in the same place: only the first two
    -- may be made for 3
    local small = "[" .. ('{"a":1},'):rep(19999) .. '{"a":1}]'
    assert.is_table(decode(small))
    local _, alone = measured(small)
    assert.is_table(decode('[{"a":1,"b":2,"c":3}]'))
    local v, after = measured(small)
    assert.equals(20000, #v)
    assert.is_true(after < 1.1 * alone, ("%.0f KB after the larger object, %.0f KB before"):format(after, alone))
  end)

  it("keeps a body's tables in proportion to its length whatever bodies came before", function()
    -- body A: objects of 64 members, each beginning with its own name; body B: objects of one
    -- member beginning with the same names, so each could be made for 64
    local a, b = {}, {}
    for i = 1, 700 do
      -- three letters, each its own: names that the decoder remembers in different places
      local name = string.char(97 + i % 26, 97 + math.floor(i / 26) % 26, 97 + math.floor(i / 676) % 26)
      local m = { ('"%s":0'):format(name) }
      for k = 2, 64 do m[k] = ('"m%d":0'):format(k) end
      a[i] = "{" .. table.concat(m, ",") .. "}"
      b[i] = ('{"%s":1}'):format(name)
    end
    local A, B = "[" .. table.concat(a, ",") .. "]", "[" .. table.concat(b, ",") .. "]"
    local function cost(text)
      local v, used = measured(text)
      assert.equals(700, #v)
      return used
    end
    assert.is_table(decode(B))
    local alone = cost(B)
    assert.is_table(decode(A))
    local after = cost(B)
    assert.is_true(after < 3 * alone, ("%.0f KB after A, %.0f KB after B"):format(after, alone))
  end)

  it("decodes a flat array of a million objects, and arrays of arrays that fill the stack", function()
    local v = assert(decode("[" .. ('{"a":1},'):rep(999999) .. '{"a":2}]'))
    assert.equals(1000000, #v)
    assert.equals(1, v[1].a)
    assert.equals(2, v[1000000].a)
    local nested = assert(decode('{"x":[' .. ("[1,[2,{}]],"):rep(300000) .. '[3]],"y":['
      .. ("0,"):rep(500000) .. "0]}"))
    assert.equals(300001, #nested.x)
    assert.equals(2, nested.x[300000][2][1])
    assert.equals(500001, #nested.y)
    local deep = ("[{\"k\":"):rep(200) .. "[" .. ("1,"):rep(999999) .. "1]" .. ("}]"):rep(200)
    local d = assert(decode(deep))
    for _ = 1, 200 do d = d[1].k end
    assert.equals(1000000, #d)
  end)

  it("marks arrays, so an empty one encodes back as []", function()
    local v = assert(decode('{"cmd":[],"env":{},"list":[1,[2,[]],"x"]}'))
    assert.is_true(json.is_array(v.cmd))
    assert.is_false(json.is_array(v.env))
    assert.same({ 1, { 2, {} }, "x" }, v.list)
    assert.equals('{"cmd":[]}', json.encode { cmd = v.cmd })
    assert.equals("{}", json.encode(v.env))
    assert.equals('[1,[2,[]],"x"]', json.encode(v.list))
  end)

  it("decodes null as fly.null (the light userdata NULL, cjson.null), and booleans", function()
    local v = assert(decode('[null,true,false]'))
    assert.equals(fly.null, v[1])
    assert.equals("userdata", type(fly.null))
    assert.equals(require("cjson").null, fly.null)
    assert.is_true(v[2])
    assert.is_false(v[3])
  end)

  it("decodes escapes, \\u escapes and surrogate pairs into UTF-8", function()
    local v = assert(decode([["a\"b\\c\/d\b\f\n\r\t \u0041\u00e9\u20ac\ud83d\ude00 ünï"]]))
    assert.equals('a"b\\c/d\b\f\n\r\t Aé€😀 ünï', v)
  end)

  local bad = {
    "", " ", "{", "}", "[1,]", "[1 2]", '{"a" 1}', '{"a":}', "{a:1}", "nul", "tru", "01", "1.", ".5", "-",
    "1e", '"abc', '"\\x"', '"\\u12"', '"\\ud800"', '"\\ude00"', '"a\nb"', "[1]x", "{}{}", "\"\0\"",
  }
  for _, text in ipairs(bad) do
    it(("rejects %q with a message naming the byte"):format(text), function()
      local v, err = decode(text)
      assert.is_nil(v)
      assert.matches("at byte %d+$", err)
    end)
  end

  it("refuses nesting deeper than it can hold, without crashing", function()
    local v, err = decode(("["):rep(100000) .. ("]"):rep(100000))
    assert.is_nil(v)
    assert.matches("nested too deeply", err)
    assert.is_table(decode(("["):rep(200) .. ("]"):rep(200)))
  end)

  it("decodes large objects and arrays", function()
    local parts = {}
    for i = 1, 5000 do parts[i] = ('"k%d":%d'):format(i, i) end
    local v = assert(decode("{" .. table.concat(parts, ",") .. "}"))
    assert.equals(5000, v.k5000)
    local arr = assert(decode("[" .. ("1,"):rep(99999) .. "1]"))
    assert.equals(100000, #arr)
  end)

  it("never crashes on random input", function()
    math.randomseed(42)
    local alphabet = '{}[]:,"\\0123456789.eE+-tfnrul \n\tabc\0\255'
    for _ = 1, 3000 do
      local n = math.random(0, 40)
      local t = {}
      for i = 1, n do
        local k = math.random(#alphabet)
        t[i] = alphabet:sub(k, k)
      end
      local v, err = decode(table.concat(t))
      assert.is_true(v ~= nil or type(err) == "string")
    end
  end)
end)

describe("JSON encoding", function()
  local encode, decode = json.encode, json.decode

  it("writes integers with all their digits", function()
    if compat.has_integers then
      assert.equals("[9007199254740993,123456789012345678,9223372036854775807,-9223372036854775808,0,-7]",
        encode { 9007199254740993, 123456789012345678, math.maxinteger, math.mininteger, 0, -7 })
    else -- whole doubles up to 2^53
      assert.equals("[9007199254740992,-9007199254740992,123456789012,0,-7]",
        encode { 2 ^ 53, -(2 ^ 53), 123456789012, 0, -7 })
    end
  end)

  it("writes floats in the fewest digits that read back the same", function()
    assert.equals("[0.1,1.2345678901234567,2.5,0.30000000000000004,1e+300,2,-0]",
      encode { 0.1, 1.2345678901234567, 2.5, 0.1 + 0.2, 1e300, 2.0, -0.0 })
    math.randomseed(7)
    for _ = 1, 20000 do
      local x = (math.random() - 0.5) * 10 ^ math.random(-300, 300)
      local text = encode(x)
      assert.equals(x, decode(text), text)
      assert.is_true(#text <= 24, text)
    end
    local hard = { 4.9e-324, 2.2250738585072011e-308, 2 ^ 53, 2 ^ 53 + 2, 2 ^ 63, 2 ^ 64, 1e21, 123456789.125, math.pi }
    for _, x in ipairs(hard) do
      assert.equals(x, decode(encode(x)))
    end
  end)

  it("reads back what it writes: a config survives a round trip unchanged", function()
    local config = { guest = { cpus = 2, memory_mb = 256, cpu_kind = "shared" }, ratio = 1.2345678901234567,
      env = { A = "x\"y", B = "line\nbreak", C = "\1\31\127 ünï 😀" }, cmd = fly.array(), none = fly.null,
      list = { 1, 2.5, "3", true, false, {} } }
    local again = assert(decode(encode(config)))
    assert.same(config, again)
    assert.same(again, assert(decode(encode(again))))
    assert.is_true(compat.is_integer(again.guest.cpus))
    assert.is_false(compat.is_integer(again.ratio))
  end)

  it("refuses NaN and infinities", function()
    for _, x in ipairs { 0 / 0, math.huge, -math.huge } do
      local ok, err = pcall(encode, { x = x })
      assert.is_false(ok)
      assert.matches("cannot encode", err)
    end
    assert.matches("cannot encode NaN as JSON", select(2, pcall(encode, { x = 0 / 0 })), 1, true)
  end)

  it("escapes quotes, backslashes and control characters; other bytes pass through", function()
    assert.equals('"a\\"b\\\\c/d\\b\\f\\n\\r\\t\\u0000\\u0001\\u001f\127 ünï 😀"',
      encode('a"b\\c/d\b\f\n\r\t\0\1\31\127 ünï 😀'))
    local all = {}
    for i = 0, 255 do all[#all + 1] = string.char(i) end
    all = table.concat(all)
    assert.equals(all, decode(encode(all)))
    assert.equals('{"k\\n\\"":1}', encode { ['k\n"'] = 1 })
  end)

  it("writes the same member name the same way however many names it has seen", function()
    local names = {}
    for i = 1, 10000 do names["k" .. i .. "\t"] = i end
    local v = assert(decode(encode(names)))
    assert.same(names, v)
  end)

  it("needs no lua-cjson: the module loads and encodes with it unavailable", function()
    local out = H.child([[
      for _, name in ipairs { "cjson", "cjson.safe" } do
        package.preload[name] = function() error("lua-cjson is not installed") end
      end
      local fly, json = require "fly", require "fly.json"
      print(json.encode { a = fly.null, b = fly.array(), c = 1.5 }, json.decode("null") == fly.null)
    ]])
    assert.equals('true', out:match("(%a+)%s*$"))
    assert.matches('"a":null', out)
    assert.matches('"b":%[%]', out)
  end)
end)


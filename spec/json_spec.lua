-- The JSON decoder of the C core (responses) and the encoder of request bodies.
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

  it("marks arrays, so an empty one encodes back as []", function()
    local v = assert(decode('{"cmd":[],"env":{},"list":[1,[2,[]],"x"]}'))
    assert.is_true(json.is_array(v.cmd))
    assert.is_false(json.is_array(v.env))
    assert.same({ 1, { 2, {} }, "x" }, v.list)
    assert.equals('{"cmd":[]}', json.encode { cmd = v.cmd })
    assert.equals("{}", json.encode(v.env))
    assert.equals('[1,[2,[]],"x"]', json.encode(v.list))
  end)

  it("decodes null as fly.null, and booleans", function()
    local v = assert(decode('[null,true,false]'))
    assert.equals(fly.null, v[1])
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

-- The emulator's fake shell: what `machines:exec("…")` (sent as sh -c "…") does against it.
local H = require "helper"

describe("the emulator's shell", function()
  local c, m
  setup(function()
    H.reset()
    H.config { delays = { transition = 0 } }
    c = H.client()
    local app = H.app(c)
    m = assert(c.machines:create(app, {
      config = { image = "nginx", env = { ROLE = "web", MOTD = "  two   words ", EMPTY = "" } },
    }))
    assert.equals("started", (m:wait("started", { timeout = 10 })))
  end)
  teardown(function() c:close() end)

  local function sh(script)
    local r = assert(m:exec(script))
    return r.stdout, r.exit_code, r.stderr
  end

  it("runs ';'-separated commands and newlines, with the last command's exit code", function()
    assert.same({ "a\nb\nc\n", 0, "" }, { sh("echo a; echo b\necho c") })
    assert.same({ "a\n", 1, "" }, { sh("echo a;false") })
    assert.same({ "", 0, "" }, { sh(" ; ;") })
  end)

  it("exits with exit N and runs nothing after it", function()
    assert.same({ "web\n", 3, "" }, { sh("echo $ROLE; exit 3") })
    assert.same({ "", 44, "" }, { sh("exit 300; echo no") })
    assert.same({ "", 1, "" }, { sh("false; exit") })
    local out, code, err = sh("exit nope")
    assert.same({ "", 2 }, { out, code })
    assert.matches("Illegal number: nope", err, 1, true)
  end)

  it("expands $VAR, ${VAR} and $? from the machine's environment", function()
    assert.equals("web-web.x\n", (sh("echo $ROLE-${ROLE}.x")))
    assert.equals(m.id .. "\n", (sh("echo $FLY_MACHINE_ID")))
    assert.equals("[] []\n", (sh("echo [$UNSET] [$EMPTY]")))
    assert.equals("1\n0\n", (sh("false; echo $?; echo $?")))
    assert.equals("$ cost\n", (sh("echo $ cost")))
  end)

  it("splits unquoted expansions into words and keeps quoted ones whole", function()
    assert.equals("[ two words ]\n", (sh("echo [$MOTD]")))
    assert.equals("[  two   words ]\n", (sh('echo "[$MOTD]"')))
    assert.equals("1\n", (sh("echo $UNSET $EMPTY 1")))
  end)

  it("quotes with '…', \"…\" and backslashes", function()
    assert.equals("$ROLE is web; a|b\n", (sh([[echo '$ROLE' is "$ROLE;" a\|b]])))
    assert.equals([[say "hi" $ROLE \ ok]] .. "\n", (sh([[echo "say \"hi\" \$ROLE \\ ok"]])))
    assert.equals("it's\n", (sh([[echo it\'s]])))
    assert.equals("a  b\n", (sh([[echo 'a  b']])))
    assert.equals(" x\n", (sh([[echo '' x]])))
  end)

  it("sets variables with NAME=value and ignores comments", function()
    assert.equals("db-1 web\n", (sh("N=1; X=db-$N; echo $X $ROLE # not printed")))
  end)

  it("runs sh -c inside sh -c, with its own exit", function()
    assert.same({ "in\nout\n", 0, "" }, { sh([[sh -c "echo in; exit 4"; echo out]]) })
    assert.same({ "", 4, "" }, { sh([[sh -c 'exit 4']]) })
  end)

  it("refuses what it does not do, naming the construct, before running anything", function()
    for script, construct in pairs {
      ["echo a | cat"] = "pipe '|'",
      ["echo a > /tmp/f"] = "redirection '>'",
      ["echo a 2>&1"] = "redirection '>'",
      ["cat < /etc/hosts"] = "redirection '<'",
      ["true && echo a"] = "'&&'",
      ["false || echo a"] = "'||'",
      ["sleep 1 &"] = "background job '&'",
      ["(echo a)"] = "subshell '('",
      ["echo $(hostname)"] = "command substitution '$('",
      ["echo `hostname`"] = "command substitution '`'",
      ["echo $((1 + 2))"] = "arithmetic '$(('",
      ["echo ${ROLE:-x}"] = "parameter expansion '${ROLE:-x}'",
      ["echo $1"] = "special parameter '$1'",
      ["if true; then echo a; fi"] = "'if'",
      ["for i in 1 2; do echo $i; done"] = "'for'",
    } do
      local out, code, err = sh("echo first; " .. script)
      assert.equals("", out, script)
      assert.equals(2, code, script)
      assert.equals("sh: unsupported by the emulator's shell: " .. construct
        .. " (the emulator's shell runs simple commands separated by ';', with quoting, $VAR and exit N)\n",
        err, script)
    end
    local out, code, err = sh("echo 'open")
    assert.same({ "", 2, "sh: syntax error: unterminated quoted string\n" }, { out, code, err })
  end)

  it("answers 127 for an unknown command, and lists a fixed tree", function()
    local out, code, err = sh("nosuch arg; echo $?")
    assert.same({ "127\n", 0, "nosuch: command not found\n" }, { out, code, err })
    assert.matches("^app\nbin\n", (sh("ls /")))
    assert.same({ "server\n", 0, "" }, { sh("ls /app/") })
    out, code, err = sh("ls /nope")
    assert.same({ "", 2, "ls: cannot access '/nope': No such file or directory\n" }, { out, code, err })
  end)

  it("runs an array command as it is, without a shell", function()
    assert.equals("$ROLE; exit 3\n", assert(m:exec { "echo", "$ROLE;", "exit", "3" }).stdout)
    local r = assert(m:exec { "env" })
    assert.matches("^EMPTY=\nMOTD=  two   words \nROLE=web\nFLY_MACHINE_ID=" .. m.id .. "\n$", r.stdout)
  end)
end)

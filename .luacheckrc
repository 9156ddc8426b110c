std = "lua54"
max_line_length = 120
files["spec/**/*.lua"] = { std = "+busted" }
files["spec/emulator/**/*.lua"] = { std = "luajit", globals = { "ngx" } }
files["bench/**/*.lua"] = {}
files["spec/compat-smoke.lua"] = { std = "luajit" }

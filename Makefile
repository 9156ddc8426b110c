# fly-machines: build, test, demo and benchmark on Debian 12.
#
#   make test         install what is missing, build, run every spec against the emulator
#   make demo         build, start the emulator, run examples/quickstart.lua, stop it
#   make test-tls     the same suite against the emulator over TLS with HTTP/2
#   make test-reuse   the #reuse specs (unsafe calls on warm connections), over TLS and plain HTTP
#   make check-asan   the whole spec suite against an ASan/UBSan build of the core
#   make check-tsan   ThreadSanitizer on Lua states sharing rate-limit buckets across threads
#   make check-compat the core against Lua 5.1 and LuaJIT headers, loaded under LuaJIT
#   make lint         luacheck
#   make bench        benchmarks (not tests)
#   make emulator     run the emulator in the foreground, for exploring with curl
#   make install      install the rock for Lua 5.4 with luarocks

LUA      ?= lua5.4
CC       ?= cc
PKGS     := lua5.4 liblua5.4-dev libcurl4-openssl-dev pkg-config lua-cjson lua-busted lua-check lua-socket \
            nginx libnginx-mod-http-lua luarocks lua-luv curl openssl gcc make \
            liblua5.1-0-dev libluajit2-5.1-dev luajit2
CFLAGS   ?= -O2 -g
WARN     := -std=gnu11 -Wall -Wextra -Werror
SANITIZE := -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=all
DEPCFLAGS = $(shell pkg-config --cflags lua5.4 libcurl)
LIBS      = $(shell pkg-config --libs libcurl) -lpthread -lm
SRC      := $(wildcard csrc/*.c)
HDR      := $(wildcard csrc/*.h)

export LUA_PATH  := $(CURDIR)/lua/?.lua;$(CURDIR)/lua/?/init.lua;$(CURDIR)/spec/?.lua;;
export LUA_CPATH := $(CURDIR)/build/?.so;;

.PHONY: all setup build test demo check-asan check-tsan check-compat lint bench emulator install clean

all: build

# Installs the Debian packages that are missing (needs root, as on a fresh machine).
setup:
	@missing=""; for p in $(PKGS); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get update -qq && apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

build: setup build/fly/core.so

build/fly/core.so: $(SRC) $(HDR)
	@mkdir -p build/fly
	$(CC) $(CFLAGS) $(WARN) -fPIC -shared $(DEPCFLAGS) $(SRC) -o $@ $(LIBS)

build/spec/threads: spec/threads.c
	@mkdir -p build/spec
	$(CC) $(CFLAGS) $(WARN) $(DEPCFLAGS) $< -o $@ $(shell pkg-config --libs lua5.4) -lpthread

test: build build/spec/threads
	@spec/run

demo: build
	@spec/emulator/with-emulator $(LUA) examples/quickstart.lua

# The same suite, with the core built under AddressSanitizer and
# UndefinedBehaviorSanitizer; any report fails the run. use_tls=0: LeakSanitizer's
# scan of dynamic thread-local storage can crash its tracer after lua_close unloads
# libcurl's libraries (libgnutls's destructor first touches its TLS while it is
# unloaded); the core keeps nothing in thread-local storage.
check-asan: setup
	@mkdir -p build/asan/fly
	$(CC) $(SANITIZE) $(WARN) -fPIC -shared $(DEPCFLAGS) $(SRC) -o build/asan/fly/core.so $(LIBS)
	$(CC) $(SANITIZE) $(WARN) $(DEPCFLAGS) spec/sanitized-lua.c -o build/asan/lua $(shell pkg-config --libs lua5.4)
	$(CC) $(SANITIZE) $(WARN) $(DEPCFLAGS) spec/threads.c -o build/asan/threads $(shell pkg-config --libs lua5.4) -lpthread
	@FLY_SPEC_LUA="$(CURDIR)/build/asan/lua" FLY_SPEC_THREADS="$(CURDIR)/build/asan/threads" \
	  LUA_CPATH="$(CURDIR)/build/asan/?.so;;" \
	  ASAN_OPTIONS="detect_leaks=1:halt_on_error=1:exitcode=66" \
	  LSAN_OPTIONS="suppressions=$(CURDIR)/spec/lsan.supp:print_suppressions=0:use_tls=0" \
	  UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1" \
	  spec/run

# ThreadSanitizer on the process-wide state: several Lua states on several
# threads share the rate-limit buckets (spec/threads.c runs spec/tsan-smoke.lua).
check-tsan: setup
	@mkdir -p build/tsan/fly
	$(CC) -O1 -g -fsanitize=thread $(WARN) -fPIC -shared $(DEPCFLAGS) $(SRC) -o build/tsan/fly/core.so $(LIBS)
	$(CC) -O1 -g -fsanitize=thread $(WARN) $(DEPCFLAGS) spec/threads.c -o build/tsan/threads \
	  $(shell pkg-config --libs lua5.4) -lpthread
	@LUA_CPATH="$(CURDIR)/build/tsan/?.so;;" TSAN_OPTIONS="halt_on_error=1:exitcode=66" \
	  spec/emulator/with-emulator build/tsan/threads 4 spec/tsan-smoke.lua && echo "check-tsan: clean"

# The core against the Lua 5.1 and LuaJIT headers (the compat shims), then
# loaded and driven under LuaJIT.
check-compat: setup
	@mkdir -p build/luajit/fly
	$(CC) $(CFLAGS) $(WARN) -fsyntax-only -I/usr/include/lua5.1 $(SRC)
	$(CC) $(CFLAGS) $(WARN) -fPIC -shared -I/usr/include/luajit-2.1 $(SRC) -o build/luajit/fly/core.so $(LIBS)
	LUA_CPATH="$(CURDIR)/build/luajit/?.so" luajit spec/compat-smoke.lua

lint: setup
	luacheck lua spec examples bench

bench: build
	@bench/run

emulator: setup
	@spec/emulator/run --foreground

install: build
	luarocks --lua-version=5.4 make --deps-mode=none rockspec/fly-machines-scm-1.rockspec

clean:
	rm -rf build

# The core built for LuaJIT, where nginx's Lua module (OpenResty) loads it from:
# lua_package_cpath "$(CURDIR)/build/luajit/?.so;;".
.PHONY: luajit
luajit: setup build/luajit/fly/core.so

build/luajit/fly/core.so: $(SRC) $(HDR)
	@mkdir -p build/luajit/fly
	$(CC) $(CFLAGS) $(WARN) -fPIC -shared -I/usr/include/luajit-2.1 $(SRC) -o $@ $(LIBS)

# The whole suite against the emulator over TLS + HTTP/2 (spec/emulator/run --tls); clients
# made by spec/helper.lua trust its CA.
.PHONY: test-tls test-reuse
test-tls: build build/spec/threads
	@FLY_SPEC_TLS=1 spec/run

# The #reuse specs, which .busted leaves out of the default run (spec/connections_reuse_spec.lua).
test-reuse: build
	@spec/run --exclude-tags=none --tags=reuse spec/connections_reuse_spec.lua

# fly-machines: build, test, demo and benchmark on Debian 12.
#
#   make build        the core only, for $(LUA) (installs, when missing, only what compiling needs)
#   make test         install what is missing, build (also for LuaJIT: the nginx specs), run every
#                     spec against the emulator
#   make test LUA=luajit   the same under another Lua: lua5.1, lua5.2, lua5.3, lua5.4 (default), luajit
#   make demo         build, start the emulator, run examples/quickstart.lua, stop it
#   make test-tls     the same suite against the emulator over TLS with HTTP/2
#   make test-reuse   only the #reuse specs (unsafe calls on warm connections, over TLS and plain HTTP)
#   make check-asan   the whole spec suite against an ASan/UBSan build of the core
#   make check-tsan   ThreadSanitizer on Lua states sharing rate-limit buckets across threads
#   make smoke LUA=…  a few spec files (calls, tasks, map, json, a whole workflow) under that Lua
#   make luajit       the core for LuaJIT (make build LUA=luajit)
#   make check-valgrind the whole spec suite with the core under valgrind memcheck
#   make fuzz         libFuzzer targets, side by side for FUZZ_SECONDS (default 60)
#   make lint         luacheck
#   make bench        benchmarks (not tests)
#   make emulator     run the emulator in the foreground, for exploring with curl
#   make install      install the rock with luarocks, for $(LUA) (default 5.4)

# The Lua to build and test for: its interpreter and its pkg-config name are
# both called this. Lua 5.4 builds into build/, any other into build/$(LUA)/.
LUA      ?= lua5.4
LUAS     := lua5.1 lua5.2 lua5.3 lua5.4 luajit
ifeq ($(filter $(LUA),$(LUAS)),)
$(error LUA must be one of: $(LUAS))
endif
ifeq ($(LUA),lua5.4)
OUT      := build
else
OUT      := build/$(LUA)
endif
# the Lua version luarocks knows it by (LuaJIT is a Lua 5.1)
ROCKLUA  := $(if $(filter luajit,$(LUA)),5.1,$(patsubst lua%,%,$(LUA)))
CC       ?= cc
PKGS     := lua5.4 liblua5.4-dev libcurl4-openssl-dev libssl-dev pkg-config lua-cjson lua-busted lua-check lua-socket \
            nginx libnginx-mod-http-lua luarocks lua-luv curl openssl gcc make \
            lua5.1 liblua5.1-0-dev lua5.2 liblua5.2-dev lua5.3 liblua5.3-dev libluajit2-5.1-dev luajit2 \
            lua-resty-core ca-certificates
CFLAGS   ?= -O2 -g
WARN     := -std=gnu11 -Wall -Wextra -Werror
SANITIZE := -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=all
DEPCFLAGS = $(shell pkg-config --cflags $(LUA) libcurl openssl)
LIBS      = $(shell pkg-config --libs libcurl openssl) -lpthread -lm
SRC      := $(wildcard csrc/*.c)
HDR      := $(wildcard csrc/*.h)
# the smoke run: calls, tasks, map, json
SMOKE    := spec/call_spec.lua spec/tasks_spec.lua spec/apps_spec.lua spec/json_spec.lua spec/machines_spec.lua \
            spec/errors_spec.lua spec/compat_spec.lua spec/scenario_spec.lua

export LUA_PATH  := $(CURDIR)/lua/?.lua;$(CURDIR)/lua/?/init.lua;$(CURDIR)/spec/?.lua;;
export LUA_CPATH := $(CURDIR)/$(OUT)/?.so;;
# the interpreter spec/run, the examples and child processes of the specs use
export FLY_SPEC_LUA := $(LUA)
export FLY_SPEC_THREADS := $(CURDIR)/$(OUT)/spec/threads

.PHONY: all setup build-deps build test smoke demo check-asan check-tsan check-valgrind fuzz luajit lint bench emulator install clean

all: build

# What compiling the core for $(LUA) needs: `make build` installs only these (when missing).
LUADEV_lua5.1 := liblua5.1-0-dev
LUADEV_lua5.2 := liblua5.2-dev
LUADEV_lua5.3 := liblua5.3-dev
LUADEV_lua5.4 := liblua5.4-dev
LUADEV_luajit := libluajit2-5.1-dev
BUILD_PKGS := gcc make pkg-config libcurl4-openssl-dev libssl-dev libhiredis-dev $(LUADEV_$(LUA))

# Installs the Debian packages of $(1) that are missing (needs root, as on a fresh machine).
define install_missing
	@missing=""; for p in $(1); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get update -qq && apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi
endef

# everything the specs, the demo, the benchmarks and the quality gates use
setup:
	$(call install_missing,$(PKGS))

# after setup when a goal needs both (make -j would otherwise run two apt-gets at once)
SETUP_GOALS := setup test test-tls test-reuse smoke demo bench install check-valgrind check-asan check-tsan \
               check-redis-asan fuzz lint emulator
build-deps: $(if $(filter $(SETUP_GOALS),$(MAKECMDGOALS)),setup)
	$(call install_missing,$(BUILD_PKGS))

build: build-deps $(OUT)/fly/core.so

# each Lua has a directory of its own, so a change of LUA never reuses another Lua's core
$(OUT)/fly/core.so: $(SRC) $(HDR)
	@mkdir -p $(OUT)/fly
	$(CC) $(CFLAGS) $(WARN) -fPIC -shared $(DEPCFLAGS) $(SRC) -o $@ $(LIBS)

$(OUT)/spec/threads: spec/threads.c
	@mkdir -p $(OUT)/spec
	$(CC) $(CFLAGS) $(WARN) $(DEPCFLAGS) $< -o $@ $(shell pkg-config --libs $(LUA)) -lpthread

test: setup build $(OUT)/spec/threads
	@[ "$(LUA)" = luajit ] || $(MAKE) --no-print-directory build LUA=luajit
	@spec/run

smoke: setup build
	@spec/run $(SMOKE)

# the LuaJIT core, into build/luajit/fly/core.so, where nginx's Lua module (OpenResty) loads it
# from: lua_package_cpath "$(CURDIR)/build/luajit/?.so;;"
luajit:
	@$(MAKE) --no-print-directory build LUA=luajit

demo: setup build
	@spec/emulator/with-emulator $(LUA) examples/quickstart.lua

# The same suite, with the core built under AddressSanitizer and
# UndefinedBehaviorSanitizer; any report fails the run. use_tls=0: LeakSanitizer's
# scan of dynamic thread-local storage can crash its tracer after lua_close unloads
# libcurl's libraries (libgnutls's destructor first touches its TLS while it is
# unloaded); the core keeps nothing in thread-local storage.
check-asan: override LUA := lua5.4
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
	  FLY_SPEC_EXCLUDE=nginx,driver spec/run

# ThreadSanitizer on the process-wide state: several Lua states on several
# threads share the rate-limit buckets (spec/threads.c runs spec/tsan-smoke.lua).
check-tsan: override LUA := lua5.4
check-tsan: setup
	@mkdir -p build/tsan/fly
	$(CC) -O1 -g -fsanitize=thread $(WARN) -fPIC -shared $(DEPCFLAGS) $(SRC) -o build/tsan/fly/core.so $(LIBS)
	$(CC) -O1 -g -fsanitize=thread $(WARN) $(DEPCFLAGS) spec/threads.c -o build/tsan/threads \
	  $(shell pkg-config --libs lua5.4) -lpthread
	@LUA_CPATH="$(CURDIR)/build/tsan/?.so;;" TSAN_OPTIONS="halt_on_error=1:exitcode=66" \
	  spec/emulator/with-emulator build/tsan/threads 4 spec/tsan-smoke.lua && echo "check-tsan: clean"

lint: setup
	luacheck lua spec examples bench

bench: setup build
	@[ "$(LUA)" = luajit ] || $(MAKE) --no-print-directory build LUA=luajit
	@bench/run

emulator: setup
	@spec/emulator/run --foreground

install: setup build
	luarocks --lua-version=$(ROCKLUA) make --deps-mode=none rockspec/fly-machines-scm-1.rockspec

clean:
	rm -rf build

# The whole suite against the emulator over TLS + HTTP/2 (spec/emulator/run --tls); clients
# made by spec/helper.lua trust its CA.
.PHONY: test-tls test-reuse
test-tls: setup build $(OUT)/spec/threads
	@[ "$(LUA)" = luajit ] || $(MAKE) --no-print-directory build LUA=luajit
	@FLY_SPEC_TLS=1 FLY_SPEC_EXCLUDE=nginx,driver spec/run

# Only the #reuse specs (spec/connections_reuse_spec.lua; both test and test-tls run them too).
test-reuse: setup build
	@spec/run --tags=reuse spec/connections_reuse_spec.lua

# --- fuzzing and valgrind
PKGS += clang valgrind

# The whole spec suite with lua5.4 (and so the core) under valgrind memcheck:
# any memory error or definitely lost block fails it (spec/valgrind-lua,
# suppressions in spec/valgrind.supp). About 3-4 minutes on 2 cores. Left out:
# #nginx (nginx's LuaJIT loads its own core) and #timing (real-time pacing across
# processes, which valgrind's slowdown breaks, not memory checks).
check-valgrind: setup build build/spec/threads
	@FLY_SPEC_EXCLUDE=nginx,timing,driver FLY_SPEC_LUA="$(CURDIR)/spec/valgrind-lua" spec/run && echo "check-valgrind: clean"

# libFuzzer targets (fuzz/<name>_fuzz.c), built with clang under ASan and
# UBSan and run side by side (one process each) for FUZZ_SECONDS, from the seeds in
# fuzz/corpus/<name> (read only) into build/fuzz/corpus/<name>. A crash
# leaves its input in build/fuzz/ and fails the target.
FUZZ_SECONDS ?= 60
FUZZ_TARGETS := json classify
FUZZ_CC      ?= clang
FUZZ_FLAGS   := -g -O1 -fno-omit-frame-pointer -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all
LUA_LIBS      = $(shell pkg-config --libs lua5.4)

build/fuzz/json: fuzz/json_fuzz.c csrc/json.c csrc/json.h csrc/compat.h
	@mkdir -p build/fuzz
	$(FUZZ_CC) $(FUZZ_FLAGS) $(WARN) $(DEPCFLAGS) -Icsrc fuzz/json_fuzz.c csrc/json.c -o $@ $(LUA_LIBS) -lm

build/fuzz/classify: fuzz/classify_fuzz.c csrc/classify.c csrc/classify.h csrc/operations.c csrc/operations.h \
                     csrc/ratelimit.c csrc/ratelimit.h
	@mkdir -p build/fuzz
	$(FUZZ_CC) $(FUZZ_FLAGS) $(WARN) -Icsrc fuzz/classify_fuzz.c csrc/classify.c csrc/operations.c csrc/ratelimit.c \
	  -o $@ -lpthread -lm

fuzz: setup $(FUZZ_TARGETS:%=build/fuzz/%)
	@for t in $(FUZZ_TARGETS); do \
	  mkdir -p build/fuzz/corpus/$$t; \
	  dict=; [ -f fuzz/$$t.dict ] && dict=-dict=fuzz/$$t.dict; \
	  echo "fuzz: $$t for $(FUZZ_SECONDS) s"; \
	  { build/fuzz/$$t -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 -artifact_prefix=build/fuzz/$$t- \
	      $$dict build/fuzz/corpus/$$t fuzz/corpus/$$t 2>build/fuzz/$$t.log; \
	    echo $$? >build/fuzz/$$t.status; } & \
	done; wait; \
	failed=0; for t in $(FUZZ_TARGETS); do \
	  if [ "$$(cat build/fuzz/$$t.status)" = 0 ]; then \
	    echo "fuzz: $$t"; grep -E "stat::number_of_executed_units|Done" build/fuzz/$$t.log; \
	  else \
	    echo "fuzz: $$t FAILED"; tail -n 60 build/fuzz/$$t.log; failed=1; \
	  fi; \
	done; exit $$failed

# ---------------------------------------------------------------- Redis
# The shared rate limiter (csrc/redis.c) talks to Redis through Debian's
# hiredis and names buckets with OpenSSL's SHA-256 (libcurl already loads
# libcrypto). redis-server runs the specs' Redis (spec/redis/start). lua-nginx-redis
# (lua-resty-redis) carries fly.ngx.redis under OpenResty.
PKGS += libhiredis-dev libssl-dev redis-server redis-tools lua-nginx-redis
LIBS += -lhiredis -lcrypto

build/spec/redis-driver: spec/redis/driver.c csrc/redis.c csrc/redis.h csrc/ratelimit.c csrc/ratelimit.h
	@mkdir -p build/spec
	$(CC) $(CFLAGS) $(WARN) $< csrc/redis.c csrc/ratelimit.c -o $@ $(LIBS)

# an LD_PRELOAD resolver that is slow for one name (spec/redis_spec.lua, spec/redis_client_spec.lua)
build/spec/slow-resolver.so: spec/redis/slow-resolver.c
	@mkdir -p build/spec
	$(CC) $(CFLAGS) $(WARN) -fPIC -shared $< -o $@ -ldl

test test-tls check-asan check-valgrind: build/spec/redis-driver build/spec/slow-resolver.so

# The Redis limiter's specs with the driver under ASan/UBSan (spec/redis/start
# runs their redis-server; the helper starts an emulator for the one that needs it).
check-redis-asan: setup build/spec/slow-resolver.so
	@mkdir -p build/asan
	$(CC) $(SANITIZE) $(WARN) spec/redis/driver.c csrc/redis.c csrc/ratelimit.c -o build/asan/redis-driver $(LIBS)
	@FLY_SPEC_REDIS_DRIVER="$(CURDIR)/build/asan/redis-driver" \
	  ASAN_OPTIONS="detect_leaks=1:halt_on_error=1:exitcode=66" UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1" \
	  LSAN_OPTIONS="suppressions=$(CURDIR)/spec/lsan.supp:print_suppressions=0" \
	  $(LUA) /usr/bin/busted --tags=driver spec/redis_spec.lua spec/redis_hostile_spec.lua

.PHONY: check-redis-asan

/* Runs one Lua script in several Lua states at once, one state per thread,
 * as a game server embedding the client would. Used by spec/threads_spec.lua
 * to show that rate-limit buckets are shared process-wide and that nothing
 * else leaks between states.
 *
 * Usage: threads N SCRIPT [LINGER]   (the script gets the thread's index as `...`)
 * With LINGER, the process stays LINGER seconds after every state is closed
 * (closing a state unloads the C modules it loaded), as a host that goes on
 * running does. Exits 0 when every state ran the script without error. */
#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

typedef struct {
  const char *script;
  int index;
  int ok;
} job;

static void *run(void *ud) {
  job *j = ud;
  lua_State *L = luaL_newstate();
  luaL_openlibs(L);
  j->ok = luaL_loadfile(L, j->script) == 0;
  if (j->ok) {
    lua_pushinteger(L, j->index);
    j->ok = lua_pcall(L, 1, 0, 0) == 0;
  }
  if (!j->ok) fprintf(stderr, "thread %d: %s\n", j->index, lua_tostring(L, -1));
  lua_close(L);
  return NULL;
}

int main(int argc, char **argv) {
  if ((argc != 3 && argc != 4) || atoi(argv[1]) < 1) {
    fprintf(stderr, "usage: %s N SCRIPT [LINGER]\n", argv[0]);
    return 2;
  }
  int n = atoi(argv[1]), failed = 0;
  pthread_t *t = calloc((size_t)n, sizeof *t);
  job *jobs = calloc((size_t)n, sizeof *jobs);
  if (!t || !jobs) return 2;
  for (int i = 0; i < n; i++) {
    jobs[i] = (job){argv[2], i + 1, 0};
    if (pthread_create(&t[i], NULL, run, &jobs[i]) != 0) return 2;
  }
  for (int i = 0; i < n; i++) {
    pthread_join(t[i], NULL);
    failed += !jobs[i].ok;
  }
  free(t);
  free(jobs);
  if (argc == 4) sleep((unsigned)atoi(argv[3]));
  return failed ? 1 : 0;
}

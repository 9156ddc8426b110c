/* The libcurl transport: one multi handle per client, a pool of easy
 * handles, and the loop the Lua layer drives (step, wait, host-loop hooks). */
#ifndef FLY_CURL_H
#define FLY_CURL_H

#include <lua.h>

#include "client.h"

/* Opens the client's transport (after its headers are built); 0 on OOM. */
int fly_curl_open(fly_client *c);
/* Frees it; the client's live requests must be ended first. */
void fly_curl_close(fly_client *c);
/* Stops the request's transfer if one runs and gives its handle back. */
void fly_curl_stop(fly_request *r);
/* Copies what the transport knows of the request's open attempt into its
 * reply (how many times libcurl resent it), for an attempt cut short. */
void fly_curl_note(fly_request *r);
/* Whether the transfer of a request in flight has begun sending it (on_prereq ran). */
int fly_curl_went_out(const fly_request *r);
/* Frees what the transport keeps per request (from its __gc). */
void fly_curl_request_free(fly_request *r);
/* curl_global_init, once per process. */
void fly_curl_global_init(void);
/* The libcurl version string. */
const char *fly_curl_version(void);

int fly_l_submit(lua_State *L);
int fly_l_timer(lua_State *L);
int fly_l_step(lua_State *L);
int fly_l_step_until(lua_State *L);
int fly_l_wait(lua_State *L);
int fly_l_timeout(lua_State *L);
int fly_l_sockets(lua_State *L);

#endif

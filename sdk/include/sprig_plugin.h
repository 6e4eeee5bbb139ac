/*
 * sprig_plugin.h: the C ABI of sprig recovery-handler plugins, ABI version 1.
 *
 * The same ABI as the Rust crate sprig-sdk (module sprig_sdk::abi, whose rustdoc is the reference; a
 * test of the sdk compiles this header and checks every size and offset against the Rust layout). A
 * plugin is a shared library exporting one data symbol, SPRIG_PLUGIN_DESCRIPTOR, a SprigDescriptor:
 *
 *     const SprigDescriptor SPRIG_PLUGIN_DESCRIPTOR = {
 *         .abi_version = SPRIG_ABI_VERSION,
 *         .size = sizeof(SprigDescriptor),
 *         .sdk_version = SPRIG_BYTES_LITERAL(SPRIG_SDK_VERSION),
 *         .name = SPRIG_BYTES_LITERAL("my-plugin"),
 *         .version = SPRIG_BYTES_LITERAL("1.0.0"),
 *         .create = my_create, .recover = my_recover, .destroy = my_destroy, .free = my_free,
 *         .set_host = my_set_host,  // may be NULL
 *     };
 *
 * Build: cc -shared -fPIC -o libmy_plugin.so plugin.c -I path/to/sdk/include
 * Check: sprig plugin check libmy_plugin.so
 *
 * Rules (sprig_sdk::abi has them in full):
 * - The host reads abi_version first and refuses any other version than its own, naming both.
 * - Fields are only ever appended to SprigDescriptor and SprigHostApi, never removed or reordered, and
 *   `size` says how many bytes of the struct exist: a host accepts a descriptor of at least
 *   SPRIG_DESCRIPTOR_V1_SIZE bytes and reads no field beyond `size`; a plugin reads no SprigHostApi
 *   field beyond its `size`. That is why appending (set_host, log) did not change SPRIG_ABI_VERSION.
 * - Strings and JSON cross as SprigBytes (pointer + length, UTF-8, not NUL-terminated). What the host
 *   passes in (config, context) is the host's, valid only during the call. What the plugin hands out
 *   (answers, messages) is the plugin's: the host copies it and gives it back to the plugin's `free`.
 * - create, recover and destroy of one instance are called from one thread, one call at a time;
 *   different instances may be called concurrently from different threads. free may be called from any
 *   thread. set_host is called once, before the first create.
 * - Config and context are JSON (context: {"thingName", "jobId", "namespaceId", "jobDocument",
 *   "executionStatus", "statusDetails", "reason", "attempt", "acknowledged", "acknowledgement"}; unknown
 *   fields may be added, ignore them). An answer is JSON: {"actions": [{"type": "publish", "topic": …,
 *   "payload": …, "qos": 0|1}, {"type": "setStatusDetails", "statusDetails": {…}}], "outcome":
 *   {"type": "recovered"} | {"type": "retryLater", "afterMs": N} | {"type": "failed", "reason": …}}.
 *   Publish only under the device's own $aws/things/{thingName}/ topics.
 * - By default a plugin runs in a host process of its own (a crash ends only that process); with
 *   isolation = "in-process" a crash in C code takes the gateway down.
 */
#ifndef SPRIG_PLUGIN_H
#define SPRIG_PLUGIN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The ABI version this header describes (sprig_sdk::ABI_VERSION). */
#define SPRIG_ABI_VERSION 1u
/* The sprig-sdk version this header comes with (sprig_sdk::abi::SDK_VERSION), for sdk_version. */
#define SPRIG_SDK_VERSION "0.1.0"
/* The name of the symbol every plugin exports. */
#define SPRIG_DESCRIPTOR_SYMBOL "SPRIG_PLUGIN_DESCRIPTOR"

/* Status codes of create and recover. */
#define SPRIG_STATUS_OK 0    /* the out-parameters hold the result */
#define SPRIG_STATUS_ERROR 1 /* the handler failed; the out buffer holds a UTF-8 message */
#define SPRIG_STATUS_PANIC 2 /* the handler crashed in a way it caught (Rust: a panic); a message */

/* Log levels of SprigLogFn, the most severe first; other values log as info. */
#define SPRIG_LOG_ERROR 1u
#define SPRIG_LOG_WARN 2u
#define SPRIG_LOG_INFO 3u
#define SPRIG_LOG_DEBUG 4u
#define SPRIG_LOG_TRACE 5u
/* The most bytes of a log message the host keeps; it cuts the rest and says so. */
#define SPRIG_MAX_LOG_MESSAGE 4096u

/* A byte string: len bytes at ptr (ptr may be NULL only when len is 0). */
typedef struct SprigBytes {
    const uint8_t *ptr;
    size_t len;
} SprigBytes;

/* A SprigBytes of a string literal (without its NUL). */
#define SPRIG_BYTES_LITERAL(text) \
    { (const uint8_t *)(text), sizeof(text) - 1 }

struct SprigHostApi;

/* create(config, out_instance, out_message) -> status: makes an instance from its config (JSON). On
 * SPRIG_STATUS_OK *out_instance is the new instance and *out_message is left empty; otherwise
 * *out_message is a plugin-owned message (given back to free). */
typedef int32_t (*SprigCreateFn)(SprigBytes config, void **out_instance, SprigBytes *out_message);

/* recover(instance, context, out) -> status: one recovery attempt. context is JSON; on SPRIG_STATUS_OK
 * *out is the JSON answer, otherwise a message; either way plugin-owned (given back to free). */
typedef int32_t (*SprigRecoverFn)(void *instance, SprigBytes context, SprigBytes *out);

/* destroy(instance): releases an instance made by create; nothing is called on it afterwards. */
typedef void (*SprigDestroyFn)(void *instance);

/* free(bytes): gives back a buffer the plugin handed out. */
typedef void (*SprigFreeFn)(SprigBytes bytes);

/* log(host, level, message): one line for the gateway's log, which shows it with the plugin's name, its
 * route and the level. host is the pointer set_host received; message is UTF-8, the plugin's, read only
 * during the call. Callable from any thread, at any time after set_host; returns quickly (the host keeps
 * at most SPRIG_MAX_LOG_MESSAGE bytes and drops lines over its rate limit, counting them). */
typedef void (*SprigLogFn)(const struct SprigHostApi *host, uint32_t level, SprigBytes message);

/* What the host offers the plugin. Read a field only if size covers it (sprig_host_log does). */
typedef struct SprigHostApi {
    size_t size; /* sizeof(SprigHostApi) as the host built it */
    SprigLogFn log; /* may be NULL */
} SprigHostApi;

/* set_host(host): the host's services; host stays valid until the process ends: keep the pointer.
 * Called once per loaded library, before the first create, from any thread; a host older than this
 * field never calls it, so a plugin must work without it. */
typedef void (*SprigSetHostFn)(const SprigHostApi *host);

/* The descriptor, exported as SPRIG_PLUGIN_DESCRIPTOR. */
typedef struct SprigDescriptor {
    uint32_t abi_version;   /* SPRIG_ABI_VERSION; always the first field */
    uint32_t size;          /* sizeof(SprigDescriptor) as the plugin was built; always the second */
    SprigBytes sdk_version; /* SPRIG_SDK_VERSION (informational) */
    SprigBytes name;        /* the plugin's name in the gateway's logs, errors and counters; not empty */
    SprigBytes version;     /* the plugin's version */
    SprigCreateFn create;   /* not NULL */
    SprigRecoverFn recover; /* not NULL */
    SprigDestroyFn destroy; /* not NULL */
    SprigFreeFn free;       /* not NULL */
    /* Appended to ABI version 1 (compatible): */
    SprigSetHostFn set_host; /* may be NULL */
} SprigDescriptor;

/* The size of ABI version 1's first descriptor (up to free): the least a host accepts. */
#define SPRIG_DESCRIPTOR_V1_SIZE (offsetof(SprigDescriptor, set_host))

/* The host's log callback, if host is set and its size covers the field; else NULL. */
static inline SprigLogFn sprig_host_log(const SprigHostApi *host) {
    if (host == NULL || host->size < offsetof(SprigHostApi, log) + sizeof(SprigLogFn)) {
        return NULL;
    }
    return host->log;
}

#ifdef __cplusplus
}
#endif

#endif /* SPRIG_PLUGIN_H */

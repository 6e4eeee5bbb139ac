/*
 * sprig-plugin-c-example: a sprig recovery handler in C, against sdk/include/sprig_plugin.h only.
 *
 * For each interrupted device it publishes a rollback command on $aws/things/{thing}/rollback,
 * {"jobId":"…","action":"rollback","by":"c-example"}, and answers "recovered"; it logs what it does
 * through the host's log callback. Config: none needed; "action" (a string of [a-z_-]) replaces
 * "rollback" in the command.
 *
 * Build: cc -shared -fPIC -o libsprig_plugin_c_example.so plugin.c -I ../../sdk/include
 */
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sprig_plugin.h"

/* The host's services, set once before the first create; read from any thread. */
static _Atomic(const SprigHostApi *) host_api = NULL;

static void set_host(const SprigHostApi *host) { atomic_store(&host_api, host); }

/* Logs one line through the host's callback; without one (an older host), to stderr, which a plugin
 * host forwards to the gateway's log as it is. */
static void log_line(uint32_t level, const char *format, ...) {
    char line[512];
    va_list args;
    va_start(args, format);
    int written = vsnprintf(line, sizeof line, format, args);
    va_end(args);
    if (written < 0) {
        return;
    }
    size_t len = (size_t)written < sizeof line ? (size_t)written : sizeof line - 1;
    const SprigHostApi *host = atomic_load(&host_api);
    SprigLogFn log = sprig_host_log(host);
    if (log != NULL) {
        SprigBytes message = {(const uint8_t *)line, len};
        log(host, level, message);
    } else {
        fprintf(stderr, "%s\n", line);
    }
}

/* A buffer the host gives back to plugin_free: what malloc made. */
static SprigBytes hand_out(char *text) {
    SprigBytes bytes = {(const uint8_t *)text, text == NULL ? 0 : strlen(text)};
    return bytes;
}

static SprigBytes message(const char *text) {
    char *copy = malloc(strlen(text) + 1);
    if (copy != NULL) {
        strcpy(copy, text);
    }
    return hand_out(copy);
}

/*
 * The string value of "field" in a compact JSON object, copied into out (NUL-terminated). Naive on
 * purpose, to stay dependency-free: it expects the gateway's compact JSON ("field":"value") and values
 * without escapes, which holds for thing names and job ids (AWS allows [a-zA-Z0-9_:-] only). A real
 * plugin would use a JSON parser.
 */
static int string_field(SprigBytes json, const char *field, char *out, size_t out_size) {
    char key[64];
    int key_len = snprintf(key, sizeof key, "\"%s\":\"", field);
    if (key_len < 0 || (size_t)key_len >= sizeof key || json.len < (size_t)key_len) {
        return -1;
    }
    for (size_t at = 0; at + (size_t)key_len <= json.len; at++) {
        if (memcmp(json.ptr + at, key, (size_t)key_len) != 0) {
            continue;
        }
        size_t start = at + (size_t)key_len, end = start;
        while (end < json.len && json.ptr[end] != '"' && json.ptr[end] != '\\') {
            end++;
        }
        if (end >= json.len || json.ptr[end] != '"' || end - start >= out_size) {
            return -1;
        }
        memcpy(out, json.ptr + start, end - start);
        out[end - start] = '\0';
        return 0;
    }
    return -1;
}

/* An instance: its config, and how many recoveries it answered. */
struct instance {
    char action[32];
    unsigned long answered;
};

static int32_t plugin_create(SprigBytes config, void **out_instance, SprigBytes *out_message) {
    struct instance *instance = calloc(1, sizeof *instance);
    if (instance == NULL) {
        *out_message = message("c-example: out of memory");
        return SPRIG_STATUS_ERROR;
    }
    if (string_field(config, "action", instance->action, sizeof instance->action) != 0) {
        strcpy(instance->action, "rollback");
    }
    for (const char *c = instance->action; *c != '\0'; c++) {
        if (!((*c >= 'a' && *c <= 'z') || *c == '_' || *c == '-')) {
            free(instance);
            *out_message = message("c-example: `action` must be made of [a-z_-]");
            return SPRIG_STATUS_ERROR;
        }
    }
    log_line(SPRIG_LOG_INFO, "c-example: ready to send \"%s\" commands", instance->action);
    *out_instance = instance;
    return SPRIG_STATUS_OK;
}

static int32_t plugin_recover(void *opaque, SprigBytes context, SprigBytes *out) {
    struct instance *instance = opaque;
    char thing[129], job[65];
    if (string_field(context, "thingName", thing, sizeof thing) != 0 ||
        string_field(context, "jobId", job, sizeof job) != 0) {
        log_line(SPRIG_LOG_ERROR, "c-example: a context without thingName or jobId");
        *out = message("c-example: the context has no thingName or jobId");
        return SPRIG_STATUS_ERROR;
    }
    static const char answer_format[] =
        "{\"actions\":[{\"type\":\"publish\",\"topic\":\"$aws/things/%s/rollback\","
        "\"payload\":\"{\\\"jobId\\\":\\\"%s\\\",\\\"action\\\":\\\"%s\\\",\\\"by\\\":\\\"c-example\\\"}\","
        "\"qos\":1}],\"outcome\":{\"type\":\"recovered\"}}";
    size_t size = sizeof answer_format + strlen(thing) + strlen(job) + strlen(instance->action);
    char *answer = malloc(size);
    if (answer == NULL) {
        *out = message("c-example: out of memory");
        return SPRIG_STATUS_ERROR;
    }
    snprintf(answer, size, answer_format, thing, job, instance->action);
    instance->answered++;
    log_line(SPRIG_LOG_INFO, "c-example: sent %s to %s for job %s (answer %lu)", instance->action,
             thing, job, instance->answered);
    *out = hand_out(answer);
    return SPRIG_STATUS_OK;
}

static void plugin_destroy(void *instance) { free(instance); }

static void plugin_free(SprigBytes bytes) { free((void *)bytes.ptr); }

const SprigDescriptor SPRIG_PLUGIN_DESCRIPTOR = {
    .abi_version = SPRIG_ABI_VERSION,
    .size = sizeof(SprigDescriptor),
    .sdk_version = SPRIG_BYTES_LITERAL(SPRIG_SDK_VERSION),
    .name = SPRIG_BYTES_LITERAL("sprig-plugin-c-example"),
    .version = SPRIG_BYTES_LITERAL("0.1.0"),
    .create = plugin_create,
    .recover = plugin_recover,
    .destroy = plugin_destroy,
    .free = plugin_free,
    .set_host = set_host,
};

/* Prints what the C header says about the ABI, one "name value" per line, for tests/c_header.rs. */
#include <stdio.h>

#include "sprig_plugin.h"

#define SIZE(type) printf("sizeof %s %zu\n", #type, sizeof(type))
#define OFFSET(type, field) printf("offsetof %s.%s %zu\n", #type, #field, offsetof(type, field))
#define NUMBER(name) printf("%s %lld\n", #name, (long long)(name))

int main(void) {
    SIZE(SprigBytes);
    OFFSET(SprigBytes, ptr);
    OFFSET(SprigBytes, len);
    SIZE(SprigHostApi);
    OFFSET(SprigHostApi, size);
    OFFSET(SprigHostApi, log);
    SIZE(SprigDescriptor);
    OFFSET(SprigDescriptor, abi_version);
    OFFSET(SprigDescriptor, size);
    OFFSET(SprigDescriptor, sdk_version);
    OFFSET(SprigDescriptor, name);
    OFFSET(SprigDescriptor, version);
    OFFSET(SprigDescriptor, create);
    OFFSET(SprigDescriptor, recover);
    OFFSET(SprigDescriptor, destroy);
    OFFSET(SprigDescriptor, free);
    OFFSET(SprigDescriptor, set_host);
    printf("alignof SprigDescriptor %zu\n", _Alignof(SprigDescriptor));
    NUMBER(SPRIG_DESCRIPTOR_V1_SIZE);
    NUMBER(SPRIG_ABI_VERSION);
    NUMBER(SPRIG_STATUS_OK);
    NUMBER(SPRIG_STATUS_ERROR);
    NUMBER(SPRIG_STATUS_PANIC);
    NUMBER(SPRIG_LOG_ERROR);
    NUMBER(SPRIG_LOG_WARN);
    NUMBER(SPRIG_LOG_INFO);
    NUMBER(SPRIG_LOG_DEBUG);
    NUMBER(SPRIG_LOG_TRACE);
    NUMBER(SPRIG_MAX_LOG_MESSAGE);
    printf("SPRIG_SDK_VERSION %s\n", SPRIG_SDK_VERSION);
    printf("SPRIG_DESCRIPTOR_SYMBOL %s\n", SPRIG_DESCRIPTOR_SYMBOL);
    return 0;
}

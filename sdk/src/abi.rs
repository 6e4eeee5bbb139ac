//! The C ABI between the gateway (the host) and a plugin, version [`ABI_VERSION`].
//!
//! Plugin authors do not need this module: [`crate::export_plugin!`] generates all of it. It is public and
//! documented so that the host can read it, and so that a plugin could be written without the macro (in
//! Rust by hand, or in another language: `include/sprig_plugin.h` in this crate is the same ABI for C,
//! checked against this module's layout by `tests/c_header.rs`).
//!
//! # The descriptor
//!
//! A plugin is a shared library (`crate-type = ["cdylib"]`) exporting one data symbol,
//! [`DESCRIPTOR_SYMBOL`] (`SPRIG_PLUGIN_DESCRIPTOR`), a [`Descriptor`]. The symbol's name never changes
//! between ABI versions; the layout is the version's. The host reads the first field, `abi_version`,
//! before anything else, and refuses the library unless it equals the host's [`ABI_VERSION`]. It then
//! checks `size` (at least [`DESCRIPTOR_V1_SIZE`], the size of the version's first descriptor: fields may
//! be appended in a compatible way, never removed or reordered), that the strings are UTF-8 and that no
//! function pointer of the first layout is null. It reads only the `size` bytes the plugin declared: an
//! appended field beyond them reads as null (absent).
//!
//! # Appended fields (ABI version 1, compatible)
//!
//! - `set_host` (after `free`): how the host hands the plugin its [`HostApi`], the services the host
//!   offers (a log callback). The host calls it once per loaded library, before the first `create`; a
//!   plugin whose descriptor is shorter never gets a [`HostApi`], and a host that predates the field never
//!   calls it, so a plugin must work without one (the sdk then writes its log lines to stderr, which a
//!   plugin host forwards to the gateway's log).
//!
//! Appending a field is compatible both ways, which is why it does not change [`ABI_VERSION`]: an older
//! host reads the first [`DESCRIPTOR_V1_SIZE`] bytes and never sees the field; a newer host sees from
//! `size` that an older plugin lacks it. The same rule holds for [`HostApi`], whose `size` says which of
//! its fields exist.
//!
//! # Memory
//!
//! - Strings and JSON cross as [`Bytes`] (pointer + length, not NUL-terminated).
//! - What the host passes in (config, context) is owned by the host and valid only during the call.
//! - What the plugin hands out (answers, error messages) is owned by the plugin: the host copies it and
//!   then gives it back through the descriptor's `free`. The host never frees plugin memory with its own
//!   allocator, nor the other way round.
//! - An instance is an opaque pointer made by `create` and released by `destroy`; the host calls nothing
//!   on it afterwards.
//!
//! # Calls
//!
//! Every call returns a status: [`STATUS_OK`], [`STATUS_ERROR`] (the handler returned an error) or
//! [`STATUS_PANIC`] (the handler panicked; the shim caught it, since unwinding across `extern "C"`
//! aborts). With `STATUS_ERROR` and `STATUS_PANIC` the out-buffer holds a UTF-8 message. The host
//! calls `create`, `recover` and `destroy` of one instance from one thread, one call at a time; different
//! instances may be called from different threads concurrently. `free` may be called from any thread.
//!
//! # What a plugin must not do
//!
//! A plugin runs inside the gateway's process. A segfault, an abort (including a panic in a plugin built
//! with `panic = "abort"`, or a panic while panicking), or undefined behaviour in a plugin takes the whole
//! gateway down. Build plugins with the default `panic = "unwind"`.

use std::ffi::c_void;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicPtr, Ordering};

use crate::RecoveryHandler;

/// Version of the C ABI: the [`Descriptor`] layout, the function signatures, the status codes and the
/// memory rules of this module. Bumped on any incompatible change; the host refuses any other version.
pub const ABI_VERSION: u32 = 1;

/// The name of the descriptor symbol every plugin exports (NUL-terminated, for `dlsym`).
pub const DESCRIPTOR_SYMBOL: &[u8] = b"SPRIG_PLUGIN_DESCRIPTOR\0";

/// The call succeeded; the out-parameters hold the result.
pub const STATUS_OK: i32 = 0;
/// The handler returned an error; the out-buffer holds its message (UTF-8).
pub const STATUS_ERROR: i32 = 1;
/// The handler panicked and the shim caught it; the out-buffer holds the panic message (UTF-8).
pub const STATUS_PANIC: i32 = 2;

/// A byte string crossing the boundary: `len` bytes at `ptr`. `ptr` may be null only when `len` is 0.
///
/// Who owns the bytes depends on the direction; see the [module docs](self#memory).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct Bytes {
    /// The first byte.
    pub ptr: *const u8,
    /// How many bytes.
    pub len: usize,
}

impl Bytes {
    /// No bytes (a null pointer and length 0).
    pub const EMPTY: Bytes = Bytes {
        ptr: std::ptr::null(),
        len: 0,
    };

    /// Borrows a slice (the caller keeps it alive while the `Bytes` is in use).
    pub const fn from_slice(slice: &[u8]) -> Bytes {
        Bytes {
            ptr: slice.as_ptr(),
            len: slice.len(),
        }
    }

    /// Borrows a `'static` string: how the descriptor carries names.
    pub const fn from_static(text: &'static str) -> Bytes {
        Bytes::from_slice(text.as_bytes())
    }

    /// Hands a buffer over the boundary; it must come back through [`free`] (of the same library).
    pub fn from_vec(bytes: Vec<u8>) -> Bytes {
        let boxed = bytes.into_boxed_slice();
        let len = boxed.len();
        Bytes {
            ptr: Box::into_raw(boxed) as *const u8,
            len,
        }
    }

    /// The bytes as a slice.
    ///
    /// # Safety
    /// `ptr` must point to `len` readable bytes that stay valid and unchanged for `'a` (or `len` is 0).
    pub unsafe fn as_slice<'a>(&self) -> &'a [u8] {
        if self.len == 0 {
            &[]
        } else {
            std::slice::from_raw_parts(self.ptr, self.len)
        }
    }
}

/// `create(config, out_instance, out_message) -> status`: makes an instance from its config (a JSON
/// document). On [`STATUS_OK`] `*out_instance` is the new instance; otherwise `*out_message` is a
/// plugin-owned message to give back to `free`.
pub type CreateFn = unsafe extern "C" fn(
    config: Bytes,
    out_instance: *mut *mut c_void,
    out_message: *mut Bytes,
) -> i32;

/// `recover(instance, context, out) -> status`: runs one recovery. `context` is a JSON
/// [`crate::RecoveryContext`]. On [`STATUS_OK`] `*out` is a JSON [`crate::Recovery`]; otherwise a message.
/// Either way `*out` is plugin-owned: give it back to `free`.
pub type RecoverFn =
    unsafe extern "C" fn(instance: *mut c_void, context: Bytes, out: *mut Bytes) -> i32;

/// `destroy(instance)`: drops an instance made by `create`. A panic in the drop is caught and ignored.
pub type DestroyFn = unsafe extern "C" fn(instance: *mut c_void);

/// `free(bytes)`: gives back a buffer the plugin handed out (answers and messages).
pub type FreeFn = unsafe extern "C" fn(bytes: Bytes);

/// `set_host(host)`: the host hands the plugin its services. `host` stays valid, unchanged, until the
/// process ends; the plugin keeps the pointer. Called once per loaded library, before the first
/// `create`, from any thread.
pub type SetHostFn = unsafe extern "C" fn(host: *const HostApi);

/// `log(host, level, message)`: one line for the gateway's log. `host` is the pointer `set_host` gave;
/// `level` one of [`LOG_ERROR`] … [`LOG_TRACE`] (other values log as info); `message` UTF-8 text
/// (invalid sequences are replaced), owned by the plugin and read only during the call.
///
/// The host's promises: callable from any thread, at any time after `set_host` (also during `create`,
/// `recover` and `destroy`, and from threads the plugin starts); it returns quickly (it copies at most
/// [`MAX_LOG_MESSAGE`] bytes, drops lines over a rate limit rather than wait, and never unwinds into the
/// plugin). The gateway logs the line with the plugin's name, its route when known, and the level.
pub type LogFn = unsafe extern "C" fn(host: *const HostApi, level: u32, message: Bytes);

/// Log levels of [`LogFn`], the `log` crate's numbering: the most severe first.
pub const LOG_ERROR: u32 = 1;
/// See [`LOG_ERROR`].
pub const LOG_WARN: u32 = 2;
/// See [`LOG_ERROR`].
pub const LOG_INFO: u32 = 3;
/// See [`LOG_ERROR`].
pub const LOG_DEBUG: u32 = 4;
/// See [`LOG_ERROR`].
pub const LOG_TRACE: u32 = 5;

/// The longest log message a host keeps, in bytes; the rest of a longer one is cut off (at a character
/// boundary) and the line marked as truncated.
pub const MAX_LOG_MESSAGE: usize = 4096;

/// What the host offers a plugin, handed over by the descriptor's `set_host`. `#[repr(C)]`; fields are
/// only ever appended: read a field only if `size` covers it ([`HostApi::log_fn`] does that).
#[repr(C)]
#[derive(Debug)]
pub struct HostApi {
    /// `size_of::<HostApi>()` as the host built it.
    pub size: usize,
    /// See [`LogFn`]. Null if the host offers no logging.
    pub log: Option<LogFn>,
}

impl HostApi {
    /// The log callback, if this host's `size` covers the field and it is set.
    pub fn log_fn(&self) -> Option<LogFn> {
        let covered = std::mem::offset_of!(HostApi, log) + std::mem::size_of::<Option<LogFn>>();
        if self.size >= covered {
            self.log
        } else {
            None
        }
    }
}

/// What a plugin exports as [`DESCRIPTOR_SYMBOL`]. ABI version 1 layout (`#[repr(C)]`, in this order).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct Descriptor {
    /// [`ABI_VERSION`] of the sdk the plugin was built with. Always the first field, in every version.
    pub abi_version: u32,
    /// `size_of::<Descriptor>()` as the plugin saw it. Always the second field, in every version.
    pub size: u32,
    /// The version of `sprig-sdk` the plugin was built with (UTF-8; informational).
    pub sdk_version: Bytes,
    /// The plugin's name (UTF-8), as the gateway reports it in logs, errors and counters.
    pub name: Bytes,
    /// The plugin's version (UTF-8).
    pub version: Bytes,
    /// See [`CreateFn`]. `None` (null) is refused by the host.
    pub create: Option<CreateFn>,
    /// See [`RecoverFn`].
    pub recover: Option<RecoverFn>,
    /// See [`DestroyFn`].
    pub destroy: Option<DestroyFn>,
    /// See [`FreeFn`].
    pub free: Option<FreeFn>,
    /// See [`SetHostFn`]. Appended in sdk 0.1 without an ABI version change (see the [module
    /// docs](self#appended-fields-abi-version-1-compatible)); may be null.
    pub set_host: Option<SetHostFn>,
}

// SAFETY: a descriptor holds pointers to `'static` immutable data and to functions: sharing it between
// threads is sound. (Needed because a `static` must be `Sync`.)
unsafe impl Sync for Descriptor {}
// SAFETY: as above.
unsafe impl Send for Descriptor {}

/// The descriptor's size as this sdk lays it out (ABI version 1 with every appended field).
pub const DESCRIPTOR_SIZE: u32 = std::mem::size_of::<Descriptor>() as u32;

/// The size of ABI version 1's first descriptor (up to `free`): the least a host accepts.
pub const DESCRIPTOR_V1_SIZE: u32 = std::mem::offset_of!(Descriptor, set_host) as u32;

/// The version of this sdk (`CARGO_PKG_VERSION` of `sprig-sdk`).
pub const SDK_VERSION: &str = env!("CARGO_PKG_VERSION");

impl Descriptor {
    /// The descriptor of handler `H`, with the sdk's shims ([`create`], [`recover`], [`destroy`],
    /// [`free`]) monomorphized for it. This is what [`crate::export_plugin!`] exports.
    pub const fn new<H: RecoveryHandler>(name: &'static str, version: &'static str) -> Descriptor {
        Descriptor {
            abi_version: ABI_VERSION,
            size: DESCRIPTOR_SIZE,
            sdk_version: Bytes::from_static(SDK_VERSION),
            name: Bytes::from_static(name),
            version: Bytes::from_static(version),
            create: Some(create::<H>),
            recover: Some(recover::<H>),
            destroy: Some(destroy::<H>),
            free: Some(free),
            set_host: Some(set_host),
        }
    }
}

/// The panic payload's message, for [`STATUS_PANIC`].
fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    let message = if let Some(text) = payload.downcast_ref::<&str>() {
        (*text).to_owned()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "a panic without a message".to_owned()
    };
    // A payload whose drop panics would unwind out of the shim: contain that too.
    let _ = catch_unwind(AssertUnwindSafe(move || drop(payload)));
    message
}

/// Runs `body` with panics caught; writes its result (answer or message) to `out` and returns a status.
///
/// # Safety
/// `out` must be valid for a write.
unsafe fn guarded(out: *mut Bytes, body: impl FnOnce() -> Result<Vec<u8>, String>) -> i32 {
    let (status, bytes) = match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(answer)) => (STATUS_OK, answer),
        Ok(Err(message)) => (STATUS_ERROR, message.into_bytes()),
        Err(payload) => (STATUS_PANIC, panic_message(payload).into_bytes()),
    };
    if !out.is_null() {
        out.write(Bytes::from_vec(bytes));
    }
    status
}

/// What [`create`] answers for a config that does not deserialize: this prefix, then the key path and
/// serde's reason (`invalid config: topic: invalid type: integer `5`, expected a string`), or serde's
/// reason alone when it concerns the whole table (`invalid config: missing field `topic``). The gateway
/// recognizes the prefix to report the key under the route's `[recovery.config]`.
pub const INVALID_CONFIG: &str = "invalid config: ";

/// A handler's config from its JSON. A route without a `[recovery.config]` table hands over `{}`: a config
/// type that takes nothing (`()`, `Option<T>`) reads it as no config at all. The error names the key
/// (see [`INVALID_CONFIG`]); positions in the JSON would mean nothing to the operator, who wrote TOML.
fn parse_config<C: serde::de::DeserializeOwned>(json: &[u8]) -> Result<C, String> {
    let value: serde_json::Value =
        serde_json::from_slice(json).map_err(|e| format!("{INVALID_CONFIG}not JSON: {e}"))?;
    let empty = value.as_object().is_some_and(|table| table.is_empty());
    let error = match serde_path_to_error::deserialize(value) {
        Ok(config) => return Ok(config),
        Err(error) => error,
    };
    // `{}` as "no config" for the types that take none; for the others, the error about `{}` says more
    // (`missing field `topic``) than one about `null` would.
    if empty {
        if let Ok(config) = serde_json::from_value(serde_json::Value::Null) {
            return Ok(config);
        }
    }
    Err(config_error(&error.path().to_string(), error.into_inner()))
}

/// `invalid config: PATH: REASON`, without the path when it is the whole table (`.`).
fn config_error(path: &str, reason: serde_json::Error) -> String {
    if path == "." {
        format!("{INVALID_CONFIG}{reason}")
    } else {
        format!("{INVALID_CONFIG}{path}: {reason}")
    }
}

/// The sdk's [`CreateFn`] for handler `H`: parses the config JSON into `H::Config`, calls `H::new`, and
/// boxes the handler (the instance pointer is a `Box<H>`).
///
/// # Safety
/// The caller follows the ABI: `config` is valid for the call, the out-pointers are valid for writes.
pub unsafe extern "C" fn create<H: RecoveryHandler>(
    config: Bytes,
    out_instance: *mut *mut c_void,
    out_message: *mut Bytes,
) -> i32 {
    let mut instance: *mut c_void = std::ptr::null_mut();
    let status = guarded(out_message, || {
        let config: H::Config = parse_config(config.as_slice())?;
        let handler = H::new(config).map_err(|e| e.to_string())?;
        instance = Box::into_raw(Box::new(handler)) as *mut c_void;
        Ok(Vec::new())
    });
    if status == STATUS_OK {
        // No message on success: give the empty buffer back now rather than hand it out.
        if !out_message.is_null() {
            free(out_message.read());
            out_message.write(Bytes::EMPTY);
        }
        if !out_instance.is_null() {
            out_instance.write(instance);
        }
    }
    status
}

/// The sdk's [`RecoverFn`] for handler `H`: hands the context JSON to
/// [`RecoveryHandler::recover_json`] and returns its answer.
///
/// # Safety
/// `instance` was made by [`create::<H>`] and not destroyed, and no other call on it runs concurrently;
/// `context` is valid for the call; `out` is valid for a write.
pub unsafe extern "C" fn recover<H: RecoveryHandler>(
    instance: *mut c_void,
    context: Bytes,
    out: *mut Bytes,
) -> i32 {
    guarded(out, || {
        let handler = instance
            .cast::<H>()
            .as_mut()
            .ok_or_else(|| "recover called on a null instance".to_owned())?;
        handler
            .recover_json(context.as_slice())
            .map_err(|e| e.to_string())
    })
}

/// The sdk's [`DestroyFn`] for handler `H`: drops the boxed handler, catching a panic in its `Drop`.
///
/// # Safety
/// `instance` was made by [`create::<H>`] and is not used afterwards (null is ignored).
pub unsafe extern "C" fn destroy<H: RecoveryHandler>(instance: *mut c_void) {
    if instance.is_null() {
        return;
    }
    let handler = Box::from_raw(instance.cast::<H>());
    let _ = catch_unwind(AssertUnwindSafe(move || drop(handler)));
}

/// The sdk's [`FreeFn`]: releases a buffer made by [`Bytes::from_vec`] in this library.
///
/// # Safety
/// `bytes` came from [`Bytes::from_vec`] in this same library and is freed once.
pub unsafe extern "C" fn free(bytes: Bytes) {
    if bytes.ptr.is_null() {
        return;
    }
    let slice = std::ptr::slice_from_raw_parts_mut(bytes.ptr as *mut u8, bytes.len);
    drop(Box::from_raw(slice));
}

/// The [`HostApi`] `set_host` gave this library, or null. One per library: every plugin library has its
/// own copy of the sdk's statics.
static HOST: AtomicPtr<HostApi> = AtomicPtr::new(std::ptr::null_mut());

/// The sdk's [`SetHostFn`]: keeps the host's pointer for [`crate::log`](mod@crate::log).
///
/// # Safety
/// `host` is null or valid, unchanged, until the process ends (the ABI's promise).
pub unsafe extern "C" fn set_host(host: *const HostApi) {
    HOST.store(host as *mut HostApi, Ordering::Release);
}

/// The host's services, if a host handed them over.
pub(crate) fn host() -> Option<&'static HostApi> {
    let host = HOST.load(Ordering::Acquire);
    // SAFETY: only `set_host` stores here, with a pointer the ABI keeps valid until the process ends.
    unsafe { host.cast_const().as_ref() }
}

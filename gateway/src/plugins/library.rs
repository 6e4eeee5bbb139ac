//! Loading a plugin library and checking its descriptor.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use sprig_sdk::abi::{self, Bytes, CreateFn, DestroyFn, FreeFn, RecoverFn, SetHostFn};

use super::instance::FailureKind;
use super::logging::Connection;

/// Why a file was refused as a plugin. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file cannot be read (missing, a directory, no permission).
    #[error("cannot open plugin {}: {reason}", path.display())]
    Unreadable { path: PathBuf, reason: String },
    /// The dynamic loader refused it: not a shared library, wrong architecture, missing dependencies.
    #[error("{} is not a loadable shared library: {reason}", path.display())]
    NotALibrary { path: PathBuf, reason: String },
    /// A shared library, but it exports no descriptor symbol.
    #[error("{} is not a sprig plugin: it exports no {} symbol", path.display(), symbol_name())]
    NoDescriptor { path: PathBuf },
    /// The descriptor is for another ABI version.
    #[error(
        "{}: the plugin was built for plugin ABI version {found}, but this gateway speaks ABI version \
         {expected} (sprig-sdk {host_sdk}); rebuild the plugin against a sprig-sdk with ABI version {expected}",
        path.display()
    )]
    AbiMismatch {
        path: PathBuf,
        found: u32,
        expected: u32,
        host_sdk: &'static str,
    },
    /// The right ABI version, but the descriptor is malformed (too small, null function, non-UTF-8 name).
    #[error("{}: malformed plugin descriptor: {problem}", path.display())]
    BadDescriptor { path: PathBuf, problem: String },
}

fn symbol_name() -> &'static str {
    std::str::from_utf8(&abi::DESCRIPTOR_SYMBOL[..abi::DESCRIPTOR_SYMBOL.len() - 1]).unwrap_or("?")
}

/// What a plugin says about itself, read from its descriptor (and sent by a plugin host to the gateway).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PluginDescriptor {
    /// The plugin's name: how errors, logs and counters refer to it.
    pub name: String,
    /// The plugin's version.
    pub version: String,
    /// The `sprig-sdk` version it was built with.
    pub sdk_version: String,
    /// Its ABI version (equal to [`sprig_sdk::ABI_VERSION`], or it would not have loaded).
    pub abi_version: u32,
    /// The file it was loaded from (canonical path).
    pub path: PathBuf,
}

impl fmt::Display for PluginDescriptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "name:        {}", self.name)?;
        writeln!(f, "version:     {}", self.version)?;
        writeln!(f, "sdk version: {}", self.sdk_version)?;
        writeln!(f, "ABI version: {}", self.abi_version)?;
        write!(f, "file:        {}", self.path.display())
    }
}

/// Counters of a plugin library's calls, over all its instances, since it was loaded.
///
/// A call is a `create` (in [`super::PluginInstance::new`] or a plugin host's start) or a `recover`; each
/// ends in exactly one of `succeeded` or a failure kind, so `calls = succeeded + panicked + failed +
/// garbage + timed_out + crashed + quarantined` once no call is in flight.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PluginStats {
    /// Calls started.
    pub calls: u64,
    /// Calls that answered (a created instance, or a valid [`sprig_sdk::Recovery`]).
    pub succeeded: u64,
    /// Calls that panicked.
    pub panicked: u64,
    /// Calls that returned an error.
    pub failed: u64,
    /// Calls that answered something unusable.
    pub garbage: u64,
    /// Calls that overran the budget (each quarantined its instance, or had its host killed).
    pub timed_out: u64,
    /// Calls during which the plugin's host process died.
    pub crashed: u64,
    /// Calls refused at once because their instance was quarantined.
    pub quarantined: u64,
}

#[derive(Debug, Default)]
pub(super) struct Counters {
    calls: AtomicU64,
    succeeded: AtomicU64,
    panicked: AtomicU64,
    failed: AtomicU64,
    garbage: AtomicU64,
    timed_out: AtomicU64,
    crashed: AtomicU64,
    quarantined: AtomicU64,
}

impl Counters {
    pub(super) fn record(&self, outcome: Result<(), FailureKind>) {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let counter = match outcome {
            Ok(()) => &self.succeeded,
            Err(FailureKind::Panicked) => &self.panicked,
            Err(FailureKind::Failed) => &self.failed,
            Err(FailureKind::Garbage) => &self.garbage,
            Err(FailureKind::TimedOut) => &self.timed_out,
            Err(FailureKind::Crashed) => &self.crashed,
            Err(FailureKind::Quarantined) => &self.quarantined,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn snapshot(&self) -> PluginStats {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        PluginStats {
            calls: get(&self.calls),
            succeeded: get(&self.succeeded),
            panicked: get(&self.panicked),
            failed: get(&self.failed),
            garbage: get(&self.garbage),
            timed_out: get(&self.timed_out),
            crashed: get(&self.crashed),
            quarantined: get(&self.quarantined),
        }
    }
}

/// The plugin's functions, checked non-null.
#[derive(Debug, Clone, Copy)]
pub(super) struct Functions {
    pub create: CreateFn,
    pub recover: RecoverFn,
    pub destroy: DestroyFn,
    pub free: FreeFn,
    /// Appended to ABI version 1: absent from older plugins.
    pub set_host: Option<SetHostFn>,
}

/// A loaded plugin library whose descriptor was accepted. Shared ([`Arc`]) by its instances; the
/// underlying library stays loaded until the process ends.
#[derive(Debug)]
pub struct PluginLibrary {
    descriptor: PluginDescriptor,
    pub(super) functions: Functions,
    pub(super) counters: Counters,
    /// What `set_host` was given, once the first instance was about to be created.
    connection: OnceLock<&'static Connection>,
}

/// Every library loaded so far, by canonical path: loading a file again returns the same library.
fn loaded() -> &'static Mutex<HashMap<PathBuf, Arc<PluginLibrary>>> {
    static LOADED: OnceLock<Mutex<HashMap<PathBuf, Arc<PluginLibrary>>>> = OnceLock::new();
    LOADED.get_or_init(Default::default)
}

impl PluginLibrary {
    /// Loads the plugin at `path` and checks its descriptor: ABI version first, then size, names and
    /// functions. No plugin function is called. Loading runs the library's initializers (as any
    /// `dlopen` does), which is the one thing about a file that cannot be checked before trusting it.
    ///
    /// Blocking (file system and dynamic loader); call it at startup or from `spawn_blocking`.
    pub fn load(path: impl AsRef<Path>) -> Result<Arc<PluginLibrary>, LoadError> {
        let path = path.as_ref();
        let canonical = std::fs::canonicalize(path).map_err(|e| LoadError::Unreadable {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        if !canonical.is_file() {
            return Err(LoadError::Unreadable {
                path: path.to_owned(),
                reason: "not a regular file".to_owned(),
            });
        }
        let mut loaded = loaded().lock().unwrap_or_else(|e| e.into_inner());
        if let Some(library) = loaded.get(&canonical) {
            return Ok(library.clone());
        }
        let library = Arc::new(open(&canonical)?);
        loaded.insert(canonical, library.clone());
        Ok(library)
    }

    /// What the plugin says about itself.
    pub fn descriptor(&self) -> &PluginDescriptor {
        &self.descriptor
    }

    /// The plugin's name (from its descriptor).
    pub fn name(&self) -> &str {
        &self.descriptor.name
    }

    /// The counters of this library's calls, over all its instances.
    pub fn stats(&self) -> PluginStats {
        self.counters.snapshot()
    }

    /// Hands the plugin this process's services (its `set_host`, if it has one), once, before its first
    /// `create`: not at load, so that loading (`sprig plugin check`) calls no plugin function.
    pub(super) fn connect_host(&self) -> &'static Connection {
        self.connection.get_or_init(|| {
            let connection = Connection::leak(self.name());
            if let Some(set_host) = self.functions.set_host {
                // SAFETY: the ABI's `set_host`, with a HostApi valid until the process ends.
                unsafe { set_host(connection.api()) };
            }
            connection
        })
    }

    /// Reports the log lines the plugin had dropped, if any (after each call).
    pub(super) fn report_dropped_logs(&self) {
        if let Some(connection) = self.connection.get() {
            connection.report_dropped();
        }
    }

    /// Copies a plugin-owned buffer and gives it back to the plugin's `free`.
    ///
    /// # Safety
    /// `bytes` was handed out by this library, following the ABI, and is not used afterwards.
    pub(super) unsafe fn take(&self, bytes: Bytes) -> Result<Vec<u8>, String> {
        if bytes.ptr.is_null() {
            return if bytes.len == 0 {
                Ok(Vec::new())
            } else {
                Err(format!("a null pointer with length {}", bytes.len))
            };
        }
        let copy = bytes.as_slice().to_vec();
        (self.functions.free)(bytes);
        Ok(copy)
    }
}

#[cfg(unix)]
fn dlopen(path: &Path) -> Result<libloading::Library, libloading::Error> {
    use libloading::os::unix::{Library, RTLD_LOCAL, RTLD_NOW};
    // RTLD_NOW: an unresolved symbol refuses the library now, rather than crashing a call later.
    // SAFETY: loading runs the library's initializers; that is the trust the operator gave the file.
    unsafe { Library::open(Some(path), RTLD_NOW | RTLD_LOCAL) }.map(Into::into)
}

#[cfg(not(unix))]
fn dlopen(path: &Path) -> Result<libloading::Library, libloading::Error> {
    // SAFETY: as above.
    unsafe { libloading::Library::new(path) }
}

/// Opens and checks one library; on success the library is leaked (never unloaded).
fn open(path: &Path) -> Result<PluginLibrary, LoadError> {
    let library = dlopen(path).map_err(|e| LoadError::NotALibrary {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    // SAFETY: the symbol's address is only read below as far as the ABI lets us trust it.
    let address: *const u8 = match unsafe { library.get::<*const u8>(abi::DESCRIPTOR_SYMBOL) } {
        Ok(symbol) => *symbol,
        Err(_) => {
            return Err(LoadError::NoDescriptor {
                path: path.to_owned(),
            })
        }
    };
    if address.is_null() {
        return Err(LoadError::NoDescriptor {
            path: path.to_owned(),
        });
    }
    let bad = |problem: String| LoadError::BadDescriptor {
        path: path.to_owned(),
        problem,
    };
    // SAFETY: every ABI version starts with `abi_version: u32, size: u32`; nothing else is read before
    // both are checked.
    let (found, size) = unsafe {
        (
            std::ptr::read_unaligned(address as *const u32),
            std::ptr::read_unaligned(address.add(4) as *const u32),
        )
    };
    if found != abi::ABI_VERSION {
        return Err(LoadError::AbiMismatch {
            path: path.to_owned(),
            found,
            expected: abi::ABI_VERSION,
            host_sdk: abi::SDK_VERSION,
        });
    }
    if size < abi::DESCRIPTOR_V1_SIZE {
        return Err(bad(format!(
            "size {size} is smaller than the {} bytes of an ABI version {found} descriptor",
            abi::DESCRIPTOR_V1_SIZE
        )));
    }
    if address.align_offset(std::mem::align_of::<abi::Descriptor>()) != 0 {
        return Err(bad("the descriptor is not aligned".to_owned()));
    }
    let descriptor = read_descriptor(address, size);
    let text = |field: &str, bytes: Bytes| -> Result<String, LoadError> {
        if bytes.ptr.is_null() && bytes.len != 0 {
            return Err(bad(format!("{field} is a null pointer")));
        }
        // SAFETY: the descriptor's strings are static data of the library, which stays loaded.
        let raw = unsafe { bytes.as_slice() };
        let text = std::str::from_utf8(raw).map_err(|_| bad(format!("{field} is not UTF-8")))?;
        Ok(text.to_owned())
    };
    let name = text("name", descriptor.name)?;
    if name.is_empty() {
        return Err(bad("the name is empty".to_owned()));
    }
    let version = text("version", descriptor.version)?;
    let sdk_version = text("sdk_version", descriptor.sdk_version)?;
    let missing = |function: &str| bad(format!("`{function}` is null"));
    let functions = Functions {
        create: descriptor.create.ok_or_else(|| missing("create"))?,
        recover: descriptor.recover.ok_or_else(|| missing("recover"))?,
        destroy: descriptor.destroy.ok_or_else(|| missing("destroy"))?,
        free: descriptor.free.ok_or_else(|| missing("free"))?,
        set_host: descriptor.set_host,
    };
    // Never unload: a stuck or running call, a thread-local destructor or a leaked pointer may still refer
    // to the library's code or statics, and there is no way to know when none does.
    std::mem::forget(library);
    Ok(PluginLibrary {
        descriptor: PluginDescriptor {
            name,
            version,
            sdk_version,
            abi_version: found,
            path: path.to_owned(),
        },
        functions,
        counters: Counters::default(),
        connection: OnceLock::new(),
    })
}

/// The descriptor at `address`, as far as the plugin's `size` goes: fields appended after the plugin was
/// built (beyond its `size`) read as absent, and nothing past its descriptor is read.
fn read_descriptor(address: *const u8, size: u32) -> abi::Descriptor {
    let mut descriptor = std::mem::MaybeUninit::<abi::Descriptor>::zeroed();
    let known = (size as usize).min(std::mem::size_of::<abi::Descriptor>());
    // SAFETY: the plugin declares `size` readable bytes at `address` (its ABI version's layout, checked
    // by the caller), of which `known` are copied. Every field of a Descriptor is valid all-zero (null
    // pointers, `None` functions, zero integers), so the zeroed rest leaves a valid value.
    unsafe {
        std::ptr::copy_nonoverlapping(address, descriptor.as_mut_ptr().cast::<u8>(), known);
        let mut descriptor = descriptor.assume_init();
        // A size that ends inside an appended field does not declare it.
        if (size as usize)
            < abi::DESCRIPTOR_V1_SIZE as usize + std::mem::size_of::<Option<SetHostFn>>()
        {
            descriptor.set_host = None;
        }
        descriptor
    }
}

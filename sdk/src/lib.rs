//! `sprig-sdk`: what a sprig recovery-handler plugin depends on.
//!
//! The plugin ABI (descriptor, handler trait, export macro) lands with the recovery plugins work; for now this
//! crate only fixes the ABI version constant that the gateway and plugins will agree on.

/// Version of the C ABI between the gateway and its plugins. Bumped on any incompatible change.
pub const ABI_VERSION: u32 = 1;

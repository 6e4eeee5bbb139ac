//! The one home of what sprig's tests and benchmarks share, whichever crate they live in: the gateway's
//! unit tests (a dev-dependency), the end-to-end tests and their harness (`sprig-tests`), and the
//! benchmarks of both crates.
//!
//! - [`build`]: where the workspace and cargo's target directory are, and the binaries and plugins cargo
//!   builds on first use (so a test never runs a stale one), the wrong-ABI plugin included.
//! - [`certs`]: a CA and the server and client certificates it signs, made at test time.
//! - [`raw`]: MQTT packets written and read by hand, for tests that need the wire itself.
//! - [`settings`]: the benchmarks' sizes and counts, from `SPRIG_*` environment variables.
//!
//! It depends on nothing of sprig's, so that any crate of the workspace can use it.

pub mod build;
pub mod certs;
pub mod raw;
pub mod settings;

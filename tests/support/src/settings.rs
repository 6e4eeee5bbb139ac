//! The benchmarks' knobs: sizes and counts read from `SPRIG_*` environment variables.

/// The number in the environment variable `name`, else `default` (unset or not a number).
pub fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

//! The `sprig` binary: everything happens in [`sprig_gateway::cli`].

fn main() -> std::process::ExitCode {
    sprig_gateway::cli::main()
}

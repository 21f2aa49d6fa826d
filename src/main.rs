//! The `tenantd` binary: everything lives in the library.

fn main() -> std::process::ExitCode {
    tenantd::cli::main()
}

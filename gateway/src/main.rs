//! The `wicket` binary.

fn main() -> std::process::ExitCode {
    wicket::cli::main()
}

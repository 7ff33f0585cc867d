//! The `wicket` command, built inside the test crate so end-to-end tests can
//! run it as a process (`CARGO_BIN_EXE_wicket-under-test`).

fn main() -> std::process::ExitCode {
    wicket_tests::wicket::cli::main()
}

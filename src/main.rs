//! The `rebound` binary: everything lives in the library; see [`rebound::cli`].

fn main() {
    std::process::exit(rebound::cli::main());
}

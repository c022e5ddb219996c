fn main() {
    std::process::exit(rebound::cli::main());
}

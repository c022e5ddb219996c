//! The `rebound` binary: see [`rebound::cli`].

#[tokio::main]
async fn main() {
    std::process::exit(rebound::cli::main().await);
}

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    archforge::install_crypto_provider();
    archforge::cli::run(archforge::cli::Cli::parse()).await
}

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    archforge::cli::run(archforge::cli::Cli::parse()).await
}

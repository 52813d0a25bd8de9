//! The `rides` binary: bootstraps telemetry, parses the command line, runs it, exits.

use clap::Parser as _;

#[tokio::main]
async fn main() {
    let cli = app::cli::Cli::parse();
    app::telemetry::init(cli.log_options());
    let code = match app::cli::run(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            2
        }
    };
    std::process::exit(code);
}

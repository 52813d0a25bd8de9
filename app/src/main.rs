//! The `rides` binary: bootstraps telemetry, parses the command line and the config file,
//! runs it, exits.

#[tokio::main]
async fn main() {
    let cli = match app::config::resolve_from(std::env::args_os()) {
        Ok(cli) => cli,
        Err(app::config::ResolveError::Clap(e)) => e.exit(),
        Err(app::config::ResolveError::Config(e)) => {
            eprintln!("error: {e:#}");
            std::process::exit(2);
        }
    };
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

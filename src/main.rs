use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use postwire::config::Settings;
use postwire::startup::{self, Application, Role};
use postwire::store::Store;

/// postwire: queue-backed SMTP delivery.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Directory holding default.toml and <POSTWIRE_ENV>.toml [default: ./config]
    #[arg(long, global = true, env = "POSTWIRE_CONFIG_DIR")]
    config_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the API, the worker, or both.
    Serve {
        #[arg(long, value_enum, default_value_t = Role::All)]
        role: Role,
    },
    /// Apply the database migrations and exit.
    Migrate,
    /// Manage tenants (producing applications).
    #[command(subcommand)]
    Tenants(postwire::admin::TenantsCommand),
    /// Manage API keys.
    #[command(subcommand)]
    Keys(postwire::admin::KeysCommand),
    /// Manage stored SMTP connections.
    #[command(subcommand)]
    Connections(postwire::admin::ConnectionsCommand),
}

fn main() -> ExitCode {
    startup::tune_allocator();
    let cli = Cli::parse();
    let settings = match Settings::load(cli.config_dir.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("postwire: configuration error: {e:#}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = postwire::telemetry::init(&settings.log) {
        eprintln!("postwire: {e:#}");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("postwire: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Serve { role } => {
                let app = Application::build(settings, role).await?;
                app.run(startup::shutdown_on_signals()).await
            }
            Command::Migrate => {
                Store::connect_lazy(&settings.database)?.migrate().await?;
                tracing::info!("migrations applied");
                Ok(())
            }
            Command::Tenants(command) => postwire::admin::tenants(&settings, command).await,
            Command::Keys(command) => postwire::admin::keys(&settings, command).await,
            Command::Connections(command) => postwire::admin::connections(&settings, command).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "postwire stopped");
            eprintln!("postwire: {e:#}");
            ExitCode::FAILURE
        }
    }
}

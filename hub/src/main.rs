//! The `hub` command: parses the command line and calls the library.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use hub::config::Config;
use hub::import::{Format, ImportKind, ImportOptions};
use hub::names::Role;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "hub",
    version,
    about = "Rules-driven automation and notification hub for utilities"
)]
struct Cli {
    /// Configuration file (TOML); embedded defaults when omitted.
    #[arg(long, short, global = true, env = "HUB_CONFIG")]
    config: Option<PathBuf>,
    /// Log filter, e.g. `info` or `hub=debug,sqlx=warn`.
    #[arg(
        long,
        global = true,
        default_value = "info,rumqttd=warn",
        env = "HUB_LOG"
    )]
    log_level: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the hub: storage, API, web UI (and connectors, rules, telephony as configured).
    Serve {
        /// Load the demo data set and create one user per role (credentials are printed).
        #[arg(long)]
        demo: bool,
    },
    /// Apply database migrations and exit.
    Migrate,
    /// Check the configuration file and exit.
    Validate,
    /// Import sites, network, consumers or sensors from CSV or JSON.
    Import {
        /// sites, network, consumers or sensors.
        kind: ImportKind,
        /// The file; `.json` is read as JSON, anything else as CSV.
        file: PathBuf,
        /// Import the valid rows even if some are bad.
        #[arg(long)]
        skip_invalid: bool,
    },
    /// Play the demo's sensors: publish realistic readings over MQTT and serve them as Modbus
    /// registers, with scenarios (a pressure drop, a silent sensor, a boiler house trip).
    Simulate {
        /// The MQTT broker to publish to (the hub's embedded broker by default).
        #[arg(long, default_value = "127.0.0.1:1883")]
        mqtt: String,
        /// Do not publish over MQTT.
        #[arg(long)]
        no_mqtt: bool,
        /// Where to serve the sensors as Modbus TCP registers.
        #[arg(long, default_value = "127.0.0.1:5020")]
        modbus: std::net::SocketAddr,
        /// Do not serve Modbus.
        #[arg(long)]
        no_modbus: bool,
        /// Milliseconds between two values of every sensor.
        #[arg(long, default_value_t = 1000)]
        interval_ms: u64,
        /// A scenario at a second after the start, e.g. `drop hp-3@30`, `silence hp-2.t_supply@10`,
        /// `trip bh-1@60`, `restore@120` (repeatable). Scenarios can also be typed while it runs.
        #[arg(long)]
        scenario: Vec<String>,
        /// Print the Modbus register map and exit.
        #[arg(long)]
        list: bool,
    },
    /// Check and test Rhai rules.
    Rules {
        #[command(subcommand)]
        command: RulesCommand,
    },
    /// Manage users.
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
    /// Print the version.
    Version,
}

#[derive(Subcommand)]
enum RulesCommand {
    /// Compile and lint every `.rhai` file of a folder; errors with file, line and column.
    Check {
        /// The rules folder (`[rules] dir` of the configuration by default).
        dir: Option<PathBuf>,
    },
    /// Run the rule fixtures (`*.test.json`) of a folder with no side effects; non-zero exit on a
    /// mismatch.
    Test {
        /// The rules folder (`[rules] dir` of the configuration by default).
        dir: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum UserCommand {
    /// Create a user; prints a generated password unless --password-stdin.
    Add {
        name: String,
        #[arg(long)]
        role: Role,
        /// External id of the only tenant this user may see.
        #[arg(long)]
        tenant: Option<String>,
        /// Read the password from standard input.
        #[arg(long)]
        password_stdin: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    hub::install_crypto_provider();
    let filter = tracing_subscriber::EnvFilter::try_new(&cli.log_level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(cli));
    // Blocking work still running (a prompt being spoken by espeak-ng) must not hold up the exit:
    // everything that had to be saved was saved before `run` returned.
    runtime.shutdown_timeout(std::time::Duration::from_millis(200));
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    if let Command::Version = cli.command {
        println!("hub {}", env!("CARGO_PKG_VERSION"));
        return Ok(ExitCode::SUCCESS);
    }
    if let Command::Simulate {
        mqtt,
        no_mqtt,
        modbus,
        no_modbus,
        interval_ms,
        scenario,
        list,
    } = &cli.command
    {
        if *list {
            print!("{}", hub::simulate::register_map());
            return Ok(ExitCode::SUCCESS);
        }
        let mut scenarios = Vec::new();
        for s in scenario {
            let (what, at) = s.rsplit_once('@').unwrap_or((s, "0"));
            let at: f64 = at
                .parse()
                .with_context(|| format!("--scenario {s}: the time after @ is in seconds"))?;
            let what = what
                .parse()
                .map_err(|e| anyhow::anyhow!("--scenario {s}: {e}"))?;
            scenarios.push((what, at));
        }
        let opts = hub::simulate::SimulateOptions {
            mqtt: (!no_mqtt).then(|| mqtt.clone()),
            modbus: (!no_modbus).then_some(*modbus),
            interval: std::time::Duration::from_millis((*interval_ms).max(10)),
            scenarios,
            stdin: true,
        };
        let shutdown = CancellationToken::new();
        tokio::spawn(stop_on_signal(shutdown.clone()));
        hub::simulate::run(opts, shutdown)
            .await
            .map_err(|e| anyhow::anyhow!(e))?;
        return Ok(ExitCode::SUCCESS);
    }
    let config = Config::load(cli.config.as_deref())?;
    if let Command::Rules { command } = &cli.command {
        return rules_command(command, &config.rules.dir);
    }
    match cli.command {
        Command::Version | Command::Simulate { .. } | Command::Rules { .. } => {
            unreachable!("handled above")
        }
        Command::Validate => {
            println!("configuration is valid");
        }
        Command::Serve { demo } => {
            let shutdown = CancellationToken::new();
            tokio::spawn(stop_on_signal(shutdown.clone()));
            hub::run(config, hub::RunOptions { demo }, shutdown).await?;
        }
        Command::Migrate => {
            hub::open_db(&config).await?;
            println!("database is up to date");
        }
        Command::Import {
            kind,
            file,
            skip_invalid,
        } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("{}: cannot read", file.display()))?;
            let db = hub::open_db(&config).await?;
            let name = file.display().to_string();
            let opts = ImportOptions {
                skip_invalid,
                actor: "cli".into(),
                tenant_scope: None,
            };
            let report =
                hub::import::run(&db, kind, Format::of_path(&name), &name, &text, &opts).await?;
            for e in &report.errors {
                eprintln!("{e}");
            }
            println!(
                "{}: {} rows, {} imported, {} bad",
                name,
                report.rows,
                report.imported,
                report.errors.len()
            );
            if !report.errors.is_empty() {
                if !skip_invalid {
                    eprintln!("nothing was imported: fix the rows above or pass --skip-invalid");
                }
                return Ok(ExitCode::from(2));
            }
        }
        Command::User {
            command:
                UserCommand::Add {
                    name,
                    role,
                    tenant,
                    password_stdin,
                },
        } => {
            let (password, print) = if password_stdin {
                let mut p = String::new();
                std::io::stdin().read_to_string(&mut p)?;
                (p.trim_end_matches(['\n', '\r']).to_owned(), false)
            } else {
                (hub::auth::new_password(), true)
            };
            anyhow::ensure!(
                password.chars().count() >= 10,
                "password: at least 10 characters"
            );
            let db = hub::open_db(&config).await?;
            let mut conn = db.conn().await?;
            let tenant_id = match tenant {
                Some(t) => Some(hub::storage::tenants::by_external(&mut conn, &t).await?.id),
                None => None,
            };
            let hash = hub::auth::hash_password(&password)?;
            let user =
                hub::storage::users::create(&mut conn, &name, &hash, role, tenant_id).await?;
            hub::storage::audit::record(
                &mut conn,
                "cli",
                "create",
                "user",
                &user.id.to_string(),
                serde_json::json!({"role": role}),
            )
            .await?;
            if print {
                println!("created user `{name}` ({role}) with password {password}");
            } else {
                println!("created user `{name}` ({role})");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Cancels `shutdown` on SIGINT or SIGTERM.
async fn stop_on_signal(shutdown: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
    tracing::info!("shutting down");
    shutdown.cancel();
}

/// `hub rules check|test`.
fn rules_command(
    command: &RulesCommand,
    default_dir: &std::path::Path,
) -> anyhow::Result<ExitCode> {
    match command {
        RulesCommand::Check { dir } => {
            let dir = dir.as_deref().unwrap_or(default_dir);
            let found = rules::testing::check_dir(dir)?;
            for d in &found {
                println!("{d}");
            }
            let errors = found
                .iter()
                .filter(|d| d.level == rules::Level::Error)
                .count();
            println!(
                "{}: {} error(s), {} warning(s)",
                dir.display(),
                errors,
                found.len() - errors
            );
            Ok(if errors == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        RulesCommand::Test { dir } => {
            let dir = dir.as_deref().unwrap_or(default_dir);
            let report = rules::testing::run_fixtures(dir)?;
            print!("{report}");
            Ok(if report.is_ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}

//! The `seawall` command line: run, validate, demo. Exit codes: 0 ok, 1 bad config or input,
//! 2 runtime failure (an address in use, say).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use seawall::config::{self, ConfigError, ProcessEnv};
use seawall::daemon::{Daemon, DaemonFiles, Detached};
use seawall::demo::{self, DemoPorts};
use seawall::{lifecycle, logging, Built};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "seawall",
    version,
    about = "An edge gateway between Genesys Cloud data actions and fragile internal systems"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// `run --daemon`'s files, in the working directory unless named.
const DEFAULT_PID_FILE: &str = "seawall.pid";
const DEFAULT_LOG_FILE: &str = "seawall.log";

#[derive(Subcommand)]
enum Command {
    /// Run the gateway (in the foreground, or as a daemon).
    Run {
        /// The config file.
        #[arg(short, long, default_value = "conf/seawall.yaml")]
        config: PathBuf,
        /// Detach from the terminal once the config is read; exits 0 (printing the daemon's pid)
        /// when the gateway serves, or with the daemon's exit code when it cannot start.
        #[arg(long)]
        daemon: bool,
        /// With --daemon: the pid file, written by the daemon and removed when it exits.
        #[arg(long, requires = "daemon", value_name = "PATH")]
        pid_file: Option<PathBuf>,
        /// With --daemon: the file the daemon logs to (appended).
        #[arg(long, requires = "daemon", value_name = "PATH")]
        log_file: Option<PathBuf>,
    },
    /// Check a config and every file it names; print every error, one per line.
    Validate {
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Run a mediation's golden cases offline (`plugins/NAME`, or `plugins/` for every folder).
    Test {
        /// A mediation folder, or a folder of them.
        path: PathBuf,
        /// Rewrite each failing case's expectations from what the mediation does now.
        #[arg(long)]
        update: bool,
    },
    /// Fetch a token from the built-in issuer (client credentials) and print it.
    Token {
        #[arg(long)]
        client_id: String,
        #[arg(long)]
        secret: String,
        /// The issuer's token URL (default: the demo's).
        #[arg(long, default_value = "http://127.0.0.1:8080/oauth/token")]
        url: String,
        /// Scopes to ask for (space-separated; default: all the client may have).
        #[arg(long)]
        scope: Option<String>,
    },
    /// Helpers for Genesys Cloud.
    Genesys {
        #[command(subcommand)]
        command: GenesysCommand,
    },
    /// Start the embedded demo: gateway + simulated CRM on loopback, with curl lines to try.
    Demo {
        /// Public port of the gateway.
        #[arg(long, default_value_t = 8080)]
        port: u16,
        /// Admin port (/metrics /healthz /readyz).
        #[arg(long, default_value_t = 9090)]
        admin_port: u16,
        /// HTTPS port that asks callers for a client certificate (mTLS), as Genesys presents.
        #[arg(long, default_value_t = 8443)]
        mtls_port: u16,
    },
}

#[derive(Subcommand)]
enum GenesysCommand {
    /// Turn a saved `GET /api/v2/ipranges` answer into an allowlist file for `ip_allowlists.*.files`.
    Ipranges {
        /// The org's region, e.g. us-east-1.
        #[arg(long)]
        region: String,
        /// The saved answer (JSON). Fetching it live with client credentials is not offered yet.
        #[arg(long)]
        from: Option<PathBuf>,
        /// Where to write the allowlist (default: stdout).
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Validate { config } => validate(&config),
        Command::Run { config: path, daemon, pid_file, log_file } => match config::load_file(&path, &ProcessEnv) {
            Ok(config) => {
                // Before any thread starts (logging, the gateway and Pingora start theirs).
                let daemon = if daemon {
                    let files = DaemonFiles {
                        pid_file: pid_file.unwrap_or_else(|| DEFAULT_PID_FILE.into()),
                        log_file: log_file.unwrap_or_else(|| DEFAULT_LOG_FILE.into()),
                    };
                    match seawall::daemon::detach(&files) {
                        Ok(Detached::Parent(code)) => return code,
                        Ok(Detached::Child(daemon)) => Some(daemon),
                        Err(e) => {
                            eprintln!("seawall: {}", e.message);
                            return ExitCode::from(e.exit_code);
                        }
                    }
                } else {
                    None
                };
                logging::init(&config.logging);
                tracing::info!("config {}: {}", path.display(), config.summary());
                let code = match seawall::build(config) {
                    Ok(built) => serve(built, None, daemon),
                    Err(errors) => config_errors(&errors),
                };
                seawall::daemon::remove_pid_file();
                code
            }
            Err(errors) => config_errors(&errors),
        },
        Command::Test { path, update } => golden_test(&path, update),
        Command::Token { client_id, secret, url, scope } => token(&client_id, &secret, &url, scope.as_deref()),
        Command::Genesys { command: GenesysCommand::Ipranges { region, from, output } } => {
            genesys_ipranges(&region, from.as_deref(), output.as_deref())
        }
        Command::Demo { port, admin_port, mtls_port } => {
            let ports = DemoPorts { port, admin_port, mtls_port };
            match demo::build(&ports) {
                Ok((built, _stats, crm, material)) => {
                    logging::init(&built.gateway.config.logging);
                    serve(built, Some(demo::instructions(&ports, crm, &material)), None)
                }
                Err(errors) => config_errors(&errors),
            }
        }
    }
}

fn validate(path: &std::path::Path) -> ExitCode {
    let result = config::load_file(path, &ProcessEnv).and_then(|config| {
        let summary = config.summary();
        // Builds what start-up builds (TLS material included) without binding anything.
        seawall::build(config).map(|_| summary)
    });
    match result {
        Ok(summary) => {
            println!("{}: valid: {summary}", path.display());
            ExitCode::SUCCESS
        }
        Err(errors) => {
            for e in &errors {
                eprintln!("{}: {e}", path.display());
            }
            eprintln!("{}: {} error(s)", path.display(), errors.len());
            ExitCode::from(1)
        }
    }
}

/// `seawall test`: one line per case, a diff for each failure, a summary; exit 1 on any failure.
fn golden_test(path: &std::path::Path, update: bool) -> ExitCode {
    use seawall::mediation::golden;
    let folders = match golden::folders(path) {
        Ok(folders) => folders,
        Err(e) => {
            eprintln!("seawall test: {e}");
            return ExitCode::from(1);
        }
    };
    let (mut passed, mut failed, mut rewritten) = (0, 0, 0);
    for folder in folders {
        match golden::run_folder(&folder, update) {
            Ok(results) => {
                for result in results {
                    let name = result.file.display();
                    if result.updated {
                        rewritten += 1;
                        println!("{name}: updated");
                    } else if result.failures.is_empty() {
                        passed += 1;
                        println!("{name}: ok");
                    } else {
                        failed += 1;
                        println!("{name}: FAILED");
                        for failure in &result.failures {
                            println!("{failure}");
                        }
                    }
                }
            }
            Err(errors) => {
                failed += 1;
                for e in errors {
                    eprintln!("{e}");
                }
            }
        }
    }
    println!("{passed} passed, {failed} failed, {rewritten} updated");
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn genesys_ipranges(region: &str, from: Option<&std::path::Path>, output: Option<&std::path::Path>) -> ExitCode {
    let Some(from) = from else {
        eprintln!(
            "seawall: genesys ipranges: fetching the ranges live is not supported yet; save \
             `GET /api/v2/ipranges` to a file and pass it with --from FILE"
        );
        return ExitCode::from(1);
    };
    let answer = match std::fs::read_to_string(from) {
        Ok(text) => text,
        Err(e) => {
            eprintln!("seawall: genesys ipranges: cannot read `{}`: {e}", from.display());
            return ExitCode::from(1);
        }
    };
    let file = match seawall::genesys::ipranges(&answer, region) {
        Ok(file) => file,
        Err(message) => {
            eprintln!("seawall: genesys ipranges: `{}`: {message}", from.display());
            return ExitCode::from(1);
        }
    };
    let mut text = serde_json::to_string_pretty(&file).unwrap_or_default();
    text.push('\n');
    match output {
        None => print!("{text}"),
        Some(path) => {
            if let Err(e) = std::fs::write(path, text) {
                eprintln!("seawall: genesys ipranges: cannot write `{}`: {e}", path.display());
                return ExitCode::from(2);
            }
            eprintln!("{}: {} data-actions ranges for {region}", path.display(), file.cidrs.len());
        }
    }
    ExitCode::SUCCESS
}

/// `seawall token`: exit 0 and the access token on stdout; 1 when the issuer refused (its RFC
/// 6749 error on stderr); 2 when it could not be reached.
fn token(client_id: &str, secret: &str, url: &str, scope: Option<&str>) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("seawall: token: {e}");
            return ExitCode::from(2);
        }
    };
    let mut form = vec![("grant_type", "client_credentials")];
    if let Some(scope) = scope {
        form.push(("scope", scope));
    }
    let result = runtime.block_on(async {
        let response = reqwest::Client::new()
            .post(url)
            .basic_auth(client_id, Some(secret))
            .form(&form)
            .timeout(std::time::Duration::from_secs(10))
            .send()
            .await?;
        let status = response.status();
        let body = response.text().await?;
        Ok::<_, reqwest::Error>((status, body))
    });
    match result {
        Ok((status, body)) if status.is_success() => {
            match serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["access_token"].as_str().map(String::from))
            {
                Some(token) => {
                    println!("{token}");
                    ExitCode::SUCCESS
                }
                None => {
                    eprintln!("seawall: token: {url} answered {status} without an access_token");
                    ExitCode::from(2)
                }
            }
        }
        Ok((status, body)) => {
            eprintln!("seawall: token: {url} answered {status}: {}", body.trim());
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("seawall: token: cannot reach {url}: {e}");
            ExitCode::from(2)
        }
    }
}

fn config_errors(errors: &[ConfigError]) -> ExitCode {
    for e in errors {
        eprintln!("seawall: config: {e}");
    }
    ExitCode::from(1)
}

/// Runs until a signal: SIGTERM drains, SIGINT exits fast. Once every listener accepts
/// connections, prints `banner` and tells a waiting `daemon` parent.
fn serve(built: Built, banner: Option<String>, daemon: Option<Daemon>) -> ExitCode {
    let addresses = lifecycle::addresses(&built.gateway.config);
    if let Err(message) = lifecycle::check_addresses_free(&addresses) {
        eprintln!("seawall: {message}");
        return ExitCode::from(2);
    }
    if let Err(e) = lifecycle::take_sighup(Arc::clone(&built.gateway)) {
        eprintln!("seawall: cannot install the SIGHUP handler: {e}");
        return ExitCode::from(2);
    }
    lifecycle::exit_when_drained(built.server.watch_execution_phase(), Arc::clone(&built.gateway));
    if banner.is_some() || daemon.is_some() {
        let gateway = Arc::clone(&built.gateway);
        std::thread::spawn(move || {
            while !gateway.is_ready() {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            if let Some(banner) = banner {
                println!("{banner}");
            }
            if let Some(daemon) = daemon {
                daemon.serving();
            }
        });
    }
    built.run(Box::new(lifecycle::UnixSignals));
    ExitCode::SUCCESS
}

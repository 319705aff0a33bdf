//! The `aft` command line: `aft serve` runs the proxy, `aft check` checks a RESP endpoint.
//! Everything else lives in the library.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};

use aft::config::{Config, ConfigFlags};

#[derive(Parser)]
#[command(
    name = "aft",
    version,
    about = "Read-atomic transactions for unmodified Redis clients"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy.
    Serve(Box<ServeArgs>),
    /// Drive concurrent transactions against a RESP server and report anomalies
    /// (fractured reads, read-your-writes, dirty reads, lost writes). Exit status: 0 no
    /// anomaly, 1 anomalies found, 2 usage or connection error.
    Check(CheckArgs),
}

/// What `aft check` runs, and against which server.
#[derive(Args)]
struct CheckArgs {
    /// Server host.
    #[arg(long, default_value = "127.0.0.1", env = "AFT_CHECK_HOST")]
    host: String,
    /// Server port.
    #[arg(long, default_value_t = 7379, env = "AFT_CHECK_PORT")]
    port: u16,
    /// Ports of further servers on the same host (other aft nodes on one backend), comma
    /// separated: the clients are spread over all of them.
    #[arg(long, value_delimiter = ',')]
    more_ports: Vec<u16>,
    /// Password (sent with AUTH on every connection).
    #[arg(long, env = "AFT_CHECK_PASSWORD")]
    password: Option<String>,
    /// plain (no transactions) | multi (MULTI/EXEC) | interactive (AFT.BEGIN/COMMIT).
    #[arg(long, default_value = "multi")]
    mode: aft::check::Mode,
    /// Concurrent clients (one connection each).
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Transactions to run, in total.
    #[arg(long, default_value_t = 10_000)]
    txns: u64,
    /// Size of the key space.
    #[arg(long, default_value_t = 100)]
    keys: u32,
    /// Keys written per transaction.
    #[arg(long, default_value_t = 2)]
    writes: usize,
    /// Keys read per transaction (after its writes; some of them its own).
    #[arg(long, default_value_t = 4)]
    reads: usize,
    /// Bytes per value.
    #[arg(long, default_value_t = 32)]
    value_size: usize,
    /// Fraction of transactions aborted on purpose.
    #[arg(long, default_value_t = 0.05)]
    abort_rate: f64,
    /// Seed of the workload (default: from the clock).
    #[arg(long)]
    seed: Option<u64>,
    /// Keep trying to (re)connect for this many seconds before giving up.
    #[arg(long, default_value_t = 5.0)]
    reconnect_for: f64,
    /// Seconds to wait for any one reply.
    #[arg(long, default_value_t = 5.0)]
    timeout: f64,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

/// `aft serve`: a config file, then flags and environment variables over it.
#[derive(Args)]
struct ServeArgs {
    /// TOML config file (see conf/aft.toml, which lists every key).
    #[arg(long, env = "AFT_CONFIG")]
    config: Option<PathBuf>,
    #[command(flatten)]
    flags: ConfigFlags,
}

impl ServeArgs {
    fn into_config(self) -> Result<Config, String> {
        let mut config = match &self.config {
            Some(path) => Config::from_file(path).map_err(|e| e.to_string())?,
            None => Config::default(),
        };
        self.flags.apply(&mut config);
        config.validate().map_err(|e| e.to_string())?;
        Ok(config)
    }
}

/// The command line, with each `serve` flag's help ending in its default (defaults are
/// named once, in `aft::config`).
fn command_line() -> clap::Command {
    Cli::command().mut_subcommand("serve", |mut serve| {
        for (key, _, default) in Config::defaults() {
            serve = serve.mut_arg(key, |arg| {
                let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
                arg.help(format!("{help} [default: {default}]"))
            });
        }
        serve
    })
}

fn main() -> ExitCode {
    let cli = match Cli::from_arg_matches(&command_line().get_matches()) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    match cli.command {
        Command::Check(args) => check(args),
        Command::Serve(args) => {
            let config = match args.into_config() {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("aft: {e}");
                    return ExitCode::from(2);
                }
            };
            if let Err(e) = init_logging(&config.log) {
                eprintln!("aft: {e}");
                return ExitCode::from(2);
            }
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("aft: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(aft::serve(config)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e}");
                    eprintln!("aft: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// `aft check`: 0 no anomaly, 1 anomalies, 2 usage or connection error.
fn check(args: CheckArgs) -> ExitCode {
    let secs = |name: &str, v: f64| {
        std::time::Duration::try_from_secs_f64(v)
            .map_err(|_| format!("--{name} must be a non-negative number of seconds"))
    };
    let durations = secs("reconnect-for", args.reconnect_for)
        .and_then(|r| secs("timeout", args.timeout).map(|t| (r, t)));
    let (reconnect_for, timeout) = match durations {
        Ok(d) => d,
        Err(e) => {
            eprintln!("aft check: {e}");
            return ExitCode::from(2);
        }
    };
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    });
    let config = aft::check::CheckConfig {
        host: args.host,
        port: args.port,
        more_ports: args.more_ports,
        password: args.password,
        mode: args.mode,
        clients: args.clients,
        txns: args.txns,
        keys: args.keys,
        writes: args.writes,
        reads: args.reads,
        value_size: args.value_size,
        abort_rate: args.abort_rate,
        seed,
        reconnect_for,
        timeout,
        ..aft::check::CheckConfig::default()
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("aft check: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(aft::check::run(config)) {
        Ok(report) => {
            if args.json {
                println!("{}", report.to_json());
            } else {
                println!("{report}");
            }
            if report.anomalies() > 0 {
                ExitCode::from(1)
            } else if report.is_clean() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(2)
            }
        }
        Err(e) => {
            eprintln!("aft check: {e}");
            ExitCode::from(2)
        }
    }
}

/// Logs to stderr, in colour only when stderr is a terminal and `NO_COLOR` is unset or
/// empty (<https://no-color.org>), so that log files and journals get plain text.
fn init_logging(filter: &str) -> Result<(), String> {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .map_err(|e| format!("invalid log filter '{filter}': {e}"))?;
    let colour = std::io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colour)
        .try_init()
        .map_err(|e| format!("cannot start logging: {e}"))
}

//! `vswitchd --config fabric.toml`: serves the configured switches, ports,
//! pools and exports until SIGINT or SIGTERM, then prints the counters (one
//! line per port, FDB, tunnel, export, pool and volume), closes the pools,
//! removes its sockets and exits 0. SIGUSR1 prints the counters without
//! stopping.
//! `vswitchd --check --config fabric.toml` validates the file and exits.
//! `--log-json` writes logs as JSON lines (filter with `RUST_LOG`).
//! `--pidfile PATH` writes the daemon's pid there once it serves (refusing to
//! start while the file names a running vswitchd) and removes it at exit.
//! Under a service manager (`$NOTIFY_SOCKET`, systemd's `Type=notify`) it
//! sends `READY=1` once every socket is bound and every pool is open, and
//! `STOPPING=1` when a signal stops it (contrib/systemd/vswitchd.service).

use fabric::service::{notify, Pidfile, ServiceState};
use fabric::Daemon;
use signal_hook::consts::{SIGINT, SIGTERM, SIGUSR1};
use signal_hook::iterator::Signals;
use std::path::PathBuf;
use std::process::ExitCode;

const USAGE: &str = "usage: vswitchd [--check] [--log-json] [--pidfile FILE] --config FILE";

struct Args {
    config: PathBuf,
    check: bool,
    log_json: bool,
    pidfile: Option<PathBuf>,
}

fn parse_args() -> Result<Args, String> {
    let mut config = None;
    let mut check = false;
    let mut log_json = false;
    let mut pidfile = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--config" | "-c" => config = Some(args.next().ok_or("--config needs a file")?),
            "--check" => check = true,
            "--log-json" => log_json = true,
            "--pidfile" => {
                pidfile = Some(PathBuf::from(args.next().ok_or("--pidfile needs a file")?))
            }
            "--help" | "-h" => return Err(USAGE.to_string()),
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    let config = config.ok_or_else(|| format!("--config is required\n{USAGE}"))?;
    Ok(Args {
        config: PathBuf::from(config),
        check,
        log_json,
        pidfile,
    })
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(msg) => {
            eprintln!("{msg}");
            return ExitCode::from(2);
        }
    };
    // Structured logs (tracing); `--log-json` for one JSON object per line.
    fabric::logging::init(args.log_json);
    let config = match fabric_config::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("vswitchd: {e}");
            return ExitCode::from(1);
        }
    };
    if args.check {
        // User and group names are looked up now too, as start-up would.
        if let Err(e) = fabric::sockets::serve_options(&config.daemon) {
            eprintln!("vswitchd: {}: {e}", args.config.display());
            return ExitCode::from(1);
        }
        let ports: usize = config.switches.iter().map(|s| s.ports.len()).sum();
        let volumes: usize = config.pools.iter().map(|p| p.volumes.len()).sum();
        println!(
            "{}: OK ({} switches, {} ports, {} pools, {} volumes)",
            args.config.display(),
            config.switches.len(),
            ports,
            config.pools.len(),
            volumes
        );
        return ExitCode::SUCCESS;
    }
    // Handlers go in before any socket exists, so a signal never leaves sockets behind.
    let mut signals = match Signals::new([SIGINT, SIGTERM, SIGUSR1]) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("vswitchd: cannot install signal handlers: {e}");
            return ExitCode::from(1);
        }
    };
    // Checked before any socket is bound: a second daemon must not disturb
    // the first one's sockets even for a moment.
    if let Some(Err(e)) = args.pidfile.as_deref().map(Pidfile::check_free) {
        eprintln!("vswitchd: {e}");
        return ExitCode::from(1);
    }
    let daemon = match Daemon::start_from(&config, Some(&args.config)) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("vswitchd: {e}");
            return ExitCode::from(1);
        }
    };
    let pidfile = match args.pidfile.as_deref().map(Pidfile::write).transpose() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("vswitchd: {e}");
            daemon.shutdown();
            return ExitCode::from(1);
        }
    };
    // Every port, export, control and metrics socket is bound and every pool
    // open once start_from returned: what a `Type=notify` unit waits for.
    send_state(ServiceState::Ready);
    log::info!("vswitchd running; SIGUSR1 prints counters, SIGINT or SIGTERM stops it");
    for sig in signals.forever() {
        // Counters go to stdout, one line per item, for scripts and tests.
        for line in daemon.counters_report() {
            println!("{line}");
        }
        if sig != SIGUSR1 {
            log::info!("signal {sig}: shutting down");
            send_state(ServiceState::Stopping);
            break;
        }
    }
    daemon.shutdown();
    drop(pidfile);
    log::info!("stopped");
    ExitCode::SUCCESS
}

/// sd_notify; a supervisor that cannot be told is logged, not fatal (systemd
/// then times the start out and says so itself).
fn send_state(state: ServiceState) {
    if let Err(e) = notify(state) {
        log::warn!("cannot notify the service manager ({state:?}): {e}");
    }
}

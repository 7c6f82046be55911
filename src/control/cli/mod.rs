//! `fabricctl`: the operator command line over the control socket.
//!
//! [`run`] is the whole program minus the process glue
//! (`src/bin/fabricctl.rs`): it parses the arguments by hand (no
//! dependency), sends one request with [`Client`], and prints the result as
//! aligned tables (or the raw result with `--json`). No input makes it
//! panic; every failure is a message on stderr and an exit code:
//!
//! | exit | meaning |
//! |---|---|
//! | 0 | ok |
//! | 2 | usage error, or the daemon refused the request as bad |
//! | 3 | not found |
//! | 4 | already exists, or conflict |
//! | 5 | no space |
//! | 6 | internal error in the daemon, or a malformed answer |
//! | 7 | the daemon is not reachable |
//!
//! One job per file: `spec` is the command table (which commands and
//! options exist, the help text), `values` the grammar of sizes and VLANs,
//! `args` turns argv into an [`Invocation`], `table` renders results for
//! humans; this file sends the request and is the program's entry point.

mod args;
mod parsed;
mod spec;
mod table;
mod values;

pub use args::parse_args;
pub use spec::help_text;
pub use table::{human_duration, human_size, render, Align, Table};
pub use values::{parse_size, parse_vlan_id, parse_vlan_spec};

use super::client::{Client, ClientError, EXIT_USAGE};
use serde_json::Value;
use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;
use table::{clean, json_text};

/// Environment variable naming the control socket (after `--socket`).
pub const SOCKET_ENV: &str = "FABRIC_CONTROL_SOCKET";
/// The control socket when neither `--socket` nor [`SOCKET_ENV`] is given.
pub const DEFAULT_SOCKET: &str = "./run/control.sock";

/// One request to send: the operation and its `args` object.
#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    pub op: &'static str,
    pub args: Value,
}

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Print this text (usage) on stdout and exit 0.
    Help(String),
    /// Print the version and exit 0.
    Version,
    /// Send this request.
    Call(Call),
}

/// A parsed command line.
#[derive(Debug, Clone, PartialEq)]
pub struct Invocation {
    /// `--socket` / `--control-socket`, if given.
    pub socket: Option<PathBuf>,
    /// `--json`: print the raw result.
    pub json: bool,
    /// `--timeout`: how long to wait for the daemon (zero: forever).
    pub timeout: Duration,
    pub action: Action,
}

/// A bad command line (exit 2).
#[derive(Debug, Clone, PartialEq)]
pub struct UsageError {
    pub message: String,
    /// The synopsis of the command concerned, shown after the message.
    pub synopsis: Option<&'static str>,
    /// Show the whole usage text (no command given at all).
    pub full_usage: bool,
}

pub(super) fn usage(message: impl Into<String>) -> UsageError {
    UsageError {
        message: message.into(),
        synopsis: None,
        full_usage: false,
    }
}

/// Sends `call` to the daemon at `socket` and returns the text to print.
pub fn execute(
    socket: &Path,
    timeout: Duration,
    call: &Call,
    json: bool,
) -> Result<String, ClientError> {
    let mut client = Client::connect_with_timeout(socket, Some(timeout))?;
    let result = client.call(call.op, call.args.clone())?;
    if json {
        return Ok(json_text(&result));
    }
    render(call, result).map_err(|detail| ClientError::Malformed {
        path: socket.to_path_buf(),
        detail,
    })
}

/// The whole program: `args` without the program name, `env_socket` the
/// value of [`SOCKET_ENV`]. Returns the exit code. Errors go to `err` as
/// `fabricctl: <message>`; failures to write the output are ignored (a
/// closed pipe must not turn into a panic).
pub fn run(
    args: &[OsString],
    env_socket: Option<OsString>,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> i32 {
    let Some(args) = args
        .iter()
        .map(|a| a.to_str().map(str::to_owned))
        .collect::<Option<Vec<String>>>()
    else {
        let _ = writeln!(err, "fabricctl: arguments must be valid UTF-8");
        return EXIT_USAGE;
    };
    let invocation = match parse_args(&args) {
        Ok(inv) => inv,
        Err(e) => {
            let _ = writeln!(err, "fabricctl: {}", e.message);
            if e.full_usage {
                let _ = write!(err, "\n{}", help_text(None));
            } else if let Some(synopsis) = e.synopsis {
                let _ = writeln!(err, "usage: fabricctl {synopsis}");
            } else {
                let _ = writeln!(err, "run 'fabricctl --help' for usage");
            }
            return EXIT_USAGE;
        }
    };
    let call = match invocation.action {
        Action::Help(text) => {
            let _ = out.write_all(text.as_bytes());
            return 0;
        }
        Action::Version => {
            let _ = writeln!(
                out,
                "fabricctl {} (control protocol {})",
                env!("CARGO_PKG_VERSION"),
                super::protocol::VERSION
            );
            return 0;
        }
        Action::Call(call) => call,
    };
    let socket = invocation
        .socket
        .or_else(|| env_socket.filter(|s| !s.is_empty()).map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET));
    match execute(&socket, invocation.timeout, &call, invocation.json) {
        Ok(text) => {
            let _ = out.write_all(text.as_bytes());
            let _ = out.flush();
            0
        }
        Err(e) => {
            let _ = writeln!(err, "fabricctl: {}", clean(&e.to_string()));
            e.exit_code()
        }
    }
}

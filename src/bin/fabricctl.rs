//! `fabricctl`: the operator command line for a running `vswitchd`, over its
//! control socket. Everything is in [`fabric::control::cli`]; see
//! `fabricctl --help`.

use fabric::control::cli::{run, SOCKET_ENV};
use std::io::Write;

fn main() {
    let args: Vec<_> = std::env::args_os().skip(1).collect();
    let stdout = std::io::stdout();
    let stderr = std::io::stderr();
    let code = run(
        &args,
        std::env::var_os(SOCKET_ENV),
        &mut stdout.lock(),
        &mut stderr.lock(),
    );
    let _ = std::io::stdout().flush();
    std::process::exit(code);
}

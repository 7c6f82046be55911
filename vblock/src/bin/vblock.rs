//! `vblock`: the offline command line for vblock thin pools. Everything is in
//! [`vblock::cli`]; this is the process glue: arguments in, exit status out,
//! errors on stderr as `vblock: <message>`.

use std::io::{self, Write};
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut args = Vec::new();
    for arg in std::env::args_os().skip(1) {
        match arg.into_string() {
            Ok(a) => args.push(a),
            Err(a) => return fail(&format!("argument {a:?} is not valid UTF-8"), 2),
        }
    }
    let stdout = io::stdout();
    let mut out = stdout.lock();
    let result = vblock::cli::run(&args, &mut out);
    let flushed = out.flush();
    drop(out);
    match (result, flushed) {
        (Ok(()), Ok(())) => ExitCode::SUCCESS,
        (Ok(()), Err(e)) => fail(&format!("writing the output: {e}"), 1),
        (Err(e), _) => {
            let code = e.exit_code();
            if code == 2 {
                fail(&format!("{e}\nRun 'vblock --help' for usage."), code)
            } else {
                fail(&e.to_string(), code)
            }
        }
    }
}

/// Reports on stderr (ignoring a closed stderr: nothing else to tell) and
/// returns the exit status.
fn fail(msg: &str, code: i32) -> ExitCode {
    let _ = writeln!(io::stderr(), "vblock: {msg}");
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

//! The offline `vblock` command line: create and inspect pools, manage
//! volumes, check and dump the metadata. Nothing here runs while a backend
//! has the pool open: every command opens the pool file or device itself.
//!
//! [`run`] is the whole program minus the process glue (`src/bin/vblock.rs`),
//! so tests can call it in-process. Arguments are parsed by hand (no
//! dependency); no input makes it panic.
//!
//! One job per file, as in `fabricctl`'s `src/control/cli/`: `spec` the
//! synopses and help text, `args` the argument walker and the shared size
//! and name grammar, `open` opening the pool, `pools`, `volumes`, `images`
//! and `inspect` the commands, `table` the rendering for humans; this file
//! dispatches.

use std::io::Write;

mod args;
mod error;
mod images;
mod inspect;
mod open;
mod pools;
mod spec;
mod table;
mod volumes;

pub use error::CliError;
pub use spec::USAGE;
pub use table::human;

use error::usage;
use images::{volume_export, volume_import};
use inspect::{check, dump};
use pools::{pool_create, pool_info};
use volumes::{copy, volume_create, volume_delete, volume_list, volume_rename, volume_resize};

/// Runs one command. `args` are the arguments after the program name; normal
/// output goes to `out`. Errors are returned, not printed.
pub fn run(args: &[String], out: &mut dyn Write) -> Result<(), CliError> {
    let is_help = |a: &String| a == "--help" || a == "-h";
    let before_dashes = args.iter().take_while(|a| *a != "--");
    if args.is_empty() || args[0] == "help" || before_dashes.clone().any(is_help) {
        out.write_all(USAGE.as_bytes())?;
        return Ok(());
    }
    let (cmd, rest) = (args[0].as_str(), &args[1..]);
    match cmd {
        "pool" | "volume" => {
            let Some(sub) = rest.first() else {
                return Err(usage(format!("{cmd}: missing subcommand")));
            };
            let rest = &rest[1..];
            match (cmd, sub.as_str()) {
                ("pool", "create") => pool_create(rest, out),
                ("pool", "info") => pool_info(rest, out),
                ("volume", "create") => volume_create(rest, out),
                ("volume", "delete") => volume_delete(rest, out),
                ("volume", "resize") => volume_resize(rest, out),
                ("volume", "rename") => volume_rename(rest, out),
                ("volume", "list") => volume_list(rest, out),
                ("volume", "import") => volume_import(rest, out),
                ("volume", "export") => volume_export(rest, out),
                _ => Err(usage(format!("unknown command: {cmd} {sub}"))),
            }
        }
        "snapshot" => copy(rest, out, true),
        "clone" => copy(rest, out, false),
        "check" => check(rest, out),
        "dump" => dump(rest, out),
        _ => Err(usage(format!("unknown command: {cmd}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_args(args: &[&str]) -> (Result<(), CliError>, String) {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let mut out = Vec::new();
        let r = run(&args, &mut out);
        (r, String::from_utf8_lossy(&out).into_owned())
    }

    #[test]
    fn command_line_errors() {
        let (r, out) = run_args(&[]);
        assert!(r.is_ok() && out.contains("usage:"));
        let (r, out) = run_args(&["volume", "list", "--help"]);
        assert!(r.is_ok() && out.contains("usage:"));
        for args in [
            &["frobnicate"][..],
            &["pool"],
            &["pool", "frob", "p"],
            &["pool", "create", "p"],
            &["pool", "create", "p", "--size"],
            &["pool", "create", "p", "--size", "12X"],
            &["pool", "create", "p", "--size", "1M", "--size", "2M"],
            &["pool", "create", "p", "--size", "1M", "--bogus"],
            &["pool", "create", "p", "--size", "1M", "--force=yes"],
            &[
                "pool",
                "create",
                "p",
                "--size",
                "1M",
                "--cluster-size",
                "8G",
            ],
            &["pool", "info"],
            &["pool", "info", "a", "b"],
            &["volume", "create", "p", "v"],
            &[
                "volume",
                "create",
                "p",
                "v",
                "--size",
                "1M",
                "--block-size",
                "1000",
            ],
            &["volume", "rename", "p", "v"],
            &["volume", "import", "p", "v"],
            &["volume", "export", "p", "v", "f", "--bogus"],
            &["snapshot", "p", "v"],
            // New names follow the shared rule (checked before the pool is opened).
            &["volume", "create", "p", "a b", "--size", "1M"],
            &["volume", "rename", "p", "v", "v/1"],
            &["snapshot", "p", "v", ".."],
            &["clone", "p", "v", "é"],
            &["check"],
        ] {
            let (r, _) = run_args(args);
            match r {
                Err(e @ CliError::Usage(_)) => assert_eq!(e.exit_code(), 2, "{args:?}"),
                other => panic!("{args:?}: expected a usage error, got {other:?}"),
            }
        }
    }
}

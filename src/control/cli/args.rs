//! Turning argv into an [`Invocation`]: global options, the command's
//! words, its options and positionals, and the usage errors.

use super::parsed::Parsed;
use super::spec::{help_text, Spec, SPECS};
use super::{usage, Action, Invocation, UsageError};
use crate::control::client::DEFAULT_TIMEOUT;
use std::path::PathBuf;
use std::time::Duration;

/// `--name=value` -> (`--name`, `Some("value")`).
fn split_option(arg: &str) -> (&str, Option<&str>) {
    match arg.split_once('=') {
        Some((name, value)) => (name, Some(value)),
        None => (arg, None),
    }
}

struct Globals {
    socket: Option<PathBuf>,
    json: bool,
    timeout: Duration,
}

/// Handles a global option at `args[*i - 1]` (already split); `Ok(false)`
/// if `name` is not one.
fn global_option(
    name: &str,
    inline: Option<&str>,
    args: &[String],
    i: &mut usize,
    g: &mut Globals,
) -> Result<bool, String> {
    let mut value = || -> Result<String, String> {
        match inline {
            Some(v) => Ok(v.to_owned()),
            None => {
                let v = args.get(*i).ok_or(format!("{name} needs a value"))?;
                *i += 1;
                Ok(v.clone())
            }
        }
    };
    match name {
        "--socket" | "--control-socket" => {
            let v = value()?;
            if v.is_empty() {
                return Err(format!("{name} needs a path"));
            }
            g.socket = Some(PathBuf::from(v));
        }
        "--timeout" => {
            let v = value()?;
            g.timeout = v
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|s| *s >= 0.0)
                .and_then(|s| Duration::try_from_secs_f64(s).ok())
                .ok_or_else(|| {
                    format!("--timeout: expected seconds (0: wait forever), not {v:?}")
                })?;
        }
        "--json" => {
            if inline.is_some() {
                return Err("--json takes no value".into());
            }
            g.json = true;
        }
        _ => return Ok(false),
    }
    Ok(true)
}

fn is_help(arg: &str) -> bool {
    arg == "-h" || arg == "--help"
}

/// Parses the arguments (without the program name).
pub fn parse_args(args: &[String]) -> Result<Invocation, UsageError> {
    let mut g = Globals {
        socket: None,
        json: false,
        timeout: DEFAULT_TIMEOUT,
    };
    let done = |g: Globals, action| {
        Ok(Invocation {
            socket: g.socket,
            json: g.json,
            timeout: g.timeout,
            action,
        })
    };
    // Options before the command are global.
    let mut i = 0;
    while let Some(arg) = args.get(i) {
        if !arg.starts_with('-') || arg == "-" {
            break;
        }
        i += 1;
        if arg == "--" {
            break;
        }
        if is_help(arg) {
            return done(g, Action::Help(help_text(None)));
        }
        if arg == "--version" || arg == "-V" {
            return done(g, Action::Version);
        }
        let (name, inline) = split_option(arg);
        if !global_option(name, inline, args, &mut i, &mut g).map_err(usage)? {
            return Err(usage(format!("unknown option {name}")));
        }
    }
    let Some(word) = args.get(i) else {
        return Err(UsageError {
            message: "missing command".into(),
            synopsis: None,
            full_usage: true,
        });
    };
    i += 1;
    if word == "help" {
        let topic = args.get(i).map(String::as_str);
        return done(g, Action::Help(help_text(topic)));
    }
    let group: Vec<&Spec> = SPECS.iter().filter(|s| s.words[0] == word).collect();
    if group.is_empty() {
        return Err(usage(format!("unknown command {word:?}")));
    }
    let spec = if group.len() == 1 && group[0].words.len() == 1 {
        group[0]
    } else {
        let subs: Vec<&str> = group.iter().map(|s| s.words[1]).collect();
        let subs = subs.join(", ");
        let Some(sub) = args.get(i) else {
            return Err(usage(format!("{word}: missing subcommand ({subs})")));
        };
        i += 1;
        if is_help(sub) {
            return done(g, Action::Help(help_text(Some(word))));
        }
        match group.iter().find(|s| s.words[1] == sub) {
            Some(spec) => spec,
            None => {
                return Err(usage(format!(
                    "{word}: unknown subcommand {sub:?} ({subs})"
                )))
            }
        }
    };
    let command_error = |message: String| UsageError {
        message: format!("{}: {message}", spec.words.join(" ")),
        synopsis: Some(spec.synopsis),
        full_usage: false,
    };

    let mut parsed = Parsed::default();
    let mut only_positional = false;
    while let Some(arg) = args.get(i) {
        i += 1;
        if only_positional || !arg.starts_with('-') || arg == "-" {
            parsed.pos.push(arg.clone());
            continue;
        }
        if arg == "--" {
            only_positional = true;
            continue;
        }
        if is_help(arg) {
            return done(g, Action::Help(help_text(Some(&spec.words.join(" ")))));
        }
        let (name, inline) = split_option(arg);
        if let Some(&option) = spec.options.iter().find(|o| **o == name) {
            let value = match inline {
                Some(v) => v.to_owned(),
                None => match args.get(i) {
                    Some(v) => {
                        i += 1;
                        v.clone()
                    }
                    None => return Err(command_error(format!("{name} needs a value"))),
                },
            };
            if parsed.opt(option).is_some() {
                return Err(command_error(format!("{name} given twice")));
            }
            parsed.opts.push((option, value));
        } else if let Some(&flag) = spec.flags.iter().find(|f| **f == name) {
            if inline.is_some() {
                return Err(command_error(format!("{name} takes no value")));
            }
            parsed.flags.push(flag);
        } else if !global_option(name, inline, args, &mut i, &mut g).map_err(command_error)? {
            return Err(command_error(format!("unknown option {name}")));
        }
    }
    if let Some(missing) = spec.positionals.get(parsed.pos.len()) {
        return Err(command_error(format!("missing {missing}")));
    }
    if let Some(extra) = parsed.pos.get(spec.positionals.len()) {
        return Err(command_error(format!("unexpected argument {extra:?}")));
    }
    let call = (spec.build)(&parsed).map_err(command_error)?;
    done(g, Action::Call(call))
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::cli::spec::call;
    use crate::control::cli::values::parse_block_size;
    use crate::control::cli::Call;
    use serde_json::json;

    fn parse(line: &str) -> Result<Invocation, UsageError> {
        let args: Vec<String> = line.split_whitespace().map(str::to_owned).collect();
        parse_args(&args)
    }

    fn call_of(line: &str) -> Call {
        match parse(line) {
            Ok(Invocation {
                action: Action::Call(c),
                ..
            }) => c,
            other => panic!("{line}: {other:?}"),
        }
    }

    fn error_of(line: &str) -> String {
        match parse(line) {
            Err(e) => e.message,
            Ok(other) => panic!("{line}: parsed as {other:?}"),
        }
    }

    #[test]
    fn sizes() {
        // The shared grammar's table, through `volume create --size`.
        for (input, want) in fabric_config::SIZE_TABLE {
            let args: Vec<String> = ["volume", "create", "p", "v", "--size", input]
                .map(str::to_owned)
                .into();
            match (want, parse_args(&args)) {
                (
                    Ok(bytes),
                    Ok(Invocation {
                        action: Action::Call(c),
                        ..
                    }),
                ) => assert_eq!(
                    c,
                    call("volume.create", json!({"pool":"p","name":"v","size":bytes})),
                    "{input:?}"
                ),
                (Err(e), Err(got)) => {
                    assert_eq!(
                        got.message,
                        format!("volume create: bad size {input:?}: {e}")
                    )
                }
                (want, got) => panic!("{input:?}: want {want:?}, got {got:?}"),
            }
        }
        assert_eq!(parse_block_size("4K"), Ok(4096));
        assert_eq!(parse_block_size("512"), Ok(512));
        assert!(parse_block_size("1024").is_err());
    }

    #[test]
    fn commands_and_args() {
        assert_eq!(call_of("status"), call("daemon.status", json!({})));
        assert_eq!(
            call_of("port add br0 vm9 --vlan trunk:10,20:native=1 --mtu 9000 --mac 52:54:00:00:00:09 --queue-size=256 --socket /run/vm9.sock"),
            call(
                "port.add",
                json!({"switch":"br0","name":"vm9","type":"vhost-user","socket":"/run/vm9.sock",
                       "vlan":{"mode":"trunk","allowed":[10,20],"native":1},
                       "mtu":9000,"mac":"52:54:00:00:00:09","queue_size":256})
            )
        );
        assert_eq!(
            call_of("port add br0 vm9 --queues 2 --no-offloads"),
            call(
                "port.add",
                json!({"switch":"br0","name":"vm9","type":"vhost-user","queues":2,"offloads":false})
            )
        );
        assert_eq!(
            call_of("port add br0 t1 --type tap --multi-queue"),
            call(
                "port.add",
                json!({"switch":"br0","name":"t1","type":"tap","multi_queue":true})
            )
        );
        assert_eq!(
            call_of("port add br0 vm9"),
            call(
                "port.add",
                json!({"switch":"br0","name":"vm9","type":"vhost-user"})
            )
        );
        assert_eq!(
            call_of("fdb add br0 10 52:54:00:00:00:01 vm1"),
            call(
                "fdb.add",
                json!({"switch":"br0","vlan":10,"mac":"52:54:00:00:00:01","port":"vm1"})
            )
        );
        assert_eq!(
            call_of("volume create p1 disk --size 1G --block-size 4096"),
            call(
                "volume.create",
                json!({"pool":"p1","name":"disk","size":1u64<<30,"block_size":4096})
            )
        );
        assert_eq!(
            call_of("volume resize p1 disk --force --size=2G"),
            call(
                "volume.resize",
                json!({"pool":"p1","name":"disk","size":2u64<<30,"force":true})
            )
        );
        assert_eq!(
            call_of("export add p1 disk --read-only --queues 4"),
            call(
                "export.add",
                json!({"pool":"p1","volume":"disk","queues":4,"read_only":true})
            )
        );
        assert_eq!(
            call_of("volume delete p1 -- -odd"),
            call("volume.delete", json!({"pool":"p1","name":"-odd"}))
        );
        // Unset options and a false flag are left out of the object, as
        // before the argument structs.
        for (line, op, args) in [
            (
                "volume resize p1 disk --size 2G",
                "volume.resize",
                json!({"pool":"p1","name":"disk","size":2u64<<30}),
            ),
            ("fdb flush br0", "fdb.flush", json!({"switch":"br0"})),
            (
                "fdb flush br0 --port vm1",
                "fdb.flush",
                json!({"switch":"br0","port":"vm1"}),
            ),
            ("volume list", "volume.list", json!({})),
            ("config save", "config.save", json!({})),
            (
                "volume snapshot p1 disk disk-s",
                "volume.snapshot",
                json!({"pool":"p1","source":"disk","name":"disk-s"}),
            ),
            (
                "volume rename p1 disk d2",
                "volume.rename",
                json!({"pool":"p1","name":"disk","new_name":"d2"}),
            ),
            (
                "export remove p1 disk",
                "export.remove",
                json!({"pool":"p1","volume":"disk"}),
            ),
            ("port remove vm1", "port.remove", json!({"name":"vm1"})),
            (
                "port remove vm1 --if-exists",
                "port.remove",
                json!({"name":"vm1","if_exists":true}),
            ),
            (
                "port set vm1 --mtu 9000 --mac-limit 4 --admin down --vlan access:20",
                "port.set",
                json!({"name":"vm1","mtu":9000,"mac_limit":4,"admin":"down",
                       "vlan":{"mode":"access","tag":20}}),
            ),
            (
                "fdb del br0 10 52:54:00:00:00:01 --if-exists",
                "fdb.del",
                json!({"switch":"br0","vlan":10,"mac":"52:54:00:00:00:01","if_exists":true}),
            ),
            ("log level debug", "log.level", json!({"level":"debug"})),
            (
                "volume create p1 d --size 4096 --may-exist",
                "volume.create",
                json!({"pool":"p1","name":"d","size":4096,"may_exist":true}),
            ),
            (
                "volume clone p1 s c --may-exist",
                "volume.clone",
                json!({"pool":"p1","source":"s","name":"c","may_exist":true}),
            ),
            (
                "volume delete p1 d --if-exists",
                "volume.delete",
                json!({"pool":"p1","name":"d","if_exists":true}),
            ),
            (
                "export add p1 d --may-exist",
                "export.add",
                json!({"pool":"p1","volume":"d","may_exist":true}),
            ),
            (
                "export remove p1 d --if-exists",
                "export.remove",
                json!({"pool":"p1","volume":"d","if_exists":true}),
            ),
            (
                "port add br0 vm1 --may-exist",
                "port.add",
                json!({"switch":"br0","name":"vm1","type":"vhost-user","may_exist":true}),
            ),
            ("fdb show br0", "fdb.show", json!({"switch":"br0"})),
        ] {
            assert_eq!(call_of(line), call(op, args), "{line}");
        }
        // Relative paths are made absolute (the daemon has another cwd).
        let c = call_of("config save --path out.toml");
        let path = c.args["path"].as_str().unwrap();
        assert!(
            path.starts_with('/') && path.ends_with("/out.toml"),
            "{path}"
        );
    }

    #[test]
    fn global_options() {
        let inv = parse("--socket /a.sock --json port list").unwrap();
        assert_eq!(inv.socket, Some(PathBuf::from("/a.sock")));
        assert!(inv.json);
        // After a command without its own --socket, --socket is global.
        let inv = parse("pool list --socket /b.sock --timeout 1.5").unwrap();
        assert_eq!(inv.socket, Some(PathBuf::from("/b.sock")));
        assert_eq!(inv.timeout, Duration::from_millis(1500));
        // After port add it is the port's socket.
        let inv = parse("--socket /c.sock port add br0 vm1 --socket /vm1.sock --json").unwrap();
        assert_eq!(inv.socket, Some(PathBuf::from("/c.sock")));
        assert!(inv.json);
        let Action::Call(c) = inv.action else {
            panic!()
        };
        assert_eq!(c.args["socket"], "/vm1.sock");
        let inv = parse("export add p v --control-socket=/d.sock").unwrap();
        assert_eq!(inv.socket, Some(PathBuf::from("/d.sock")));
        assert_eq!(inv.timeout, DEFAULT_TIMEOUT);
        assert_eq!(parse("status --timeout 0").unwrap().timeout, Duration::ZERO);
    }

    #[test]
    fn help_and_version() {
        for line in [
            "--help",
            "-h",
            "help",
            "help volume",
            "volume --help",
            "volume create -h",
        ] {
            match parse(line).unwrap().action {
                Action::Help(text) => assert!(text.contains("usage: fabricctl"), "{line}"),
                other => panic!("{line}: {other:?}"),
            }
        }
        let Action::Help(text) = parse("help fdb").unwrap().action else {
            panic!()
        };
        assert!(text.contains("fdb flush") && !text.contains("volume create"));
        assert_eq!(parse("--version").unwrap().action, Action::Version);
        // Every synopsis is in the full text.
        let full = help_text(None);
        for spec in SPECS {
            assert!(full.contains(spec.synopsis), "{}", spec.synopsis);
        }
    }

    #[test]
    fn usage_errors() {
        assert!(parse("").unwrap_err().full_usage);
        for (line, want) in [
            ("frobnicate", "unknown command"),
            ("port", "missing subcommand (list, add, remove, set, limit)"),
            ("port frob", "unknown subcommand"),
            ("port add br0", "missing NAME"),
            ("port remove a b", "unexpected argument \"b\""),
            ("port add br0 vm1 --mtu", "--mtu needs a value"),
            (
                "port add br0 vm1 --mtu 70000",
                "--mtu: expected a whole number up to 65535",
            ),
            ("port add br0 vm1 --vlan access:5000", "outside 1..=4094"),
            ("port add br0 vm1 --mtu 1 --mtu 2", "given twice"),
            ("port list --bogus", "unknown option --bogus"),
            ("--bogus status", "unknown option --bogus"),
            ("volume create p v", "--size is required"),
            ("volume create p v --size 1Q", "bad size"),
            (
                "volume create p v --size 1G --block-size 1000",
                "512 or 4096",
            ),
            ("volume resize p v --size 1G --force=yes", "takes no value"),
            ("fdb add br0 0 m p", "outside 1..=4094"),
            ("fdb add br0 x m p", "bad VLAN id"),
            ("status --timeout -1", "--timeout"),
            ("status --timeout nan", "--timeout"),
            ("status --socket", "--socket needs a value"),
            ("status --json=1", "takes no value"),
            ("port set vm1", "nothing to change"),
            (
                "port set vm1 --admin sideways",
                "--admin must be up or down",
            ),
            (
                "port set vm1 --mac-limit -1",
                "--mac-limit: expected a whole number",
            ),
            ("log level", "missing LEVEL"),
            ("fdb del br0 10", "missing MAC"),
        ] {
            let e = error_of(line);
            assert!(e.contains(want), "{line}: {e}");
        }
        let e = parse("volume create p").unwrap_err();
        assert_eq!(
            e.synopsis,
            Some("volume create POOL NAME --size S [--block-size 512|4096] [--may-exist]")
        );
    }

    #[test]
    fn no_command_line_panics() {
        let tokens = [
            "port",
            "add",
            "volume",
            "create",
            "x",
            "--size",
            "--socket",
            "--vlan",
            "trunk:",
            "--json",
            "--",
            "-h",
            "--timeout",
            "=",
            "--force=",
            "",
        ];
        let n = tokens.len();
        for len in 0..=4u32 {
            for mut k in 0..n.pow(len) {
                let mut args = Vec::new();
                for _ in 0..len {
                    args.push(tokens[k % n].to_owned());
                    k /= n;
                }
                let _ = parse_args(&args);
            }
        }
    }
}

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

use super::client::{Client, ClientError, DEFAULT_TIMEOUT, EXIT_USAGE};
use super::protocol::{ExportAdd, FdbEntryInfo, PoolInfo, PortAdd, PortInfo, Status, VolumeInfo};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};
use std::ffi::OsString;
use std::fmt::Write as _;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

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

fn usage(message: impl Into<String>) -> UsageError {
    UsageError {
        message: message.into(),
        synopsis: None,
        full_usage: false,
    }
}

// ---- the command table ----

/// One command: its words, synopsis, positional arguments and options, and
/// how to turn them into a [`Call`].
struct Spec {
    words: &'static [&'static str],
    /// After `fabricctl `.
    synopsis: &'static str,
    summary: &'static str,
    positionals: &'static [&'static str],
    /// Options taking a value.
    options: &'static [&'static str],
    /// Options without a value.
    flags: &'static [&'static str],
    build: fn(&Parsed) -> Result<Call, String>,
}

const SPECS: &[Spec] = &[
    Spec {
        words: &["status"],
        synopsis: "status",
        summary: "daemon version, pid, uptime and configuration file",
        positionals: &[],
        options: &[],
        flags: &[],
        build: |_| Ok(call("daemon.status", json!({}))),
    },
    Spec {
        words: &["port", "list"],
        synopsis: "port list",
        summary: "ports of every switch, with link state and counters",
        positionals: &[],
        options: &[],
        flags: &[],
        build: |_| Ok(call("port.list", json!({}))),
    },
    Spec {
        words: &["port", "add"],
        synopsis: "port add SWITCH NAME [--type vhost-user|tap] [--socket P] [--device IFNAME] [--vlan access:TAG | --vlan trunk[:LIST][:native=N]] [--mtu N] [--mac MAC] [--queue-size N]",
        summary: "add a port to SWITCH: vhost-user (default socket <run_dir>/NAME.sock) or\n\
                  a TAP device (--type tap, --device defaults to NAME); default VLAN\n\
                  access:1; e.g. --vlan trunk:10,20,100-199:native=1",
        positionals: &["SWITCH", "NAME"],
        options: &["--socket", "--vlan", "--mtu", "--mac", "--queue-size", "--type", "--device"],
        flags: &[],
        build: build_port_add,
    },
    Spec {
        words: &["port", "remove"],
        synopsis: "port remove NAME",
        summary: "remove a port (its guest loses the link)",
        positionals: &["NAME"],
        options: &[],
        flags: &[],
        build: |p| Ok(call("port.remove", json!({ "name": p.pos[0] }))),
    },
    Spec {
        words: &["fdb", "show"],
        synopsis: "fdb show SWITCH",
        summary: "the switch's forwarding database (learned and static MACs)",
        positionals: &["SWITCH"],
        options: &[],
        flags: &[],
        build: |p| Ok(call("fdb.show", json!({ "switch": p.pos[0] }))),
    },
    Spec {
        words: &["fdb", "flush"],
        synopsis: "fdb flush SWITCH [--port P]",
        summary: "forget the learned MACs (only those behind port P with --port)",
        positionals: &["SWITCH"],
        options: &["--port"],
        flags: &[],
        build: |p| {
            let mut args = json!({ "switch": p.pos[0] });
            if let Some(port) = p.opt("--port") {
                args["port"] = json!(port);
            }
            Ok(call("fdb.flush", args))
        },
    },
    Spec {
        words: &["fdb", "add"],
        synopsis: "fdb add SWITCH VLAN MAC PORT",
        summary: "add a static entry: MAC in VLAN is behind PORT",
        positionals: &["SWITCH", "VLAN", "MAC", "PORT"],
        options: &[],
        flags: &[],
        build: |p| {
            let vlan = parse_vlan_id(&p.pos[1])?;
            Ok(call(
                "fdb.add",
                json!({ "switch": p.pos[0], "vlan": vlan, "mac": p.pos[2], "port": p.pos[3] }),
            ))
        },
    },
    Spec {
        words: &["pool", "list"],
        synopsis: "pool list",
        summary: "thin pools: capacity, space use, provisioned size",
        positionals: &[],
        options: &[],
        flags: &[],
        build: |_| Ok(call("pool.list", json!({}))),
    },
    Spec {
        words: &["volume", "list"],
        synopsis: "volume list [--pool P]",
        summary: "volumes (of pool P only with --pool)",
        positionals: &[],
        options: &["--pool"],
        flags: &[],
        build: |p| {
            let mut args = json!({});
            if let Some(pool) = p.opt("--pool") {
                args["pool"] = json!(pool);
            }
            Ok(call("volume.list", args))
        },
    },
    Spec {
        words: &["volume", "create"],
        synopsis: "volume create POOL NAME --size S [--block-size 512|4096]",
        summary: "create a thin volume (no space is used until written)",
        positionals: &["POOL", "NAME"],
        options: &["--size", "--block-size"],
        flags: &[],
        build: |p| {
            let mut args = json!({ "pool": p.pos[0], "name": p.pos[1], "size": p.size()? });
            if let Some(bs) = p.opt("--block-size") {
                args["block_size"] = json!(parse_block_size(bs)?);
            }
            Ok(call("volume.create", args))
        },
    },
    Spec {
        words: &["volume", "resize"],
        synopsis: "volume resize POOL NAME --size S [--force]",
        summary: "change a volume's size; shrinking discards the data beyond\n\
                  the new end and needs --force",
        positionals: &["POOL", "NAME"],
        options: &["--size"],
        flags: &["--force"],
        build: |p| {
            let mut args = json!({ "pool": p.pos[0], "name": p.pos[1], "size": p.size()? });
            if p.flag("--force") {
                args["force"] = json!(true);
            }
            Ok(call("volume.resize", args))
        },
    },
    Spec {
        words: &["volume", "snapshot"],
        synopsis: "volume snapshot POOL SOURCE NAME",
        summary: "read-only snapshot of SOURCE (copies no data)",
        positionals: &["POOL", "SOURCE", "NAME"],
        options: &[],
        flags: &[],
        build: |p| {
            Ok(call(
                "volume.snapshot",
                json!({ "pool": p.pos[0], "source": p.pos[1], "name": p.pos[2] }),
            ))
        },
    },
    Spec {
        words: &["volume", "clone"],
        synopsis: "volume clone POOL SOURCE NAME",
        summary: "writable clone of SOURCE (copies no data)",
        positionals: &["POOL", "SOURCE", "NAME"],
        options: &[],
        flags: &[],
        build: |p| {
            Ok(call(
                "volume.clone",
                json!({ "pool": p.pos[0], "source": p.pos[1], "name": p.pos[2] }),
            ))
        },
    },
    Spec {
        words: &["volume", "rename"],
        synopsis: "volume rename POOL NAME NEW-NAME",
        summary: "rename a volume",
        positionals: &["POOL", "NAME", "NEW-NAME"],
        options: &[],
        flags: &[],
        build: |p| {
            Ok(call(
                "volume.rename",
                json!({ "pool": p.pos[0], "name": p.pos[1], "new_name": p.pos[2] }),
            ))
        },
    },
    Spec {
        words: &["volume", "delete"],
        synopsis: "volume delete POOL NAME",
        summary: "delete a volume and free its space (refused while exported)",
        positionals: &["POOL", "NAME"],
        options: &[],
        flags: &[],
        build: |p| {
            Ok(call(
                "volume.delete",
                json!({ "pool": p.pos[0], "name": p.pos[1] }),
            ))
        },
    },
    Spec {
        words: &["export", "add"],
        synopsis: "export add POOL VOLUME [--socket P] [--queues N] [--queue-size N] [--read-only]",
        summary: "export a volume over vhost-user-blk (default socket <run_dir>/VOLUME.sock)",
        positionals: &["POOL", "VOLUME"],
        options: &["--socket", "--queues", "--queue-size"],
        flags: &["--read-only"],
        build: build_export_add,
    },
    Spec {
        words: &["export", "remove"],
        synopsis: "export remove POOL VOLUME",
        summary: "stop exporting a volume (its guest loses the disk)",
        positionals: &["POOL", "VOLUME"],
        options: &[],
        flags: &[],
        build: |p| {
            Ok(call(
                "export.remove",
                json!({ "pool": p.pos[0], "volume": p.pos[1] }),
            ))
        },
    },
    Spec {
        words: &["config", "save"],
        synopsis: "config save [--path P]",
        summary: "write the running configuration as TOML (to P; by default to the\n\
                  daemon's --config file)",
        positionals: &[],
        options: &["--path"],
        flags: &[],
        build: |p| {
            let mut args = json!({});
            if let Some(path) = p.opt("--path") {
                args["path"] = json!(absolute(path));
            }
            Ok(call("config.save", args))
        },
    },
];

fn call(op: &'static str, args: Value) -> Call {
    Call { op, args }
}

/// A path as the daemon should see it: relative paths are relative to this
/// process's directory, not the daemon's.
fn absolute(path: &str) -> String {
    let p = Path::new(path);
    if p.is_absolute() || path.is_empty() {
        return path.to_owned();
    }
    match std::env::current_dir() {
        Ok(cwd) => match cwd.join(p).to_str() {
            Some(s) => s.to_owned(),
            None => path.to_owned(),
        },
        Err(_) => path.to_owned(),
    }
}

/// A protocol argument struct as an `args` object, without its unset fields.
fn args_object<T: serde::Serialize>(value: &T) -> Result<Value, String> {
    let mut value = serde_json::to_value(value).map_err(|e| e.to_string())?;
    if let Value::Object(map) = &mut value {
        map.retain(|_, v| !v.is_null());
    }
    Ok(value)
}

fn build_port_add(p: &Parsed) -> Result<Call, String> {
    let add = PortAdd {
        switch: p.pos[0].clone(),
        name: p.pos[1].clone(),
        kind: p.opt("--type").unwrap_or("vhost-user").to_owned(),
        socket: p.opt("--socket").map(absolute),
        vlan: p.opt("--vlan").map(parse_vlan_spec).transpose()?,
        queue_size: p.num("--queue-size")?,
        mtu: p.num("--mtu")?,
        mac: p.opt("--mac").map(str::to_owned),
        device: p.opt("--device").map(str::to_owned),
    };
    Ok(call("port.add", args_object(&add)?))
}

fn build_export_add(p: &Parsed) -> Result<Call, String> {
    let add = ExportAdd {
        pool: p.pos[0].clone(),
        volume: p.pos[1].clone(),
        socket: p.opt("--socket").map(absolute),
        queues: p.num("--queues")?,
        queue_size: p.num("--queue-size")?,
        read_only: p.flag("--read-only").then_some(true),
    };
    Ok(call("export.add", args_object(&add)?))
}

// ---- value parsing ----

/// A size in the grammar of `fabric.toml` and `vblock`
/// ([`fabric_config::parse_size`]).
pub fn parse_size(s: &str) -> Result<u64, String> {
    fabric_config::parse_size(s).map_err(|e| format!("bad size {s:?}: {e}"))
}

fn parse_block_size(s: &str) -> Result<u32, String> {
    match parse_size(s) {
        Ok(512) => Ok(512),
        Ok(4096) => Ok(4096),
        _ => Err(format!("--block-size must be 512 or 4096, not {s:?}")),
    }
}

/// A VLAN id, `1..=4094`.
pub fn parse_vlan_id(s: &str) -> Result<u16, String> {
    match s.trim().parse::<u32>() {
        Ok(id @ 1..=4094) => Ok(id as u16),
        Ok(id) => Err(format!("VLAN id {id} is outside 1..=4094")),
        Err(_) => Err(format!("bad VLAN id {s:?}: expected a number in 1..=4094")),
    }
}

const VLAN_SPEC_HELP: &str = "expected access[:TAG] or trunk[:LIST][:native=N], \
                              e.g. access:10 or trunk:10,20,100-199:native=1";

/// `--vlan`: `access[:TAG]` or `trunk[:LIST][:native=N]` (LIST: ids and
/// `first-last` ranges, comma-separated; no list: every VLAN) as the `vlan`
/// value of `fabric.toml`: `{"mode":"access","tag":10}`,
/// `{"mode":"trunk","allowed":[10,"100-199"],"native":1}`.
pub fn parse_vlan_spec(spec: &str) -> Result<Value, String> {
    let bad = |why: String| format!("bad --vlan {spec:?}: {why}");
    let mut parts = spec.split(':');
    let mode = parts.next().unwrap_or_default();
    match mode {
        "access" => {
            let mut vlan = json!({ "mode": "access" });
            if let Some(tag) = parts.next() {
                let tag = tag.strip_prefix("tag=").unwrap_or(tag);
                vlan["tag"] = json!(parse_vlan_id(tag).map_err(bad)?);
            }
            if parts.next().is_some() {
                return Err(bad(VLAN_SPEC_HELP.into()));
            }
            Ok(vlan)
        }
        "trunk" => {
            let mut vlan = json!({ "mode": "trunk" });
            for part in parts {
                if let Some(native) = part.strip_prefix("native=") {
                    if vlan.get("native").is_some() {
                        return Err(bad("native given twice".into()));
                    }
                    vlan["native"] = json!(parse_vlan_id(native).map_err(bad)?);
                } else {
                    if vlan.get("allowed").is_some() {
                        return Err(bad("more than one VLAN list".into()));
                    }
                    vlan["allowed"] = Value::Array(parse_vlan_list(part).map_err(bad)?);
                }
            }
            Ok(vlan)
        }
        _ => Err(bad(VLAN_SPEC_HELP.into())),
    }
}

/// `10,20,100-199` -> `[10, 20, "100-199"]`.
fn parse_vlan_list(list: &str) -> Result<Vec<Value>, String> {
    let list = list.strip_prefix("allowed=").unwrap_or(list);
    let mut out = Vec::new();
    for item in list.split(',') {
        let item = item.trim();
        if item.is_empty() {
            return Err(format!("empty item in the VLAN list {list:?}"));
        }
        match item.split_once('-') {
            Some((first, last)) => {
                let (first, last) = (parse_vlan_id(first)?, parse_vlan_id(last)?);
                if first > last {
                    return Err(format!("VLAN range {item} is backwards"));
                }
                out.push(json!(format!("{first}-{last}")));
            }
            None => out.push(json!(parse_vlan_id(item)?)),
        }
    }
    Ok(out)
}

// ---- the command line ----

/// What one command's arguments parsed into.
#[derive(Default)]
struct Parsed {
    pos: Vec<String>,
    opts: Vec<(&'static str, String)>,
    flags: Vec<&'static str>,
}

impl Parsed {
    fn opt(&self, name: &str) -> Option<&str> {
        self.opts
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    fn flag(&self, name: &str) -> bool {
        self.flags.contains(&name)
    }

    /// An optional whole number option (`--mtu 9000`).
    fn num<T: std::str::FromStr>(&self, name: &str) -> Result<Option<T>, String> {
        match self.opt(name) {
            None => Ok(None),
            Some(v) => v.trim().parse().map(Some).map_err(|_| {
                format!(
                    "{name}: expected a whole number up to {}, not {v:?}",
                    max_of::<T>()
                )
            }),
        }
    }

    /// The required `--size`, in bytes.
    fn size(&self) -> Result<u64, String> {
        parse_size(self.opt("--size").ok_or("--size is required")?)
    }
}

fn max_of<T>() -> u64 {
    match std::mem::size_of::<T>() {
        1 => u8::MAX.into(),
        2 => u16::MAX.into(),
        4 => u32::MAX.into(),
        _ => u64::MAX,
    }
}

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

/// The usage text; with a topic (`volume`, `volume create`), only the
/// matching commands.
pub fn help_text(topic: Option<&str>) -> String {
    let matching: Vec<&Spec> = match topic {
        Some(t) => SPECS
            .iter()
            .filter(|s| s.words.join(" ").starts_with(t) || s.words[0] == t)
            .collect(),
        None => Vec::new(),
    };
    let specs: Vec<&Spec> = if matching.is_empty() {
        SPECS.iter().collect()
    } else {
        matching
    };
    let mut text = String::from(
        "fabricctl: operate a running vswitchd over its control socket\n\n\
         usage: fabricctl [--socket PATH] [--json] [--timeout SECS] COMMAND [ARGS...]\n\n\
         commands:\n",
    );
    for spec in specs {
        let _ = writeln!(text, "  fabricctl {}", spec.synopsis);
        for line in spec.summary.lines() {
            let _ = writeln!(text, "      {}", line.trim_start());
        }
    }
    text.push_str(
        "
options (anywhere on the line):
  --socket PATH     the control socket (default: $FABRIC_CONTROL_SOCKET, else
                    ./run/control.sock). After \"port add\" and \"export add\",
                    --socket is the port's / export's own vhost-user socket: give
                    the control socket before the command, or as --control-socket
  --control-socket PATH
                    the control socket, anywhere
  --json            print the daemon's result as JSON (for scripts)
  --timeout SECS    wait at most SECS for the daemon (default 30; 0: forever)
  -h, --help        this text (\"fabricctl help volume\": the volume commands)
  --version         fabricctl's version

Sizes are bytes, or a whole number with a K, M, G or T suffix (powers of 1024).
VLAN lists are ids and ranges in 1..=4094 (10,20,100-199); \"trunk\" alone carries
every VLAN. Relative paths are relative to the current directory. Use -- before
a name that starts with '-'.

exit status: 0 ok, 2 usage error or bad request, 3 not found, 4 already exists
or conflict, 5 no space, 6 internal error in the daemon (or a malformed answer),
7 the daemon is not reachable.
",
    );
    text
}

// ---- output ----

/// Column alignment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Align {
    Left,
    Right,
}

/// An aligned text table: a header line, then one line per row, columns
/// separated by two spaces, no trailing spaces.
#[derive(Debug, Clone)]
pub struct Table {
    columns: Vec<(&'static str, Align)>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(columns: &[(&'static str, Align)]) -> Table {
        Table {
            columns: columns.to_vec(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; missing cells are empty, extra ones dropped.
    pub fn row(&mut self, mut cells: Vec<String>) {
        cells.resize(self.columns.len(), String::new());
        self.rows.push(cells);
    }

    pub fn render(&self) -> String {
        let width = |s: &str| s.chars().count();
        let mut widths: Vec<usize> = self.columns.iter().map(|(h, _)| width(h)).collect();
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(width(cell));
            }
        }
        let mut out = String::new();
        let headers: Vec<String> = self.columns.iter().map(|(h, _)| h.to_string()).collect();
        for cells in std::iter::once(&headers).chain(&self.rows) {
            let mut line = String::new();
            for (c, cell) in cells.iter().enumerate() {
                if c > 0 {
                    line.push_str("  ");
                }
                let pad = " ".repeat(widths[c] - width(cell));
                match self.columns[c].1 {
                    Align::Left => {
                        line.push_str(cell);
                        line.push_str(&pad);
                    }
                    Align::Right => {
                        line.push_str(&pad);
                        line.push_str(cell);
                    }
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// Bytes for humans: `512 B`, `1.0 KiB`, `1.5 GiB`.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    // 1023.96 would print as "1024.0": go up a unit instead.
    while value >= 1023.95 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// Seconds for humans: `42s`, `5m 06s`, `2h 03m 04s`, `3d 4h 05m`.
pub fn human_duration(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    if d > 0 {
        format!("{d}d {h}h {m:02}m")
    } else if h > 0 {
        format!("{h}h {m:02}m {s:02}s")
    } else if m > 0 {
        format!("{m}m {s:02}s")
    } else {
        format!("{s}s")
    }
}

/// Text from the daemon, with control characters (which would break the
/// table or the terminal) replaced by `?`.
fn clean(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

fn port_table(ports: &[PortInfo]) -> String {
    use Align::*;
    let mut t = Table::new(&[
        ("SWITCH", Left),
        ("PORT", Left),
        ("VLAN", Left),
        ("LINK", Left),
        ("RX PKTS", Right),
        ("RX BYTES", Right),
        ("TX PKTS", Right),
        ("TX BYTES", Right),
        ("BROKEN Q", Right),
        ("SOCKET", Left),
        ("DROPS", Left),
    ]);
    for p in ports {
        let total: u64 = p.drops.values().fold(0, |a, b| a.saturating_add(*b));
        let reasons: Vec<String> = p
            .drops
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(why, n)| format!("{} {n}", clean(why)))
            .collect();
        let drops = if reasons.is_empty() {
            total.to_string()
        } else {
            format!("{total} ({})", reasons.join(", "))
        };
        t.row(vec![
            clean(&p.switch),
            clean(&p.name),
            clean(&p.vlan),
            if p.link { "up" } else { "down" }.into(),
            p.rx_packets.to_string(),
            human_size(p.rx_bytes),
            p.tx_packets.to_string(),
            human_size(p.tx_bytes),
            p.broken_queues.to_string(),
            clean(&p.socket),
            drops,
        ]);
    }
    t.render()
}

fn fdb_table(entries: &mut [FdbEntryInfo]) -> String {
    use Align::*;
    entries.sort_by(|a, b| (a.vlan, &a.mac).cmp(&(b.vlan, &b.mac)));
    let mut t = Table::new(&[
        ("VLAN", Right),
        ("MAC", Left),
        ("PORT", Left),
        ("TYPE", Left),
        ("AGE", Right),
    ]);
    for e in entries.iter() {
        t.row(vec![
            e.vlan.to_string(),
            clean(&e.mac),
            clean(&e.port),
            if e.is_static { "static" } else { "learned" }.into(),
            if e.is_static {
                "-".into()
            } else {
                human_duration(e.age_secs.into())
            },
        ]);
    }
    t.render()
}

fn pool_table(pools: &[PoolInfo]) -> String {
    use Align::*;
    let mut t = Table::new(&[
        ("POOL", Left),
        ("SIZE", Right),
        ("USED", Right),
        ("FREE", Right),
        ("RELEASING", Right),
        ("PROVISIONED", Right),
        ("USE%", Right),
        ("CLUSTER", Right),
        ("PATH", Left),
    ]);
    for p in pools {
        let use_pct = if p.capacity == 0 {
            "-".into()
        } else {
            format!("{:.1}%", p.used as f64 * 100.0 / p.capacity as f64)
        };
        t.row(vec![
            clean(&p.name),
            human_size(p.capacity),
            human_size(p.used),
            human_size(p.free),
            human_size(p.releasing),
            human_size(p.provisioned),
            use_pct,
            human_size(p.cluster_size.into()),
            clean(&p.path),
        ]);
    }
    t.render()
}

fn volume_table(volumes: &[VolumeInfo]) -> String {
    use Align::*;
    let mut t = Table::new(&[
        ("POOL", Left),
        ("VOLUME", Left),
        ("KIND", Left),
        ("SIZE", Right),
        ("BLOCK", Right),
        ("ALLOCATED", Right),
        ("EXCLUSIVE", Right),
        ("MODE", Left),
        ("EXPORT", Left),
    ]);
    for v in volumes {
        t.row(vec![
            clean(&v.pool),
            clean(&v.name),
            clean(&v.kind),
            human_size(v.size),
            v.block_size.to_string(),
            human_size(v.allocated),
            human_size(v.exclusive),
            if v.read_only { "ro" } else { "rw" }.into(),
            v.export.as_deref().map_or("-".into(), clean),
        ]);
    }
    t.render()
}

fn status_text(s: &Status) -> String {
    let mut t = String::new();
    let _ = writeln!(t, "version   {}", clean(&s.version));
    let _ = writeln!(t, "protocol  {}", s.protocol);
    let _ = writeln!(t, "pid       {}", s.pid);
    let _ = writeln!(t, "uptime    {}", human_duration(s.uptime_secs));
    let _ = writeln!(
        t,
        "config    {}",
        s.config.as_deref().map_or("-".into(), clean)
    );
    t
}

#[derive(serde::Deserialize)]
struct Flushed {
    flushed: u64,
}

#[derive(serde::Deserialize)]
struct Saved {
    path: String,
}

/// An `args` string field, for messages.
fn arg(args: &Value, key: &str) -> String {
    match args.get(key) {
        Some(Value::String(s)) => clean(s),
        Some(v) => v.to_string(),
        None => String::new(),
    }
}

/// The human output for `call`'s `result`; an error if the result does not
/// have the documented shape.
pub fn render(call: &Call, result: Value) -> Result<String, String> {
    fn typed<T: DeserializeOwned>(op: &str, v: Value) -> Result<T, String> {
        serde_json::from_value(v).map_err(|e| format!("result of {op}: {e}"))
    }
    let a = &call.args;
    Ok(match call.op {
        "daemon.status" => status_text(&typed(call.op, result)?),
        "port.list" => port_table(&typed::<Vec<PortInfo>>(call.op, result)?),
        "port.add" => port_table(&[typed(call.op, result)?]),
        "port.remove" => format!("removed port {}\n", arg(a, "name")),
        "fdb.show" => fdb_table(&mut typed::<Vec<FdbEntryInfo>>(call.op, result)?),
        "fdb.flush" => {
            let n = typed::<Flushed>(call.op, result)?.flushed;
            let port = match a.get("port") {
                Some(_) => format!(" behind port {}", arg(a, "port")),
                None => String::new(),
            };
            let s = if n == 1 { "entry" } else { "entries" };
            format!("flushed {n} {s}{port} from {}\n", arg(a, "switch"))
        }
        "fdb.add" => format!(
            "added static entry: {} in VLAN {} behind port {} on {}\n",
            arg(a, "mac"),
            arg(a, "vlan"),
            arg(a, "port"),
            arg(a, "switch")
        ),
        "pool.list" => pool_table(&typed::<Vec<PoolInfo>>(call.op, result)?),
        "volume.list" => volume_table(&typed::<Vec<VolumeInfo>>(call.op, result)?),
        "volume.create" | "volume.resize" | "volume.snapshot" | "volume.clone"
        | "volume.rename" | "export.add" => volume_table(&[typed(call.op, result)?]),
        "volume.delete" => format!("deleted volume {}/{}\n", arg(a, "pool"), arg(a, "name")),
        "export.remove" => format!(
            "removed the export of {}/{}\n",
            arg(a, "pool"),
            arg(a, "volume")
        ),
        "config.save" => format!(
            "saved the configuration to {}\n",
            clean(&typed::<Saved>(call.op, result)?.path)
        ),
        // Every op in the table above is handled; print anything else raw.
        _ => json_text(&result),
    })
}

fn json_text(value: &Value) -> String {
    let mut s = serde_json::to_string_pretty(value).unwrap_or_else(|_| "null".into());
    s.push('\n');
    s
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

#[cfg(test)]
mod tests {
    use super::*;

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
    fn human_sizes() {
        assert_eq!(human_size(0), "0 B");
        assert_eq!(human_size(1023), "1023 B");
        assert_eq!(human_size(1024), "1.0 KiB");
        assert_eq!(human_size(1 << 30), "1.0 GiB");
        assert_eq!(human_size(3 << 29), "1.5 GiB");
        assert_eq!(human_size((1 << 20) - 1), "1.0 MiB");
        assert_eq!(human_size(10 << 40), "10.0 TiB");
        assert_eq!(human_size(u64::MAX), "16.0 EiB");
        assert_eq!(human_duration(42), "42s");
        assert_eq!(human_duration(306), "5m 06s");
        assert_eq!(human_duration(7384), "2h 03m 04s");
        assert_eq!(human_duration(3 * 86400 + 4 * 3600 + 5 * 60), "3d 4h 05m");
    }

    #[test]
    fn vlan_specs() {
        assert_eq!(
            parse_vlan_spec("access:10"),
            Ok(json!({"mode":"access","tag":10}))
        );
        assert_eq!(parse_vlan_spec("access"), Ok(json!({"mode":"access"})));
        assert_eq!(parse_vlan_spec("trunk"), Ok(json!({"mode":"trunk"})));
        assert_eq!(
            parse_vlan_spec("trunk:10,20,100-199:native=1"),
            Ok(json!({"mode":"trunk","allowed":[10,20,"100-199"],"native":1}))
        );
        assert_eq!(
            parse_vlan_spec("trunk:native=5:7"),
            Ok(json!({"mode":"trunk","allowed":[7],"native":5}))
        );
        assert_eq!(
            parse_vlan_spec("trunk:native=1"),
            Ok(json!({"mode":"trunk","native":1}))
        );
        for bad in [
            "",
            "access:",
            "access:0",
            "access:4095",
            "access:10:20",
            "access:x",
            "trunk:",
            "trunk:10,,20",
            "trunk:199-100",
            "trunk:1-5000",
            "trunk:10:20",
            "trunk:native=",
            "trunk:native=1:native=2",
            "hybrid:10",
        ] {
            assert!(parse_vlan_spec(bad).is_err(), "{bad:?}");
        }
        let e = parse_vlan_spec("access:4095").unwrap_err();
        assert!(e.contains("4095 is outside 1..=4094"), "{e}");
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
            ("port", "missing subcommand (list, add, remove)"),
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
        ] {
            let e = error_of(line);
            assert!(e.contains(want), "{line}: {e}");
        }
        let e = parse("volume create p").unwrap_err();
        assert_eq!(
            e.synopsis,
            Some("volume create POOL NAME --size S [--block-size 512|4096]")
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

    #[test]
    fn table_alignment() {
        let mut t = Table::new(&[
            ("NAME", Align::Left),
            ("SIZE", Align::Right),
            ("NOTE", Align::Left),
        ]);
        t.row(vec!["a".into(), "1.0 GiB".into(), "x".into()]);
        t.row(vec!["longer-name".into(), "5 B".into(), String::new()]);
        assert_eq!(
            t.render(),
            "NAME            SIZE  NOTE\n\
             a            1.0 GiB  x\n\
             longer-name      5 B\n"
        );
        let t = Table::new(&[("A", Align::Left)]);
        assert_eq!(t.render(), "A\n");
    }

    #[test]
    fn rendering() {
        let vol = json!([{"pool":"p1","name":"disk\n1","kind":"volume","size":1u64<<30,"block_size":512,
                          "read_only":false,"allocated":3u64<<29,"exclusive":0,"export":null}]);
        let text = render(&call("volume.list", json!({})), vol).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].starts_with("POOL  VOLUME  KIND"), "{text}");
        assert!(
            lines[1].contains("disk?1")
                && lines[1].contains("1.0 GiB")
                && lines[1].contains("1.5 GiB")
        );
        assert!(lines[1].ends_with("rw    -"), "{text}");
        // The wrong shape is an error, not a panic.
        assert!(render(&call("volume.list", json!({})), json!({"x":1})).is_err());
        assert!(render(&call("fdb.flush", json!({"switch":"br0"})), Value::Null).is_err());
        assert_eq!(
            render(
                &call("fdb.flush", json!({"switch":"br0","port":"vm1"})),
                json!({"flushed":1})
            )
            .unwrap(),
            "flushed 1 entry behind port vm1 from br0\n"
        );
        let status =
            json!({"version":"0.1.0","protocol":1,"pid":42,"uptime_secs":3661,"config":null});
        let text = render(&call("daemon.status", json!({})), status).unwrap();
        assert!(
            text.contains("uptime    1h 01m 01s\n") && text.contains("config    -\n"),
            "{text}"
        );
    }
}

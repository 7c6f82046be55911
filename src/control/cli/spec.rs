//! The command table: which commands exist, their positional arguments and
//! options, how each becomes a [`Call`], and the help text built from it.

use super::parsed::Parsed;
use super::values::{parse_block_size, parse_size, parse_vlan_id, parse_vlan_spec, parse_vni_map};
use super::Call;
use crate::control::protocol::{
    Admin, ConfigSave, ExportAdd, ExportLimit, ExportRef, ExportRemove, FdbAdd, FdbDel, FdbFlush,
    FdbShow, LogLevel, PoolSet, PortAdd, PortLimit, PortRemove, PortSet, Size, VolumeCopy,
    VolumeCreate, VolumeDelete, VolumeList, VolumeRename, VolumeResize, VolumeRevert,
};
use serde_json::{json, Value};
use std::fmt::Write as _;
use std::path::Path;

/// One command: its words, synopsis, positional arguments and options, and
/// how to turn them into a [`Call`].
pub(super) struct Spec {
    pub(super) words: &'static [&'static str],
    /// After `fabricctl `.
    pub(super) synopsis: &'static str,
    summary: &'static str,
    pub(super) positionals: &'static [&'static str],
    /// Options taking a value.
    pub(super) options: &'static [&'static str],
    /// Options without a value.
    pub(super) flags: &'static [&'static str],
    pub(super) build: fn(&Parsed) -> Result<Call, String>,
}

pub(super) const SPECS: &[Spec] = &[
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
        synopsis: "port add SWITCH NAME [--type vhost-user|tap|vxlan] [--socket P] [--device IFNAME] [--vlan access:TAG | --vlan trunk[:LIST][:native=N]] [--mtu N] [--mac MAC] [--queue-size N] [--queues N] [--multi-queue] [--no-offloads] [--local ADDR --vni VLAN=VNI@PEER[+PEER],... [--udp-port N]] [--may-exist]",
        summary: "add a port to SWITCH: vhost-user (default socket <run_dir>/NAME.sock) or\n\
                  a TAP device (--type tap, --device defaults to NAME); default VLAN\n\
                  access:1; e.g. --vlan trunk:10,20,100-199:native=1; --queues N queue\n\
                  pairs (vhost-user), --multi-queue (TAP), --no-offloads: complete frames only;\n\
                  --may-exist: a port NAME on SWITCH already is a success; a VXLAN\n\
                  tunnel (--type vxlan) binds --local and maps VLANs to VNIs with\n\
                  --vni 10=5010@192.0.2.2+192.0.2.3,20=5020@239.1.1.20 (a multicast\n\
                  peer is the VNI's group)",
        positionals: &["SWITCH", "NAME"],
        options: &[
            "--socket",
            "--vlan",
            "--mtu",
            "--mac",
            "--queue-size",
            "--queues",
            "--type",
            "--device",
            "--local",
            "--udp-port",
            "--vni",
        ],
        flags: &["--multi-queue", "--no-offloads", "--may-exist"],
        build: build_port_add,
    },
    Spec {
        words: &["port", "remove"],
        synopsis: "port remove NAME [--if-exists]",
        summary: "remove a port (its guest loses the link); --if-exists: no such port is a success",
        positionals: &["NAME"],
        options: &[],
        flags: &["--if-exists"],
        build: |p| {
            let remove = PortRemove {
                name: p.pos[0].clone(),
                if_exists: p.flag("--if-exists"),
            };
            send("port.remove", &remove)
        },
    },
    Spec {
        words: &["port", "set"],
        synopsis: "port set NAME [--vlan access:TAG | --vlan trunk[:LIST][:native=N]] [--mtu N] [--mac-limit N] [--admin up|down]",
        summary: "change a running port in place, its guest staying connected: VLAN rule\n\
                  and MTU (kept by config save), MAC limit and admin state (until the\n\
                  daemon stops); admin down drops what the port sends (counted as\n\
                  admin_down) and delivers nothing to it",
        positionals: &["NAME"],
        options: &["--vlan", "--mtu", "--mac-limit", "--admin"],
        flags: &[],
        build: build_port_set,
    },
    Spec {
        words: &["fdb", "show"],
        synopsis: "fdb show SWITCH",
        summary: "the switch's forwarding database (learned and static MACs)",
        positionals: &["SWITCH"],
        options: &[],
        flags: &[],
        build: |p| send("fdb.show", &FdbShow { switch: p.pos[0].clone() }),
    },
    Spec {
        words: &["fdb", "del"],
        synopsis: "fdb del SWITCH VLAN MAC [--if-exists]",
        summary: "remove one entry, static or learned (--if-exists: none is a success)",
        positionals: &["SWITCH", "VLAN", "MAC"],
        options: &[],
        flags: &["--if-exists"],
        build: |p| {
            let del = FdbDel {
                switch: p.pos[0].clone(),
                vlan: parse_vlan_id(&p.pos[1])?,
                mac: p.pos[2].clone(),
                if_exists: p.flag("--if-exists"),
            };
            send("fdb.del", &del)
        },
    },
    Spec {
        words: &["fdb", "flush"],
        synopsis: "fdb flush SWITCH [--port P]",
        summary: "forget the learned MACs (only those behind port P with --port)",
        positionals: &["SWITCH"],
        options: &["--port"],
        flags: &[],
        build: |p| {
            let flush = FdbFlush {
                switch: p.pos[0].clone(),
                port: p.opt("--port").map(str::to_owned),
            };
            send("fdb.flush", &flush)
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
            let add = FdbAdd {
                switch: p.pos[0].clone(),
                vlan: parse_vlan_id(&p.pos[1])?,
                mac: p.pos[2].clone(),
                port: p.pos[3].clone(),
            };
            send("fdb.add", &add)
        },
    },
    Spec {
        words: &["log", "level"],
        synopsis: "log level LEVEL",
        summary: "the daemon's log filter, at once: error, warn, info, debug, trace, or\n\
                  RUST_LOG directives such as info,vblock=debug",
        positionals: &["LEVEL"],
        options: &[],
        flags: &[],
        build: |p| send("log.level", &LogLevel { level: p.pos[0].clone() }),
    },
    Spec {
        words: &["pool", "list"],
        synopsis: "pool list",
        summary: "thin pools: capacity, space use, provisioned size, full policy,\n\
                  warning threshold, requests waiting for space",
        positionals: &[],
        options: &[],
        flags: &[],
        build: |_| Ok(call("pool.list", json!({}))),
    },
    Spec {
        words: &["pool", "set"],
        synopsis: "pool set POOL [--on-full error|pause] [--warn-percent N]",
        summary: "what a write that needs space gets when the pool is full (error: an\n\
                  I/O error; pause: it waits until space is freed), and the used\n\
                  percentage (1..=100) logged as a warning; kept by config save",
        positionals: &["POOL"],
        options: &["--on-full", "--warn-percent"],
        flags: &[],
        build: |p| {
            let set = PoolSet {
                pool: p.pos[0].clone(),
                on_full: p.opt("--on-full").map(str::to_owned),
                warn_percent: p.num("--warn-percent")?,
            };
            if set.on_full.is_none() && set.warn_percent.is_none() {
                return Err("nothing to change: give --on-full or --warn-percent".into());
            }
            send("pool.set", &set)
        },
    },
    Spec {
        words: &["volume", "list"],
        synopsis: "volume list [--pool P]",
        summary: "volumes (of pool P only with --pool)",
        positionals: &[],
        options: &["--pool"],
        flags: &[],
        build: |p| {
            let pool = p.opt("--pool").map(str::to_owned);
            send("volume.list", &VolumeList { pool })
        },
    },
    Spec {
        words: &["volume", "create"],
        synopsis: "volume create POOL NAME --size S [--block-size 512|4096] [--may-exist]",
        summary: "create a thin volume (no space is used until written); --may-exist: a\n\
                  volume NAME already is a success (its size is left as it is)",
        positionals: &["POOL", "NAME"],
        options: &["--size", "--block-size"],
        flags: &["--may-exist"],
        build: |p| {
            let create = VolumeCreate {
                pool: p.pos[0].clone(),
                name: p.pos[1].clone(),
                size: Size::Bytes(p.size()?),
                block_size: p.opt("--block-size").map(parse_block_size).transpose()?,
                may_exist: p.flag("--may-exist"),
            };
            send("volume.create", &create)
        },
    },
    Spec {
        words: &["volume", "resize"],
        synopsis: "volume resize POOL NAME --size S [--force]",
        summary: "change a volume's size; shrinking discards the data beyond\n\
                  the new end and needs --force; an exported volume only grows\n\
                  (its guest sees the new size at once)",
        positionals: &["POOL", "NAME"],
        options: &["--size"],
        flags: &["--force"],
        build: |p| {
            let resize = VolumeResize {
                pool: p.pos[0].clone(),
                name: p.pos[1].clone(),
                size: Size::Bytes(p.size()?),
                force: p.flag("--force"),
            };
            send("volume.resize", &resize)
        },
    },
    Spec {
        words: &["volume", "snapshot"],
        synopsis: "volume snapshot POOL SOURCE NAME [--may-exist]",
        summary: "read-only snapshot of SOURCE (copies no data)",
        positionals: &["POOL", "SOURCE", "NAME"],
        options: &[],
        flags: &["--may-exist"],
        build: |p| send("volume.snapshot", &volume_copy(p)),
    },
    Spec {
        words: &["volume", "clone"],
        synopsis: "volume clone POOL SOURCE NAME [--may-exist]",
        summary: "writable clone of SOURCE (copies no data)",
        positionals: &["POOL", "SOURCE", "NAME"],
        options: &[],
        flags: &["--may-exist"],
        build: |p| send("volume.clone", &volume_copy(p)),
    },
    Spec {
        words: &["volume", "rename"],
        synopsis: "volume rename POOL NAME NEW-NAME",
        summary: "rename a volume",
        positionals: &["POOL", "NAME", "NEW-NAME"],
        options: &[],
        flags: &[],
        build: |p| {
            let rename = VolumeRename {
                pool: p.pos[0].clone(),
                name: p.pos[1].clone(),
                new_name: p.pos[2].clone(),
            };
            send("volume.rename", &rename)
        },
    },
    Spec {
        words: &["volume", "revert"],
        synopsis: "volume revert POOL VOLUME SNAPSHOT",
        summary: "make VOLUME the content of SNAPSHOT, one of its own snapshots, at once\n\
                  (copies no data; what only the old content used is freed). Refused\n\
                  while VOLUME is exported unless its export is paused (export pause);\n\
                  a guest's page cache may still hold the old content: revert with the\n\
                  guest stopped, or have it drop its caches",
        positionals: &["POOL", "VOLUME", "SNAPSHOT"],
        options: &[],
        flags: &[],
        build: |p| {
            let revert = VolumeRevert {
                pool: p.pos[0].clone(),
                name: p.pos[1].clone(),
                snapshot: p.pos[2].clone(),
            };
            send("volume.revert", &revert)
        },
    },
    Spec {
        words: &["volume", "delete"],
        synopsis: "volume delete POOL NAME [--if-exists]",
        summary: "delete a volume and free its space (refused while exported)",
        positionals: &["POOL", "NAME"],
        options: &[],
        flags: &["--if-exists"],
        build: |p| {
            let delete = VolumeDelete {
                pool: p.pos[0].clone(),
                name: p.pos[1].clone(),
                if_exists: p.flag("--if-exists"),
            };
            send("volume.delete", &delete)
        },
    },
    Spec {
        words: &["export", "add"],
        synopsis: "export add POOL VOLUME [--socket P] [--migration-socket P] [--queues N] [--queue-size N] [--read-only] [--may-exist]",
        summary: "export a volume over vhost-user-blk (default socket <run_dir>/VOLUME.sock; \
                  --migration-socket: a second socket for a live migration's destination)",
        positionals: &["POOL", "VOLUME"],
        options: &["--socket", "--migration-socket", "--queues", "--queue-size"],
        flags: &["--read-only", "--may-exist"],
        build: build_export_add,
    },
    Spec {
        words: &["export", "remove"],
        synopsis: "export remove POOL VOLUME [--if-exists]",
        summary: "stop exporting a volume (its guest loses the disk)",
        positionals: &["POOL", "VOLUME"],
        options: &[],
        flags: &["--if-exists"],
        build: |p| {
            let remove = ExportRemove {
                pool: p.pos[0].clone(),
                volume: p.pos[1].clone(),
                if_exists: p.flag("--if-exists"),
            };
            send("export.remove", &remove)
        },
    },
    Spec {
        words: &["export", "limit"],
        synopsis: "export limit POOL VOLUME [--iops-read N] [--iops-write N] [--bytes-per-sec-read S] [--bytes-per-sec-write S] [--iops-read-burst N] [--iops-write-burst N] [--bytes-per-sec-read-burst S] [--bytes-per-sec-write-burst S]",
        summary: "set the export's I/O limits at once (requests and bytes a second, reads\n\
                  and writes apart, each with a burst: default a tenth of the rate);\n\
                  a limit not given is removed, none at all: unlimited. A request over\n\
                  a limit waits, it never fails",
        positionals: &["POOL", "VOLUME"],
        options: &[
            "--iops-read",
            "--iops-read-burst",
            "--iops-write",
            "--iops-write-burst",
            "--bytes-per-sec-read",
            "--bytes-per-sec-read-burst",
            "--bytes-per-sec-write",
            "--bytes-per-sec-write-burst",
        ],
        flags: &[],
        build: build_export_limit,
    },
    Spec {
        words: &["export", "pause"],
        synopsis: "export pause POOL VOLUME",
        summary: "stop taking the guest's requests (it sees slow I/O, no error); returns\n\
                  once every request taken before has completed",
        positionals: &["POOL", "VOLUME"],
        options: &[],
        flags: &[],
        build: |p| send("export.pause", &export_ref(p)),
    },
    Spec {
        words: &["export", "resume"],
        synopsis: "export resume POOL VOLUME",
        summary: "take the guest's requests again (those waiting run first)",
        positionals: &["POOL", "VOLUME"],
        options: &[],
        flags: &[],
        build: |p| send("export.resume", &export_ref(p)),
    },
    Spec {
        words: &["port", "limit"],
        synopsis: "port limit NAME [--rate KBPS [--burst KBIT]]",
        summary: "police the port's ingress at KBPS kbit/s with a burst of KBIT kbit\n\
                  (default 8000), as OVS's ingress_policing_rate/burst: frames beyond\n\
                  are dropped and counted `policed`; without --rate: no policing",
        positionals: &["NAME"],
        options: &["--rate", "--burst"],
        flags: &[],
        build: |p| {
            let limit = PortLimit {
                name: p.pos[0].clone(),
                rate: p.num("--rate")?,
                burst: p.num("--burst")?,
            };
            send("port.limit", &limit)
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
            let path = p.opt("--path").map(absolute);
            send("config.save", &ConfigSave { path })
        },
    },
];

pub(super) fn call(op: &'static str, args: Value) -> Call {
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

/// A call of `op` with `args` (a protocol argument struct).
fn send<T: serde::Serialize>(op: &'static str, args: &T) -> Result<Call, String> {
    Ok(call(op, args_object(args)?))
}

fn volume_copy(p: &Parsed) -> VolumeCopy {
    VolumeCopy {
        pool: p.pos[0].clone(),
        source: p.pos[1].clone(),
        name: p.pos[2].clone(),
        may_exist: p.flag("--may-exist"),
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
        queues: p.num("--queues")?,
        multi_queue: p.flag("--multi-queue").then_some(true),
        offloads: p.flag("--no-offloads").then_some(false),
        local: p.opt("--local").map(str::to_owned),
        udp_port: p.num("--udp-port")?,
        vni: p.opt("--vni").map(parse_vni_map).transpose()?,
        may_exist: p.flag("--may-exist"),
    };
    send("port.add", &add)
}

fn build_port_set(p: &Parsed) -> Result<Call, String> {
    let admin = match p.opt("--admin") {
        None => None,
        Some("up") => Some(Admin::Up),
        Some("down") => Some(Admin::Down),
        Some(other) => return Err(format!("--admin must be up or down, not {other:?}")),
    };
    let set = PortSet {
        name: p.pos[0].clone(),
        vlan: p.opt("--vlan").map(parse_vlan_spec).transpose()?,
        mtu: p.num("--mtu")?,
        mac_limit: p.num("--mac-limit")?,
        admin,
    };
    if set.vlan.is_none() && set.mtu.is_none() && set.mac_limit.is_none() && admin.is_none() {
        return Err("nothing to change: give --vlan, --mtu, --mac-limit or --admin".into());
    }
    send("port.set", &set)
}

fn build_export_add(p: &Parsed) -> Result<Call, String> {
    let add = ExportAdd {
        pool: p.pos[0].clone(),
        volume: p.pos[1].clone(),
        socket: p.opt("--socket").map(absolute),
        migration_socket: p.opt("--migration-socket").map(absolute),
        queues: p.num("--queues")?,
        queue_size: p.num("--queue-size")?,
        read_only: p.flag("--read-only").then_some(true),
        may_exist: p.flag("--may-exist"),
    };
    send("export.add", &add)
}

fn export_ref(p: &Parsed) -> ExportRef {
    ExportRef {
        pool: p.pos[0].clone(),
        volume: p.pos[1].clone(),
    }
}

fn build_export_limit(p: &Parsed) -> Result<Call, String> {
    let bytes = |name: &str| {
        p.opt(name)
            .map(parse_size)
            .transpose()
            .map(|b| b.map(Size::Bytes))
    };
    let limit = ExportLimit {
        pool: p.pos[0].clone(),
        volume: p.pos[1].clone(),
        iops_read: p.num("--iops-read")?,
        iops_read_burst: p.num("--iops-read-burst")?,
        iops_write: p.num("--iops-write")?,
        iops_write_burst: p.num("--iops-write-burst")?,
        bytes_per_sec_read: bytes("--bytes-per-sec-read")?,
        bytes_per_sec_read_burst: bytes("--bytes-per-sec-read-burst")?,
        bytes_per_sec_write: bytes("--bytes-per-sec-write")?,
        bytes_per_sec_write_burst: bytes("--bytes-per-sec-write-burst")?,
    };
    send("export.limit", &limit)
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

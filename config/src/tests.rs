use super::*;

/// A `VlanId` from a literal.
fn vid(n: u16) -> VlanId {
    VlanId::new(n).unwrap()
}

fn vids(v: &[u16]) -> Vec<VlanId> {
    v.iter().map(|&n| vid(n)).collect()
}

/// A switch with one port; `extra` lines are appended to the port table and
/// so start at line 6.
fn one_port(extra: &str) -> String {
    format!("[[switch]]\nname = \"br0\"\n[[switch.port]]\nname = \"vm1\"\ntype = \"vhost-user\"\n{extra}\n")
}

fn parse_ok(text: &str) -> FabricConfig {
    parse(text, Path::new("fabric.toml")).unwrap_or_else(|e| panic!("{e}"))
}

fn parse_err(text: &str) -> String {
    match parse(text, Path::new("fabric.toml")) {
        Ok(cfg) => panic!("expected an error, got {cfg:?}"),
        Err(e) => e.to_string(),
    }
}

fn only_port(cfg: &FabricConfig) -> &PortConfig {
    &cfg.switches[0].ports[0]
}

#[test]
fn empty_file_is_valid() {
    let cfg = parse_ok("");
    assert_eq!(cfg.daemon.run_dir, PathBuf::from("run"));
    assert!(cfg.switches.is_empty());
}

#[test]
fn defaults_applied() {
    let cfg = parse_ok(&one_port(""));
    let sw = &cfg.switches[0];
    assert_eq!(sw.name, "br0");
    assert_eq!(sw.mac_aging_secs, 300);
    assert_eq!(sw.fdb_capacity, 65536);
    assert_eq!(sw.port_mac_limit, 1024);
    assert_eq!(
        sw.ports[0],
        PortConfig {
            name: "vm1".into(),
            kind: PortKind::VhostUser {
                socket: PathBuf::from("run/vm1.sock"),
                queue_size: 1024,
                queues: 1,
                mac: None,
                offloads: true,
            },
            vlan: VlanConfig::Access { tag: vid(1) },
            mtu: 1500,
            policing: None,
        }
    );
}

#[test]
fn explicit_values_kept() {
    let cfg = parse_ok(&one_port(
        "queue_size = 256\nmtu = 9000\nmac = \"52:54:00:ab:CD:ef\"\nvlan = { mode = \"access\" }\noffloads = false",
    ));
    let port = only_port(&cfg);
    assert_eq!(port.mtu, 9000);
    assert_eq!(port.vlan, VlanConfig::Access { tag: vid(1) });
    let PortKind::VhostUser {
        queue_size,
        mac,
        offloads,
        ..
    } = &port.kind
    else {
        panic!("not vhost-user: {:?}", port.kind)
    };
    assert!(!offloads);
    assert_eq!(*queue_size, 256);
    assert_eq!(*mac, Some(MacAddr([0x52, 0x54, 0x00, 0xab, 0xcd, 0xef])));
}

/// `queues`: queue pairs of a vhost-user port, 1 by default, bounded by
/// `MAX_QUEUE_PAIRS`; an error names the key.
#[test]
fn queue_pairs_default_range_and_round_trip() {
    let pairs = |extra: &str| match &only_port(&parse_ok(&one_port(extra))).kind {
        PortKind::VhostUser { queues, .. } => *queues,
        other => panic!("not vhost-user: {other:?}"),
    };
    assert_eq!(pairs(""), 1);
    assert_eq!(pairs("queues = 4"), 4);
    assert_eq!(
        pairs(&format!("queues = {MAX_QUEUE_PAIRS}")),
        MAX_QUEUE_PAIRS
    );
    for bad in ["queues = 0", "queues = 9", "queues = -1"] {
        let e = parse_err(&one_port(bad));
        assert!(
            e.contains("switch[0].port[0].queues: queue pairs") && e.contains("outside 1..=8"),
            "{bad}: {e}"
        );
    }
    let text = to_toml(&parse_ok(&one_port("queues = 3")));
    let round = parse_ok(&text);
    assert!(matches!(
        round.switches[0].ports[0].kind,
        PortKind::VhostUser { queues: 3, .. }
    ));
}

#[test]
fn port_mac_limit_default_follows_small_fdb() {
    let cfg = parse_ok("[[switch]]\nname = \"s\"\nfdb_capacity = 100\n");
    assert_eq!(cfg.switches[0].port_mac_limit, 100);
}

#[test]
fn example_parses() {
    let cfg = parse_ok(EXAMPLE);
    assert_eq!(cfg.switches.len(), 1);
    let ports = &cfg.switches[0].ports;
    let names: Vec<_> = ports.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["vm1", "vm2", "vm3", "trunk1"]);
    assert_eq!(ports[0].vlan, VlanConfig::Access { tag: vid(10) });
    assert_eq!(ports[1].vlan, VlanConfig::Access { tag: vid(10) });
    assert_eq!(ports[2].vlan, VlanConfig::Access { tag: vid(20) });
    let VlanConfig::Trunk { allowed, native } = &ports[3].vlan else {
        panic!("trunk1 is not a trunk: {:?}", ports[3].vlan);
    };
    assert_eq!(*native, Some(vid(1)));
    assert_eq!(format!("{allowed:?}"), "VlanSet{1, 10, 20, 100-199}");
    let PortKind::VhostUser { socket, .. } = &ports[3].kind else {
        panic!("not vhost-user")
    };
    assert_eq!(socket, Path::new("run/trunk1.sock"));
    let pool = &cfg.pools[0];
    assert_eq!((pool.name.as_str(), pool.size), ("pool0", Some(2 << 30)));
    assert_eq!(pool.path, Path::new("data/pool0.img"));
    let vol = &pool.volumes[0];
    assert_eq!(
        vol.source,
        VolumeSource::New {
            size: 1 << 30,
            block_size: 512
        }
    );
    assert_eq!(
        vol.export.as_ref().unwrap().socket,
        Path::new("run/vm1-disk.sock")
    );
}

#[test]
fn trunk_allowed_defaults_to_all() {
    let cfg = parse_ok(&one_port("vlan = { mode = \"trunk\" }"));
    let VlanConfig::Trunk { allowed, native } = &only_port(&cfg).vlan else {
        panic!("not a trunk");
    };
    assert_eq!(*allowed, VlanSet::all());
    assert!(allowed.contains(vid(1)) && allowed.contains(vid(4094)));
    assert_eq!(*native, None);
}

#[test]
fn trunk_ranges_parse_and_native_is_implicitly_allowed() {
    let cfg = parse_ok(&one_port(
        "vlan = { mode = \"trunk\", allowed = [5, \"100-102\", \" 7 - 7 \", 5], native = 300 }",
    ));
    let VlanConfig::Trunk { allowed, native } = &only_port(&cfg).vlan else {
        panic!("not a trunk");
    };
    assert_eq!(
        allowed.iter().collect::<Vec<_>>(),
        vids(&[5, 7, 100, 101, 102, 300])
    );
    assert_eq!(*native, Some(vid(300)));
}

#[test]
fn trunk_with_only_native_is_valid() {
    let cfg = parse_ok(&one_port(
        "vlan = { mode = \"trunk\", allowed = [], native = 7 }",
    ));
    let VlanConfig::Trunk { allowed, .. } = &only_port(&cfg).vlan else {
        panic!("not a trunk");
    };
    assert_eq!(allowed.iter().collect::<Vec<_>>(), vids(&[7]));
}

#[test]
fn relative_paths_resolve_against_config_dir() {
    let text = "[daemon]\nrun_dir = \"../state\"\n[[switch]]\nname = \"br0\"\n\
                [[switch.port]]\nname = \"a\"\ntype = \"vhost-user\"\n\
                [[switch.port]]\nname = \"b\"\ntype = \"vhost-user\"\nsocket = \"./socks/b.sock\"\n\
                [[switch.port]]\nname = \"c\"\ntype = \"vhost-user\"\nsocket = \"/tmp/c.sock\"\n";
    let cfg = parse(text, Path::new("/etc/fabric/fabric.toml")).unwrap();
    assert_eq!(cfg.daemon.run_dir, Path::new("/etc/state"));
    let sockets: Vec<_> = cfg.switches[0]
        .ports
        .iter()
        .map(|p| match &p.kind {
            PortKind::VhostUser { socket, .. } => socket.clone(),
            PortKind::Tap { device, .. } => PathBuf::from(device),
            PortKind::Vxlan(v) => PathBuf::from(v.local.to_string()),
        })
        .collect();
    assert_eq!(
        sockets,
        [
            PathBuf::from("/etc/state/a.sock"),
            PathBuf::from("/etc/fabric/socks/b.sock"),
            PathBuf::from("/tmp/c.sock"),
        ]
    );
}

#[test]
fn load_makes_paths_absolute_and_names_missing_file() {
    let dir = std::env::temp_dir().join(format!("fabric-config-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("fabric.toml");
    std::fs::write(&file, EXAMPLE).unwrap();
    let cfg = load(&file).unwrap();
    assert_eq!(cfg.daemon.run_dir, dir.join("run"));
    std::fs::remove_dir_all(&dir).unwrap();

    let missing = dir.join("nope.toml");
    let err = load(&missing).unwrap_err();
    assert!(matches!(err, ConfigError::Read { .. }));
    assert!(
        err.to_string()
            .starts_with(&format!("cannot read {}: ", missing.display())),
        "{err}"
    );
}

#[test]
fn errors_expose_line_and_key() {
    let err = parse(&one_port("mtu = 1"), Path::new("fabric.toml")).unwrap_err();
    assert_eq!(err.line(), Some(6));
    assert_eq!(err.key(), Some("switch[0].port[0].mtu"));
}

/// Each case: lines appended to the single port (starting at line 6) and the
/// exact message.
#[test]
fn port_rejections() {
    let cases = [
        // unknown keys, at every level of the port
        (
            "agin = 1",
            "fabric.toml:6: switch[0].port[0].agin: unknown field `agin`, expected one of \
             `name`, `type`, `socket`, `vlan`, `queue_size`, `queues`, `multi_queue`, `offloads`, `mtu`, `mac`, `device`, `local`, \
             `udp_port`, `underlay_mtu`, `learn_vteps`, `senders`, `local_hold_secs`, \
             `vtep_mac_limit`, `remote_fdb_capacity`, `remote_mac_aging_secs`, `vni`, `rate`, `burst`",
        ),
        (
            "vlan = { mode = \"access\", tga = 3 }",
            "fabric.toml:6: switch[0].port[0].vlan.tga: unknown field `tga`, expected one of \
             `mode`, `tag`, `allowed`, `native`",
        ),
        // wrong types
        (
            "mtu = \"big\"",
            "fabric.toml:6: switch[0].port[0].mtu: invalid type: string \"big\", expected an integer",
        ),
        (
            "vlan = { mode = \"trunk\", allowed = [1, 2.5] }",
            "fabric.toml:6: switch[0].port[0].vlan.allowed[1]: invalid type: floating point `2.5`, \
             expected a VLAN id or a range string like \"100-199\"",
        ),
        // VLAN ids
        (
            "vlan = { mode = \"access\", tag = 4095 }",
            "fabric.toml:6: switch[0].port[0].vlan.tag: VLAN id 4095 is outside 1..=4094",
        ),
        (
            "vlan = { mode = \"access\", tag = 0 }",
            "fabric.toml:6: switch[0].port[0].vlan.tag: VLAN id 0 is outside 1..=4094",
        ),
        (
            "vlan = { mode = \"trunk\", allowed = [10, 4095] }",
            "fabric.toml:6: switch[0].port[0].vlan.allowed[1]: VLAN id 4095 is outside 1..=4094",
        ),
        (
            "vlan = { mode = \"trunk\", allowed = [\"0-10\"] }",
            "fabric.toml:6: switch[0].port[0].vlan.allowed[0]: VLAN id 0 is outside 1..=4094",
        ),
        (
            "vlan = { mode = \"trunk\", allowed = [\"4000-4095\"] }",
            "fabric.toml:6: switch[0].port[0].vlan.allowed[0]: VLAN id 4095 is outside 1..=4094",
        ),
        (
            "vlan = { mode = \"trunk\", native = 5000 }",
            "fabric.toml:6: switch[0].port[0].vlan.native: VLAN id 5000 is outside 1..=4094",
        ),
        (
            "vlan = { mode = \"trunk\", allowed = [\"200-100\"] }",
            "fabric.toml:6: switch[0].port[0].vlan.allowed[0]: VLAN range \"200-100\" is reversed \
             (200 > 100)",
        ),
        (
            "vlan = { mode = \"trunk\", allowed = [\"100..200\"] }",
            "fabric.toml:6: switch[0].port[0].vlan.allowed[0]: invalid VLAN range \"100..200\" \
             (expected \"first-last\", e.g. \"100-199\")",
        ),
        (
            "vlan = { mode = \"trunk\", allowed = [] }",
            "fabric.toml:6: switch[0].port[0].vlan.allowed: trunk carries no VLAN: list at least \
             one or set `native`",
        ),
        // VLAN mode consistency
        (
            "vlan = { mode = \"access\", allowed = [10] }",
            "fabric.toml:6: switch[0].port[0].vlan.allowed: `allowed` is not valid with \
             mode = \"access\"",
        ),
        (
            "vlan = { mode = \"access\", native = 1 }",
            "fabric.toml:6: switch[0].port[0].vlan.native: `native` is not valid with \
             mode = \"access\"",
        ),
        (
            "vlan = { mode = \"trunk\", tag = 10 }",
            "fabric.toml:6: switch[0].port[0].vlan.tag: `tag` is not valid with mode = \"trunk\"",
        ),
        (
            "vlan = { mode = \"hybrid\" }",
            "fabric.toml:6: switch[0].port[0].vlan.mode: unknown VLAN mode \"hybrid\" \
             (expected \"access\" or \"trunk\")",
        ),
        (
            "vlan = { tag = 10 }",
            "fabric.toml:6: switch[0].port[0].vlan: missing field `mode`",
        ),
        // numeric ranges
        (
            "queue_size = 1000",
            "fabric.toml:6: switch[0].port[0].queue_size: queue size 1000 is not a power of two",
        ),
        (
            "queue_size = 32",
            "fabric.toml:6: switch[0].port[0].queue_size: queue size 32 is outside 64..=32768",
        ),
        (
            "queue_size = 65536",
            "fabric.toml:6: switch[0].port[0].queue_size: queue size 65536 is outside 64..=32768",
        ),
        (
            "mtu = 67",
            "fabric.toml:6: switch[0].port[0].mtu: MTU 67 is outside 68..=65535",
        ),
        (
            "mtu = 65536",
            "fabric.toml:6: switch[0].port[0].mtu: MTU 65536 is outside 68..=65535",
        ),
        // MAC
        (
            "mac = \"01:00:5e:00:00:01\"",
            "fabric.toml:6: switch[0].port[0].mac: MAC address 01:00:5e:00:00:01 is multicast; \
             a NIC needs a unicast address",
        ),
        (
            "mac = \"00:00:00:00:00:00\"",
            "fabric.toml:6: switch[0].port[0].mac: MAC address must not be all-zero",
        ),
        (
            "mac = \"52:54:00:12:34\"",
            "fabric.toml:6: switch[0].port[0].mac: invalid MAC address \"52:54:00:12:34\" \
             (expected six hex bytes like \"52:54:00:12:34:56\")",
        ),
        // a sign is not a hex digit (u8::from_str_radix alone takes "+5")
        (
            "mac = \"52:54:00:12:34:+5\"",
            "fabric.toml:6: switch[0].port[0].mac: invalid MAC address \"52:54:00:12:34:+5\" \
             (expected six hex bytes like \"52:54:00:12:34:56\")",
        ),
        // socket
        (
            "socket = \"\"",
            "fabric.toml:6: switch[0].port[0].socket: must not be empty",
        ),
    ];
    for (extra, expected) in cases {
        assert_eq!(parse_err(&one_port(extra)), expected, "for {extra:?}");
    }
}

#[test]
fn unsupported_port_type_names_the_supported_ones() {
    let text = "[[switch]]\nname = \"br0\"\n[[switch.port]]\nname = \"t\"\ntype = \"gre\"\n";
    assert_eq!(
        parse_err(text),
        "fabric.toml:5: switch[0].port[0].type: unsupported port type \"gre\": \
         \"vhost-user\", \"tap\" or \"vxlan\""
    );
}

#[test]
fn missing_required_keys() {
    let text = "[[switch]]\nname = \"br0\"\n[[switch.port]]\ntype = \"vhost-user\"\n";
    assert_eq!(
        parse_err(text),
        "fabric.toml:3: switch[0].port[0]: missing field `name`"
    );
    let text = "[[switch]]\nname = \"br0\"\n[[switch.port]]\nname = \"a\"\n";
    assert_eq!(
        parse_err(text),
        "fabric.toml:3: switch[0].port[0]: missing field `type`"
    );
}

#[test]
fn invalid_names() {
    let long = "x".repeat(33);
    for bad in ["", "a b", "vm/1", "..", long.as_str()] {
        let text = format!("[[switch]]\nname = \"br0\"\n[[switch.port]]\nname = \"{bad}\"\ntype = \"vhost-user\"\n");
        assert_eq!(
            parse_err(&text),
            format!(
                "fabric.toml:4: switch[0].port[0].name: invalid name {bad:?} \
                 (expected 1 to 32 of A-Z a-z 0-9 _ . - @)"
            )
        );
    }
    assert_eq!(
        parse_err("[[switch]]\nname = \"br 0\"\n"),
        "fabric.toml:2: switch[0].name: invalid name \"br 0\" (expected 1 to 32 of A-Z a-z 0-9 _ . - @)"
    );
}

#[test]
fn unknown_keys_at_top_levels() {
    assert_eq!(
        parse_err("[[switch]]\nname = \"br0\"\nagin_secs = 3\n"),
        "fabric.toml:3: switch[0].agin_secs: unknown field `agin_secs`, expected one of `name`, \
         `mac_aging_secs`, `fdb_capacity`, `port_mac_limit`, `port`"
    );
    assert_eq!(
        parse_err("[daemon]\nrundir = \"x\"\n"),
        "fabric.toml:2: daemon.rundir: unknown field `rundir`, expected one of `run_dir`, `datapath_threads`, `control_socket`, `metrics_listen`, `socket_mode`, `socket_owner`, `socket_group`, `handshake_timeout_ms`, `live_migration`"
    );
    assert_eq!(
        parse_err("\n[storage]\nx = 1\n"),
        "fabric.toml:2: storage: unknown field `storage`, expected one of `daemon`, `switch`, `pool`, `nbd`"
    );
}

#[test]
fn toml_syntax_error_has_line() {
    let err = parse_err("[[switch]]\nname = br0\n");
    assert!(err.starts_with("fabric.toml:2: "), "{err}");
}

#[test]
fn switch_rejections() {
    let cases = [
        (
            "mac_aging_secs = 0",
            "fabric.toml:3: switch[0].mac_aging_secs: aging time 0 is outside 10..=1000000",
        ),
        (
            "fdb_capacity = 0",
            "fabric.toml:3: switch[0].fdb_capacity: FDB capacity 0 is outside 1..=16777216",
        ),
        (
            "fdb_capacity = 16777217",
            "fabric.toml:3: switch[0].fdb_capacity: FDB capacity 16777217 is outside 1..=16777216",
        ),
        (
            "fdb_capacity = 100\nport_mac_limit = 101",
            "fabric.toml:4: switch[0].port_mac_limit: port MAC limit 101 is outside 1..=100",
        ),
        (
            "port_mac_limit = 0",
            "fabric.toml:3: switch[0].port_mac_limit: port MAC limit 0 is outside 1..=65536",
        ),
    ];
    for (extra, expected) in cases {
        let text = format!("[[switch]]\nname = \"br0\"\n{extra}\n");
        assert_eq!(parse_err(&text), expected, "for {extra:?}");
    }
}

#[test]
fn duplicate_switch_names() {
    let text = "[[switch]]\nname = \"br0\"\n\n[[switch]]\nname = \"br0\"\n";
    assert_eq!(
        parse_err(text),
        "fabric.toml:5: switch[1].name: duplicate switch name \"br0\" (first defined at line 2)"
    );
}

#[test]
fn duplicate_port_names_across_switches() {
    let text = "[[switch]]\nname = \"br0\"\n[[switch.port]]\nname = \"vm1\"\ntype = \"vhost-user\"\n\
                [[switch]]\nname = \"br1\"\n[[switch.port]]\nname = \"vm1\"\ntype = \"vhost-user\"\n";
    assert_eq!(
        parse_err(text),
        "fabric.toml:9: switch[1].port[0].name: duplicate port name \"vm1\" (first defined at line 4)"
    );
}

#[test]
fn duplicate_sockets_compared_after_resolving() {
    // vm2's explicit socket is another spelling of vm1's default one.
    let text = one_port(
        "[[switch.port]]\nname = \"vm2\"\ntype = \"vhost-user\"\nsocket = \"./run/../run/vm1.sock\"",
    );
    assert_eq!(
        parse_err(&text),
        "fabric.toml:9: switch[0].port[1].socket: duplicate socket path run/vm1.sock \
         (first used at line 4)"
    );
}

#[test]
fn overlong_socket_path_rejected() {
    let long = format!("/{}.sock", "s".repeat(110));
    let err = parse_err(&one_port(&format!("socket = \"{long}\"")));
    assert!(
        err.starts_with("fabric.toml:6: switch[0].port[0].socket: socket path /sss"),
        "{err}"
    );
    assert!(
        err.ends_with("is 116 bytes; Unix sockets allow at most 107"),
        "{err}"
    );
}

#[test]
fn datapath_threads_default_and_range() {
    let c = parse("", Path::new("fabric.toml")).unwrap();
    assert_eq!(c.daemon.datapath_threads, DEFAULT_DATAPATH_THREADS);
    let c = parse("[daemon]\ndatapath_threads = 4\n", Path::new("fabric.toml")).unwrap();
    assert_eq!(c.daemon.datapath_threads, 4);
    let e = parse("[daemon]\ndatapath_threads = 0\n", Path::new("fabric.toml")).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.starts_with("fabric.toml:2: daemon.datapath_threads:"),
        "{msg}"
    );
}

// ---- [[pool]] ----

const POOL: &str = "[[pool]]\nname = \"p0\"\npath = \"pool.img\"\nsize = \"1G\"\n";

#[test]
fn pool_volumes_and_exports() {
    let cfg = parse_ok(&format!(
        "{POOL}cluster_size = \"64K\"\n\
         [[pool.volume]]\nname = \"base\"\nsize = \"512M\"\nblock_size = 4096\n\
         [[pool.volume]]\nname = \"snap\"\nsnapshot_of = \"base\"\nexport = {{ queues = 2 }}\n\
         [[pool.volume]]\nname = \"vm1\"\nclone_of = \"snap\"\nexport = {{ socket = \"s/vm1.sock\", queue_size = 128, migration_socket = \"s/vm1.migrate.sock\" }}\n"
    ));
    let p = &cfg.pools[0];
    assert_eq!(p.path, PathBuf::from("pool.img"));
    assert_eq!(
        (p.size, p.cluster_size, p.overcommit),
        (Some(1 << 30), 65536, false)
    );
    assert_eq!((p.on_full, p.warn_percent), (OnFull::Error, 80));
    let paused = parse_ok(&format!("{POOL}on_full = \"pause\"\nwarn_percent = 100\n"));
    assert_eq!(
        (paused.pools[0].on_full, paused.pools[0].warn_percent),
        (OnFull::Pause, 100)
    );
    let round = parse_ok(&to_toml(&paused));
    assert_eq!(
        (round.pools[0].on_full, round.pools[0].warn_percent),
        (OnFull::Pause, 100)
    );
    assert_eq!(
        p.volumes[0].source,
        VolumeSource::New {
            size: 512 << 20,
            block_size: 4096
        }
    );
    assert_eq!(p.volumes[0].export, None);
    assert_eq!(p.volumes[1].source, VolumeSource::SnapshotOf("base".into()));
    assert_eq!(
        p.volumes[1].export,
        Some(ExportConfig {
            socket: PathBuf::from("run/snap.sock"),
            migration_socket: None,
            queues: 2,
            queue_size: 256,
            read_only: true,
            limits: ExportLimits::default(),
        })
    );
    assert_eq!(p.volumes[2].key, "pool[0].volume[2]");
    let e = p.volumes[2].export.as_ref().unwrap();
    assert_eq!(
        (e.socket.clone(), e.queue_size, e.read_only),
        (PathBuf::from("s/vm1.sock"), 128, false)
    );
    assert_eq!(
        e.migration_socket,
        Some(PathBuf::from("s/vm1.migrate.sock"))
    );
    // `config save` writes it back.
    let round = parse_ok(&crate::write::to_toml(&cfg));
    assert_eq!(round.pools[0].volumes[2].export, p.volumes[2].export);
}

#[test]
fn pool_errors_name_the_key() {
    let vol = |body: &str| parse_err(&format!("{POOL}[[pool.volume]]\nname = \"v\"\n{body}\n"));
    assert_eq!(
        vol("size = \"1X\""),
        "fabric.toml:7: pool[0].volume[0].size: invalid size (expected bytes, or e.g. \"512K\", \"16G\")"
    );
    assert_eq!(
        vol("size = 1000"),
        "fabric.toml:7: pool[0].volume[0].size: size 1000 is outside 4096..=1152921504606846976"
    );
    assert!(
        vol("size = \"1M\"\nclone_of = \"x\"").contains("pool[0].volume[0]: give exactly one of")
    );
    assert!(vol("").contains("give exactly one of"));
    assert!(vol("size = \"1M\"\nblock_size = 1024")
        .contains("pool[0].volume[0].block_size: block size must be 512 or 4096"));
    assert!(vol("snapshot_of = \"v\"").contains("cannot be its own source"));
    assert!(vol("snapshot_of = \"a\"\nexport = { read_only = false }")
        .contains("pool[0].volume[0].export.read_only: snapshots are always exported read-only"));
    assert!(vol("size = \"1M\"\nexport = { queues = 17 }")
        .contains("pool[0].volume[0].export.queues: queue count 17 is outside 1..=16"));
    assert!(vol("size = \"1M\"\nexport = { queue_size = 100 }").contains("not a power of two"));
    assert!(vol("size = \"1M\"\nexport = { sockett = \"x\" }").contains("unknown field `sockett`"));
    assert!(
        vol("size = \"1M\"\nexport = { socket = \"a.sock\", migration_socket = \"a.sock\" }")
            .contains("pool[0].volume[0].export.migration_socket: duplicate socket path")
    );
    assert!(vol("size = \"1M\"\nexport = { migration_socket = \"\" }")
        .contains("pool[0].volume[0].export.migration_socket: must not be empty"));
    // Over-commit must be asked for.
    assert_eq!(
        vol("size = \"2G\""),
        "fabric.toml:7: pool[0].volume[0].size: volumes total 2147483648 bytes, more than the pool's 1073741824; set `overcommit = true` on the pool to allow thin over-commit"
    );
    parse_ok(&format!(
        "{POOL}overcommit = true\n[[pool.volume]]\nname = \"v\"\nsize = \"2G\"\n"
    ));
    // A socket used by a port and an export.
    let text = format!(
        "{}{POOL}[[pool.volume]]\nname = \"v\"\nsize = \"1M\"\nexport = {{ socket = \"run/vm1.sock\" }}\n",
        one_port("")
    );
    assert!(parse_err(&text)
        .contains("pool[0].volume[0].export.socket: duplicate socket path run/vm1.sock"));
    assert!(parse_err(&format!("{POOL}{POOL}")).contains("pool[1].name: duplicate pool name"));
    // The full policy and the warning threshold name their key.
    assert_eq!(
        parse_err(&format!("{POOL}on_full = \"queue\"\n")),
        "fabric.toml:5: pool[0].on_full: `on_full` must be \"error\" or \"pause\", not \"queue\""
    );
    for bad in ["0", "101", "-5"] {
        assert_eq!(
            parse_err(&format!("{POOL}warn_percent = {bad}\n")),
            format!(
                "fabric.toml:5: pool[0].warn_percent: `warn_percent` must be in 1..=100, not {bad}"
            )
        );
    }
    assert!(parse_err(&format!("{POOL}cluster_size = \"24K\"\n"))
        .contains("pool[0].cluster_size: cluster size 24576 is not a power of two"));
    assert!(parse_err(&format!("{POOL}[[pool.volume]]\nname = \"v\"\nsize = \"1M\"\n[[pool.volume]]\nname = \"v\"\nsize = \"1M\"\n"))
        .contains("pool[0].volume[1].name: duplicate volume name"));
}

#[test]
fn sizes() {
    // The shared grammar's table, through the config's own entry point.
    for (input, want) in fabric_syntax::SIZE_TABLE {
        let text =
            format!("{POOL}overcommit = true\n[[pool.volume]]\nname = \"v\"\nsize = \"{input}\"\n");
        match want {
            Ok(bytes) if (4096..=1 << 60).contains(bytes) => {
                let cfg = parse_ok(&text);
                let VolumeSource::New { size, .. } = cfg.pools[0].volumes[0].source else {
                    panic!("{input:?}: not a new volume");
                };
                assert_eq!(size, *bytes, "{input:?}");
            }
            Ok(bytes) => assert_eq!(
                parse_err(&text),
                format!(
                    "fabric.toml:8: pool[0].volume[0].size: size {bytes} is outside \
                     4096..=1152921504606846976"
                ),
            ),
            Err(_) => assert_eq!(
                parse_err(&text),
                "fabric.toml:8: pool[0].volume[0].size: invalid size \
                 (expected bytes, or e.g. \"512K\", \"16G\")",
                "{input:?}"
            ),
        }
    }
}

/// The README's snapshot name (`vm1-disk@monday`), made with `vblock snapshot`
/// offline or `fabricctl volume snapshot`, can be named here.
#[test]
fn volume_name_with_at() {
    let cfg = parse_ok(&format!(
        "{POOL}[[pool.volume]]\nname = \"x\"\nsize = \"1M\"\n\
         [[pool.volume]]\nname = \"x@y\"\nsnapshot_of = \"x\"\nexport = {{}}\n"
    ));
    let v = &cfg.pools[0].volumes[1];
    assert_eq!(v.name, "x@y");
    assert_eq!(
        v.export.as_ref().unwrap().socket,
        PathBuf::from("run/x@y.sock")
    );
}

#[test]
fn control_socket_and_metrics() {
    let cfg = parse_ok("");
    assert_eq!(cfg.daemon.control_socket, PathBuf::from("run/control.sock"));
    assert_eq!(cfg.daemon.metrics_listen, None);
    let cfg = parse_ok(
        "[daemon]\ncontrol_socket = \"/tmp/c.sock\"\nmetrics_listen = \"127.0.0.1:9100\"\n",
    );
    assert_eq!(cfg.daemon.control_socket, PathBuf::from("/tmp/c.sock"));
    assert_eq!(
        cfg.daemon.metrics_listen,
        Some("127.0.0.1:9100".parse().unwrap())
    );
    assert!(
        parse_err("[daemon]\nmetrics_listen = \"localhost\"\n").contains("daemon.metrics_listen")
    );
    let clash = format!(
        "[daemon]\ncontrol_socket = \"run/vm1.sock\"\n{}",
        one_port("")
    );
    assert!(
        parse_err(&clash).contains("duplicate socket path"),
        "{}",
        parse_err(&clash)
    );
}

#[test]
fn socket_access_keys() {
    let d = parse_ok("").daemon;
    assert_eq!(
        (d.socket_mode, &d.socket_owner, &d.socket_group),
        (0o600, &None, &None)
    );
    assert_eq!(d.handshake_timeout_ms, 5000);
    let d = parse_ok(
        "[daemon]\nsocket_mode = 0o660\nsocket_owner = 65534\nsocket_group = \"kvm\"\nhandshake_timeout_ms = 300\n",
    )
    .daemon;
    assert_eq!(d.socket_mode, 0o660);
    assert_eq!(d.socket_owner, Some(Principal::Id(65534)));
    assert_eq!(d.socket_group, Some(Principal::Name("kvm".into())));
    assert_eq!(d.handshake_timeout_ms, 300);
    let d = parse_ok("[daemon]\nsocket_mode = \"0640\"\nsocket_group = \"100\"\n").daemon;
    assert_eq!(d.socket_mode, 0o640);
    assert_eq!(d.socket_group, Some(Principal::Id(100)));
    // What `config save` writes reads back the same.
    let d2 = parse_ok(&to_toml(&parse_ok(
        "[daemon]\nsocket_mode = 0o666\nsocket_owner = \"nobody\"\nsocket_group = 7\n",
    )))
    .daemon;
    assert_eq!(
        (d2.socket_mode, d2.socket_owner, d2.socket_group),
        (
            0o666,
            Some(Principal::Name("nobody".into())),
            Some(Principal::Id(7))
        )
    );
    for (text, want) in [
        (
            "socket_mode = 0o1777",
            "fabric.toml:2: daemon.socket_mode: not permission bits",
        ),
        (
            "socket_mode = \"rw\"",
            "fabric.toml:2: daemon.socket_mode: not permission bits",
        ),
        (
            "socket_mode = 0o060",
            "fabric.toml:2: daemon.socket_mode: mode 0o60 denies the owner",
        ),
        (
            "socket_owner = -1",
            "fabric.toml:2: daemon.socket_owner: an id is",
        ),
        (
            "socket_group = \"a b\"",
            "fabric.toml:2: daemon.socket_group: not a user or group name",
        ),
        (
            "handshake_timeout_ms = 0",
            "fabric.toml:2: daemon.handshake_timeout_ms: timeout 0 is outside 100..=600000",
        ),
    ] {
        let err = parse_err(&format!("[daemon]\n{text}\n"));
        assert!(err.starts_with(want), "{text}: {err}");
    }
}

/// `live_migration`: on unless set false; written back by `config save`; a
/// value that is no boolean is refused by name.
#[test]
fn live_migration_key() {
    assert!(parse_ok("").daemon.live_migration);
    let off = parse_ok("[daemon]\nlive_migration = false\n");
    assert!(!off.daemon.live_migration);
    assert!(!parse_ok(&to_toml(&off)).daemon.live_migration);
    assert!(parse_ok(&to_toml(&parse_ok(""))).daemon.live_migration);
    let err = parse_err("[daemon]\nlive_migration = \"no\"\n");
    assert!(
        err.starts_with(
            "fabric.toml:2: daemon.live_migration: invalid type: string \"no\", expected a boolean"
        ),
        "{err}"
    );
}

/// A socket configured where something else lives (a pool image, say) is
/// refused by name, and the file is left alone.
#[test]
fn socket_paths_on_existing_files_are_refused() {
    let dir = std::env::temp_dir().join(format!("cfg-sock-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("pool.img");
    std::fs::write(&file, b"pool bytes").unwrap();
    let f = file.display();
    for (text, key) in [
        (one_port(&format!("socket = \"{f}\"")), "switch[0].port[0].socket"),
        (
            format!("[daemon]\ncontrol_socket = \"{f}\"\n"),
            "daemon.control_socket",
        ),
        (
            format!("{POOL}[[pool.volume]]\nname = \"v\"\nsize = \"1M\"\nexport = {{ socket = \"{f}\" }}\n"),
            "pool[0].volume[0].export.socket",
        ),
    ] {
        let err = parse_err(&text);
        assert!(
            err.contains(&format!(
                "{key}: {f} exists and is not a socket"
            )),
            "{err}"
        );
    }
    let dir_err = parse_err(&one_port(&format!("socket = \"{}\"", dir.display())));
    assert!(dir_err.contains("exists and is not a socket"), "{dir_err}");
    assert_eq!(std::fs::read(&file).unwrap(), b"pool bytes");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn tap_ports() {
    let tap = |extra: &str| {
        format!(
            "[[switch]]\nname = \"br0\"\n[[switch.port]]\nname = \"t1\"\ntype = \"tap\"\n{extra}\n"
        )
    };
    let cfg = parse_ok(&tap("vlan = { mode = \"access\", tag = 10 }\nmtu = 1450"));
    let p = only_port(&cfg);
    assert_eq!(
        p.kind,
        PortKind::Tap {
            device: "t1".into(),
            multi_queue: false,
            offloads: true,
        }
    );
    assert_eq!(p.mtu, 1450);
    let cfg = parse_ok(&tap("device = \"fab0\""));
    assert_eq!(
        only_port(&cfg).kind,
        PortKind::Tap {
            device: "fab0".into(),
            multi_queue: false,
            offloads: true,
        }
    );
    let cfg = parse_ok(&tap("multi_queue = true"));
    assert_eq!(
        only_port(&cfg).kind,
        PortKind::Tap {
            device: "t1".into(),
            multi_queue: true,
            offloads: true,
        }
    );
    let cfg = parse_ok(&tap("offloads = false"));
    assert_eq!(
        only_port(&cfg).kind,
        PortKind::Tap {
            device: "t1".into(),
            multi_queue: false,
            offloads: false,
        }
    );
    assert!(parse_err(&tap("offloads = \"no\"")).contains("switch[0].port[0].offloads"));
    assert!(parse_err(&tap("queues = 2"))
        .contains("switch[0].port[0].queues: `queues` is not valid for a port of type \"tap\""));
    assert!(parse_err(&one_port("multi_queue = true"))
        .contains("`multi_queue` is not valid for a port of type \"vhost-user\""));
    assert!(parse_err(&tap("socket = \"x.sock\""))
        .contains("switch[0].port[0].socket: `socket` is not valid for a port of type \"tap\""));
    assert!(parse_err(&tap("mac = \"52:54:00:00:00:01\"")).contains("`mac` is not valid"));
    assert!(parse_err(&tap("queue_size = 256")).contains("`queue_size` is not valid"));
    assert!(parse_err(&tap("device = \"a-very-long-ifname\"")).contains("longer than 15 bytes"));
    assert!(parse_err(&one_port("device = \"x\""))
        .contains("`device` is not valid for a port of type \"vhost-user\""));
    // The example's round trip covers vhost-user; a TAP port round-trips too.
    let text = to_toml(&parse_ok(&tap(
        "device = \"fab0\"\nmulti_queue = true\noffloads = false",
    )));
    assert_eq!(
        parse_ok(&text).switches[0].ports[0].kind,
        PortKind::Tap {
            device: "fab0".into(),
            multi_queue: true,
            offloads: false,
        }
    );
}

#[test]
fn vxlan_ports() {
    let vx = |extra: &str| {
        format!("[[switch]]\nname = \"br0\"\n[[switch.port]]\nname = \"vx\"\ntype = \"vxlan\"\n{extra}\n")
    };
    let cfg = parse_ok(&vx("local = \"192.0.2.1\"\nvni = [ { vlan = 10, vni = 5010, remotes = [\"192.0.2.2\"] }, { vlan = 20, vni = 5020, group = \"239.1.1.1\" } ]"));
    let p = only_port(&cfg);
    let PortKind::Vxlan(v) = &p.kind else {
        panic!("{:?}", p.kind)
    };
    assert_eq!(
        (v.udp_port, v.underlay_mtu, v.learn_vteps),
        (4789, 1500, false)
    );
    assert_eq!(
        (
            v.senders.len(),
            v.local_hold_secs,
            v.vtep_mac_limit,
            v.remote_fdb_capacity,
            v.remote_mac_aging_secs
        ),
        (0, 10, 1024, 65536, 300),
        "no senders subnet unless configured"
    );
    assert_eq!(
        p.mtu, 1450,
        "default MTU leaves room for the 50-byte overhead"
    );
    assert_eq!(
        v.vnis[0].remotes,
        ["192.0.2.2".parse::<std::net::Ipv4Addr>().unwrap()]
    );
    assert_eq!(
        format!("{:?}", p.vlan),
        "Trunk { allowed: VlanSet{10, 20}, native: None }"
    );
    let text = to_toml(&cfg);
    assert_eq!(parse_ok(&text), cfg, "{text}");
    let cfg = parse_ok(&vx("local = \"192.0.2.1\"\nvni = [ { vlan = 10, vni = 1, static = [ { mac = \"02:00:00:00:00:07\", vtep = \"192.0.2.7\" } ] } ]"));
    let PortKind::Vxlan(v) = &only_port(&cfg).kind else {
        panic!()
    };
    assert_eq!(
        v.vnis[0].statics,
        [(MacAddr([2, 0, 0, 0, 0, 7]), "192.0.2.7".parse().unwrap())]
    );
    assert_eq!(parse_ok(&to_toml(&cfg)), cfg);
    let e = |extra: &str| parse_err(&vx(extra));
    // The anti-spoofing keys: set, round-tripped, and each bad value named.
    let one = "local = \"192.0.2.1\"\nvni = [ { vlan = 10, vni = 1, group = \"239.1.1.1\" } ]";
    let cfg = parse_ok(&vx(&format!(
        "{one}\nsenders = [\"192.0.2.0/24\", \"10.1.2.3/32\"]\nlocal_hold_secs = 0\n\
         vtep_mac_limit = 16\nremote_fdb_capacity = 100\nremote_mac_aging_secs = 60"
    )));
    let PortKind::Vxlan(v) = &only_port(&cfg).kind else {
        panic!()
    };
    assert_eq!(
        v.senders,
        [
            ("192.0.2.0".parse().unwrap(), 24),
            ("10.1.2.3".parse().unwrap(), 32)
        ]
    );
    assert_eq!(
        (
            v.local_hold_secs,
            v.vtep_mac_limit,
            v.remote_fdb_capacity,
            v.remote_mac_aging_secs
        ),
        (0, 16, 100, 60)
    );
    assert_eq!(parse_ok(&to_toml(&cfg)), cfg);
    let small = parse_ok(&vx(&format!("{one}\nremote_fdb_capacity = 5")));
    let PortKind::Vxlan(v) = &only_port(&small).kind else {
        panic!()
    };
    assert_eq!(
        v.vtep_mac_limit, 5,
        "the default limit follows a small capacity"
    );
    for (extra, msg) in [
        (
            "senders = [\"192.0.2.1/24\"]",
            "switch[0].port[0].senders[0]: \"192.0.2.1/24\" has host bits set beyond the /24 prefix",
        ),
        (
            "senders = [\"192.0.2.0/33\"]",
            "switch[0].port[0].senders[0]: \"192.0.2.0/33\" is not an IPv4 subnet",
        ),
        (
            "senders = [\"192.0.2.0\"]",
            "switch[0].port[0].senders[0]: \"192.0.2.0\" is not an IPv4 subnet",
        ),
        ("local_hold_secs = 3601", "switch[0].port[0].local_hold_secs:"),
        ("remote_fdb_capacity = 0", "switch[0].port[0].remote_fdb_capacity:"),
        (
            "remote_fdb_capacity = 10\nvtep_mac_limit = 11",
            "switch[0].port[0].vtep_mac_limit:",
        ),
        ("remote_mac_aging_secs = 9", "switch[0].port[0].remote_mac_aging_secs:"),
    ] {
        let err = e(&format!("{one}\n{extra}"));
        assert!(err.contains(msg), "{extra}: {err}");
    }
    assert!(parse_err(&one_port("vtep_mac_limit = 5"))
        .contains("`vtep_mac_limit` is not valid for a port of type \"vhost-user\""));
    assert!(e("local = \"192.0.2.1\"\nvni = [ { vlan = 10, vni = 1, static = [ { mac = \"02:00:00:00:00:07\", vtep = \"239.0.0.1\" } ] } ]").contains("static[0].vtep"));
    assert!(e("vni = [ { vlan = 10, vni = 1 } ]").contains("needs `local`"));
    assert!(e(&format!("{one}\noffloads = false")).contains(
        "switch[0].port[0].offloads: `offloads` is not valid for a port of type \"vxlan\""
    ));
    assert!(e("local = \"x\"\nvni = [ { vlan = 10, vni = 1 } ]")
        .contains("local: \"x\" is not an IPv4 address"));
    assert!(e("local = \"192.0.2.1\"").contains("needs `vni`"));
    assert!(
        e("local = \"192.0.2.1\"\nvni = [ { vlan = 10, vni = 16777216 } ]")
            .contains("VNI 16777216 is outside")
    );
    assert!(
        e("local = \"192.0.2.1\"\nvni = [ { vlan = 10, vni = 1 }, { vlan = 10, vni = 2 } ]")
            .contains("mapped twice")
    );
    assert!(
        e("local = \"192.0.2.1\"\nvni = [ { vlan = 10, vni = 1 }, { vlan = 11, vni = 1 } ]")
            .contains("VNI 1 is mapped twice")
    );
    assert!(e(
        "local = \"192.0.2.1\"\nvni = [ { vlan = 10, vni = 1, remotes = [\"239.0.0.1\"] } ]"
    )
    .contains("unicast"));
    assert!(
        e("local = \"192.0.2.1\"\nvni = [ { vlan = 10, vni = 1, group = \"10.0.0.1\" } ]")
            .contains("multicast")
    );
    assert!(e("local = \"192.0.2.1\"\nvni = [ { vlan = 10, vni = 1 } ]\nvlan = { mode = \"access\", tag = 1 }").contains("takes no `vlan`"));
    assert!(parse_err(&one_port("local = \"192.0.2.1\""))
        .contains("`local` is not valid for a port of type \"vhost-user\""));
}

#[test]
fn limits_are_read_with_their_defaults_and_refused_by_key() {
    let cfg = parse_ok(&one_port("rate = 10000"));
    assert_eq!(
        only_port(&cfg).policing,
        Some(RateLimit {
            rate: 10_000,
            burst: DEFAULT_POLICING_BURST_KBIT
        })
    );
    let e = parse_err(&one_port("burst = 5"));
    assert!(
        e.contains("switch[0].port[0].burst: `burst` is given without `rate`"),
        "{e}"
    );
    let e = parse_err(&one_port("rate = 0"));
    assert!(
        e.contains("switch[0].port[0].rate: `rate` must be at least 1"),
        "{e}"
    );
    let e = parse_err(&one_port("rate = -5"));
    assert!(e.contains("switch[0].port[0].rate"), "{e}");

    let pool = |export: &str| {
        format!(
            "[[pool]]\nname = \"p\"\npath = \"p.img\"\nsize = \"1G\"\n\
             [[pool.volume]]\nname = \"v\"\nsize = \"1G\"\nexport = {{ {export} }}\n"
        )
    };
    let cfg = parse_ok(&pool(
        "iops_read = 2000, bytes_per_sec_write = \"100M\", bytes_per_sec_write_burst = 4096",
    ));
    let limits = cfg.pools[0].volumes[0].export.as_ref().unwrap().limits;
    assert_eq!(
        limits,
        ExportLimits {
            iops_read: Some(RateLimit {
                rate: 2000,
                burst: 200
            }),
            bytes_per_sec_write: Some(RateLimit {
                rate: 100 << 20,
                burst: 4096
            }),
            ..ExportLimits::default()
        }
    );
    // Written back and read again: the same limits.
    let again = parse_ok(&to_toml(&cfg));
    assert_eq!(
        again.pools[0].volumes[0].export.as_ref().unwrap().limits,
        limits
    );
    let e = parse_err(&pool("iops_write_burst = 3"));
    assert!(
        e.contains(
            "fabric.toml:8: pool[0].volume[0].export.iops_write_burst: `iops_write_burst` is given without `iops_write`"
        ),
        "{e}"
    );
    let e = parse_err(&pool("bytes_per_sec_read = \"fast\""));
    assert!(
        e.contains("pool[0].volume[0].export.bytes_per_sec_read"),
        "{e}"
    );
    let e = parse_err(&pool("iops_reads = 3"));
    assert!(e.contains("iops_reads"), "{e}");
}

#[test]
fn nbd_section_defaults_and_errors_name_the_key() {
    let cfg = parse_ok("[daemon]\nrun_dir = \"/run/fabric\"\n[nbd]\n");
    let nbd = cfg.nbd.expect("[nbd] turns the server on");
    assert_eq!(nbd.socket, std::path::Path::new("/run/fabric/nbd.sock"));
    assert_eq!(nbd.tcp, None);
    assert_eq!(parse_ok("").nbd, None);
    let cfg = parse_ok("[nbd]\nsocket = \"/tmp/n.sock\"\ntcp = \"127.0.0.1:10809\"\n");
    assert_eq!(
        parse_ok(&crate::to_toml(&cfg)),
        cfg,
        "config save keeps [nbd]"
    );
    let nbd = cfg.nbd.unwrap();
    assert_eq!(nbd.tcp, Some("127.0.0.1:10809".parse().unwrap()));
    assert!(parse_err("[nbd]\ntcp = \"localhost\"\n").contains("nbd.tcp"));
    assert!(parse_err("[nbd]\nsocket = \"\"\n").contains("nbd.socket"));
    assert!(parse_err("[nbd]\nport = 1\n").contains("nbd.port"));
    assert!(parse_err(
        "[daemon]\ncontrol_socket = \"/tmp/c.sock\"\n[nbd]\nsocket = \"/tmp/c.sock\"\n"
    )
    .contains("nbd.socket: duplicate socket path"));
}

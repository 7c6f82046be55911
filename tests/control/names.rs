//! One name rule: every name `fabric.toml` accepts for a volume, the offline
//! `vblock` tool accepts for a new volume, and the other way round (so a
//! snapshot made offline can be named in the config, and the config's names
//! can be made offline). `fabricctl` and the control socket call the same
//! `fabric_config::valid_name` as the config.

use std::path::Path;
use test_kit::TestDir;

/// (name, allowed).
fn names() -> Vec<(String, bool)> {
    let mut v: Vec<(String, bool)> = [
        ("a", true),
        ("vm1-disk@monday", true),
        ("x@y", true),
        ("@", true),
        ("a.b_c-d", true),
        ("-odd", true),
        ("...", true),
        ("", false),
        (".", false),
        ("..", false),
        ("a b", false),
        ("vm/1", false),
        ("a:b", false),
        ("a\tb", false),
        ("é", false),
        ("a#b", false),
    ]
    .iter()
    .map(|(n, ok)| (n.to_string(), *ok))
    .collect();
    // 32 bytes is the longest; the pool format itself holds up to 64.
    v.push(("x".repeat(32), true));
    v.push(("y".repeat(33), false));
    v.push(("z".repeat(64), false));
    v
}

fn config_accepts(name: &str) -> bool {
    let quoted = toml::Value::String(name.to_owned()).to_string();
    let text = format!(
        "[[pool]]\nname = \"p0\"\npath = \"pool.img\"\nsize = \"64M\"\n\
         [[pool.volume]]\nname = {quoted}\nsize = \"1M\"\n"
    );
    fabric_config::parse(&text, Path::new("fabric.toml")).is_ok()
}

fn vblock(args: &[&str]) -> Result<(), vblock::cli::CliError> {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    vblock::cli::run(&args, &mut Vec::new())
}

#[test]
fn config_and_vblock_accept_the_same_names() {
    // Not tmpfs: the pool is opened O_DIRECT.
    let dir = TestDir::on_disk("names");
    let pool = dir.join("pool.img");
    let pool = pool.to_str().unwrap();
    vblock(&["pool", "create", pool, "--size", "64M"]).unwrap();
    vblock(&["volume", "create", pool, "base", "--size", "1M"]).unwrap();
    for (name, allowed) in names() {
        assert_eq!(config_accepts(&name), allowed, "config, {name:?}");
        // A snapshot, as in the README's `vblock snapshot POOL vm1-root vm1-root@base`.
        match vblock(&["snapshot", pool, "base", "--", &name]) {
            Ok(()) => assert!(allowed, "vblock accepted {name:?}"),
            Err(vblock::cli::CliError::Usage(m)) => {
                assert!(!allowed, "vblock refused {name:?}: {m}");
                assert_eq!(m, fabric_config::valid_name(&name).unwrap_err());
            }
            Err(e) => panic!("{name:?}: {e}"),
        }
    }
}

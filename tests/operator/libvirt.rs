//! The README's libvirt domain XML on a running `vswitchd`: a private
//! libvirtd runs QEMU as `libvirt-qemu`, which reaches the port and export
//! sockets through `socket_group`/`socket_mode`; the guest pings a neighbour
//! and runs fio write+verify on its vhost-user disk; after `virsh destroy` a
//! second domain takes the same port and export and verifies the data.

use std::path::Path;
use std::time::{Duration, Instant};
use test_kit::libvirt::{uid_of, uid_of_process, Libvirtd, QEMU_USER};
use test_kit::qemu::blk::{BlkJob, BlkStep};
use test_kit::qemu::{guest_image, qemu_binary, Guest, Vswitchd};
use test_kit::TestDir;

const README: &str = include_str!("../../README.md");
/// Where the README's domain expects the daemon's `run_dir`.
const README_RUN_DIR: &str = "/run/fabric/";

const GUEST_IP: &str = "10.0.0.1/24";
const PEER_IP: &str = "10.0.0.2";
const MIB: u64 = 1 << 20;

/// The first ```xml block of the README (section "Attaching a libvirt guest").
fn readme_domain() -> &'static str {
    let start = README.find("```xml\n").expect("README has no ```xml block") + "```xml\n".len();
    let len = README[start..]
        .find("```")
        .expect("unterminated ```xml block");
    &README[start..start + len]
}

/// XML without the line breaks and indentation between elements (the log's
/// one-line form).
fn one_line(xml: &str) -> String {
    xml.lines().map(str::trim).collect()
}

/// `text` with the one occurrence of `from` replaced; panics when it is not
/// there exactly once (the README changed under the test).
fn replace_once(text: &str, from: &str, to: &str) -> String {
    assert_eq!(
        text.matches(from).count(),
        1,
        "expected {from:?} once in the README's domain XML:\n{text}"
    );
    text.replacen(from, to, 1)
}

/// The first element `<tag ...>...</tag>` of `xml`.
fn element<'a>(xml: &'a str, tag: &str) -> &'a str {
    let close = format!("</{tag}>");
    let i = [format!("<{tag} "), format!("<{tag}>")]
        .iter()
        .filter_map(|open| xml.find(open.as_str()))
        .min()
        .unwrap_or_else(|| panic!("no <{tag}> in {xml}"));
    let j = xml[i..]
        .find(&close)
        .unwrap_or_else(|| panic!("no </{tag}> in {xml}"));
    &xml[i..i + j + close.len()]
}

/// The README's domain, made runnable here: TCG (nested KVM cannot boot a
/// Linux guest on this machine), the test image's kernel booted directly with
/// `params`, the serial console in a file, the sockets in `run_dir`, and no
/// USB controller or balloon (devices the guest has no use for).
fn domain_xml(name: &str, dir: &Path, run_dir: &Path, params: &str) -> String {
    let xml = readme_domain();
    let xml = replace_once(xml, "<domain type='kvm'>", "<domain type='qemu'>");
    let xml = replace_once(&xml, "<name>vm1</name>", &format!("<name>{name}</name>"));
    let xml = replace_once(
        &xml,
        "<memory unit='GiB'>1</memory>",
        "<memory unit='MiB'>256</memory>",
    );
    let xml = replace_once(&xml, "<vcpu>2</vcpu>", "<vcpu>1</vcpu>");
    let boot = format!(
        "<type arch='x86_64' machine='q35'>hvm</type>\n    <kernel>{}</kernel>\n    \
         <initrd>{}</initrd>\n    <cmdline>console=ttyS0 quiet panic=-1 {params}</cmdline>",
        dir.join("vmlinuz").display(),
        dir.join("initramfs.img").display()
    );
    let xml = replace_once(&xml, "<type arch='x86_64' machine='q35'>hvm</type>", &boot);
    assert_eq!(xml.matches(README_RUN_DIR).count(), 2, "{xml}");
    let xml = xml.replace(README_RUN_DIR, &format!("{}/", run_dir.display()));
    let devices = format!(
        "  <emulator>{}</emulator>\n    <controller type='usb' model='none'/>\n    \
         <memballoon model='none'/>\n    <serial type='file'><source path='{}'/></serial>\n  </devices>",
        qemu_binary().display(),
        serial_path(dir, name).display()
    );
    replace_once(&xml, "  </devices>", &devices)
}

fn serial_path(dir: &Path, domain: &str) -> std::path::PathBuf {
    dir.join(format!("{domain}.serial.log"))
}

/// Waits until the domain's console has a line containing `needle`.
fn wait_console(lv: &Libvirtd, dir: &Path, domain: &str, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let text = std::fs::read_to_string(serial_path(dir, domain)).unwrap_or_default();
        if text.lines().any(|l| l.contains(needle)) {
            return text;
        }
        assert!(
            !text.contains("FABRIC-ERROR"),
            "{domain}: guest error:\n{text}\n{}",
            lv.diagnostics()
        );
        assert!(
            Instant::now() < deadline,
            "{domain}: no {needle:?} within 300 s:\n{text}\n{}",
            lv.diagnostics()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The line of `console` starting with `FABRIC-RESULT blk WORD `.
fn result_line<'a>(console: &'a str, word: &str) -> &'a str {
    let prefix = format!("FABRIC-RESULT blk {word} ");
    console
        .lines()
        .find_map(|l| l.find(&prefix).map(|i| l[i..].trim_end()))
        .unwrap_or_else(|| panic!("no {prefix:?} line in\n{console}"))
}

/// Boots domain `name` from the README's XML with `job`, checks that QEMU
/// runs as libvirt's unprivileged user, waits for the job, the background
/// pings to the neighbour, and destroys the domain.
fn run_domain(lv: &Libvirtd, dir: &Path, run_dir: &Path, name: &str, job: &BlkJob) -> String {
    let params = format!(
        "ipv6.disable=1 {} fabric.ip={GUEST_IP} fabric.peer={PEER_IP} fabric.hold=forever",
        job.cmdline()
    );
    let xml_path = dir.join(format!("{name}.xml"));
    std::fs::write(&xml_path, domain_xml(name, dir, run_dir, &params)).unwrap();
    lv.virsh_ok(&["define", &xml_path.to_string_lossy()]);
    lv.virsh_ok(&["start", name]);
    let pid = lv
        .qemu_pid(name)
        .unwrap_or_else(|| panic!("no QEMU pidfile for {name}\n{}", lv.diagnostics()));
    assert_eq!(
        uid_of_process(pid),
        Some(uid_of(QEMU_USER)),
        "QEMU of {name} (pid {pid}) does not run as {QEMU_USER}"
    );
    let console = wait_console(lv, dir, name, "FABRIC-RESULT blk done");
    lv.virsh_ok(&["destroy", name]);
    lv.virsh_ok(&["undefine", name]);
    assert_eq!(
        lv.virsh_ok(&["list", "--all", "--name"]).trim(),
        "",
        "domains left after destroying {name}"
    );
    console
}

#[test]
fn libvirt_domain_from_the_readme_pings_runs_fio_and_the_next_domain_reattaches() {
    let _alone = test_kit::serial();
    let qemu = qemu_binary();
    let image = guest_image();
    let dir = TestDir::on_disk("libvirt").keep_on_panic();
    // QEMU runs as libvirt-qemu: the kernel, the sockets' directory and the
    // console file must be reachable for it.
    // (libvirt gives the kernel and initrd to that user: copies, so the
    // shared image keeps its owner.)
    std::fs::copy(&image.kernel, dir.join("vmlinuz")).unwrap();
    std::fs::copy(&image.initrd, dir.join("initramfs.img")).unwrap();
    let config = "[daemon]\nsocket_group = \"libvirt-qemu\"\nsocket_mode = 0o660\n\
        [[switch]]\nname = \"br0\"\n\
        [[switch.port]]\nname = \"vm1\"\ntype = \"vhost-user\"\nmac = \"52:54:00:00:00:01\"\nqueues = 2\n\
        [[switch.port]]\nname = \"peer\"\ntype = \"vhost-user\"\n\
        [[pool]]\nname = \"p0\"\npath = \"pool.img\"\nsize = \"512M\"\n\
        [[pool.volume]]\nname = \"vm1-disk\"\nsize = \"128M\"\nexport = { queues = 1 }\n";
    let vs = Vswitchd::start(dir.path(), config, &["vm1", "peer", "vm1-disk"]);
    let run_dir = dir.join("run");

    // What the daemon logs for the port and the export is the README's XML.
    let readme = one_line(readme_domain());
    let log = vs
        .log_text()
        .replace(&format!("{}/", run_dir.display()), README_RUN_DIR);
    let port_line = log
        .lines()
        .find(|l| l.contains("port vm1: attach a libvirt domain with"))
        .unwrap_or_else(|| panic!("no libvirt line for port vm1 in\n{log}"));
    let disk_line = log
        .lines()
        .find(|l| l.contains("volume vm1-disk: attach a libvirt domain with"))
        .unwrap_or_else(|| panic!("no libvirt line for export vm1-disk in\n{log}"));
    for (line, tag) in [
        (port_line, "memoryBacking"),
        (port_line, "interface"),
        (disk_line, "memoryBacking"),
        (disk_line, "disk"),
    ] {
        let logged = element(line, tag);
        assert!(
            readme.contains(logged),
            "logged <{tag}> is not the README's:\n{logged}\nREADME:\n{readme}"
        );
    }

    let mut peer = Guest::boot(
        &qemu,
        &image,
        dir.path(),
        "peer",
        &run_dir.join("peer.sock"),
        "52:54:00:00:00:02",
        &format!("fabric.ip={PEER_IP}/24 fabric.role=serve"),
    );
    peer.wait_for("FABRIC-RESULT serve ready", Duration::from_secs(120))
        .unwrap();

    let lv = Libvirtd::start(&dir.join("libvirt"));
    let job = BlkJob::new(&[BlkStep::Write], 32 * MIB).seed(7);
    let first = run_domain(&lv, dir.path(), &run_dir, "vm1", &job);
    let write = result_line(&first, "write");
    assert!(
        write.starts_with("FABRIC-RESULT blk write PASS "),
        "{write}"
    );
    let ping = result_line(&first, "ping");
    assert!(ping.ends_with("tail=8/8"), "first guest's pings: {ping}");
    assert!(result_line(&first, "done").starts_with("FABRIC-RESULT blk done PASS"));

    // The same port and export take the next guest, which finds the data.
    let second = run_domain(
        &lv,
        dir.path(),
        &run_dir,
        "vm1-again",
        &job.with_steps(&[BlkStep::Verify]),
    );
    let verify = result_line(&second, "verify");
    assert!(
        verify.starts_with("FABRIC-RESULT blk verify PASS "),
        "{verify}"
    );
    let ping = result_line(&second, "ping");
    assert!(ping.ends_with("tail=8/8"), "second guest's pings: {ping}");

    drop(lv);
    peer.kill();
    let (st, _) = vs.stop();
    assert!(st.success(), "vswitchd exit: {st}");
}

//! How operators run the daemon: under systemd (`systemd`: the unit file,
//! sd_notify readiness and the pidfile) and with guests defined in libvirt
//! (`libvirt`: the README's domain XML on a private libvirtd). One test
//! binary: each file is a module.

mod libvirt;
mod systemd;

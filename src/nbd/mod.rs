//! An NBD server for the volumes and snapshots of the daemon's pools (see
//! the README's "Images in and out").

pub mod wire;

//! vhost-user-blk I/O bench (placeholder; filled in by the blk client work).
//! Does nothing unless invoked with `--bench`.

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    eprintln!("blk_io: not implemented yet");
}

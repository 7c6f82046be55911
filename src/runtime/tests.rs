//! Races between volume operations and exports, made deterministic by two
//! hooks the runtime calls on the running thread in test builds: `between`
//! where an operation has decided and not yet acted, `state_busy` when the
//! state lock is found taken.

use super::*;
use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread::LocalKey;
use std::time::Duration;

type Hook = RefCell<Option<Box<dyn FnOnce()>>>;

thread_local! {
    static BETWEEN: Hook = const { RefCell::new(None) };
    static STATE_BUSY: Hook = const { RefCell::new(None) };
}

/// Runs `hook` once if this thread set it.
fn run(hook: &'static LocalKey<Hook>) {
    if let Some(f) = hook.with(|h| h.borrow_mut().take()) {
        f();
    }
}

fn set(hook: &'static LocalKey<Hook>, f: impl FnOnce() + 'static) {
    hook.with(|h| *h.borrow_mut() = Some(Box::new(f)));
}

pub(super) fn between() {
    run(&BETWEEN);
}

pub(super) fn state_busy() {
    run(&STATE_BUSY);
}

/// Runs `first` here and starts `second` on another thread when `first`
/// reaches its `between` point; `first` goes on once `second` has finished
/// or found the state lock taken. So `second` runs entirely inside `first`'s
/// window unless `first` holds the state across it.
fn race<A, B: Send + 'static>(
    first: impl FnOnce() -> A,
    second: impl FnOnce() -> B + Send + 'static,
) -> (A, B) {
    let (go_tx, go_rx) = mpsc::channel::<()>();
    // Sent when `second` finds the state lock taken, or finishes.
    let (step_tx, step_rx) = mpsc::channel::<()>();
    let other = std::thread::spawn(move || {
        go_rx
            .recv()
            .expect("the first operation reached its window");
        let waited = step_tx.clone();
        set(&STATE_BUSY, move || {
            let _ = waited.send(());
        });
        let out = second();
        STATE_BUSY.with(|h| h.borrow_mut().take());
        let _ = step_tx.send(());
        out
    });
    let ran = Arc::new(AtomicBool::new(false));
    let ran2 = ran.clone();
    set(&BETWEEN, move || {
        ran2.store(true, Ordering::Relaxed);
        go_tx.send(()).unwrap();
        // Generous: the other side either finishes or blocks at once.
        step_rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the second operation finishes or waits for the state");
    });
    let a = first();
    BETWEEN.with(|h| h.borrow_mut().take());
    assert!(
        ran.load(Ordering::Relaxed),
        "the first operation reached its window"
    );
    (a, other.join().unwrap())
}

/// A runtime with pool `p0` holding volume `v` (8 MiB, not exported) in a
/// fresh directory.
struct Host {
    rt: Arc<Runtime>,
    dir: PathBuf,
}

const MIB: u64 = 1 << 20;

impl Host {
    fn start(name: &str) -> Host {
        let dir = std::env::var_os("VBLOCK_TEST_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| "/var/tmp".into())
            .join(format!("daemon-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("fabric.toml");
        std::fs::write(
            &path,
            "[daemon]\nrun_dir = \"run\"\n[[pool]]\nname = \"p0\"\npath = \"pool.img\"\n\
             size = \"64M\"\n[[pool.volume]]\nname = \"v\"\nsize = \"8M\"\n",
        )
        .unwrap();
        let config = fabric_config::load(&path).unwrap_or_else(|e| panic!("{e}"));
        let rt = Runtime::start(&config, Some(&path)).expect("runtime starts");
        Host {
            rt: Arc::new(rt),
            dir,
        }
    }

    fn rt(&self) -> Arc<Runtime> {
        self.rt.clone()
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("run").join("v.sock")
    }

    fn export(&self) -> ExportConfig {
        ExportConfig {
            socket: self.socket(),
            migration_socket: None,
            queues: 1,
            queue_size: 256,
            read_only: false,
            limits: Default::default(),
        }
    }

    /// The size of `volume` in the pool, if it exists.
    fn size_of(rt: &Runtime, volume: &str) -> Option<u64> {
        lock_pool(rt.pool("p0").unwrap())
            .volume(volume)
            .ok()
            .map(|v| v.size)
    }

    /// The volumes exported now.
    fn exported(rt: &Runtime) -> Vec<String> {
        rt.with_state(|st| st.exports.iter().map(|e| e.volume.clone()).collect())
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        self.rt.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn kind<T: std::fmt::Debug>(r: Result<T>) -> ErrorKind {
    r.expect_err("refused").kind()
}

/// An export added while a delete is between its check and its act waits
/// for the delete and then finds no volume.
#[test]
fn export_add_cannot_slip_into_a_delete() {
    let h = Host::start("delete");
    let (rt, rt2, e) = (h.rt(), h.rt(), h.export());
    let (deleted, added) = race(
        || rt.delete_volume("p0", "v"),
        move || rt2.add_export("p0", "v", e),
    );
    deleted.unwrap();
    assert_eq!(kind(added), ErrorKind::NotFound);
    assert_eq!(Host::exported(&rt), Vec::<String>::new());
    assert_eq!(Host::size_of(&rt, "v"), None);
    assert!(!h.socket().exists());
}

/// An export added while a rename is in its window waits and then finds no
/// volume of the old name.
#[test]
fn export_add_cannot_slip_into_a_rename() {
    let h = Host::start("rename");
    let (rt, rt2, e) = (h.rt(), h.rt(), h.export());
    let (renamed, added) = race(
        || rt.rename_volume("p0", "v", "w"),
        move || rt2.add_export("p0", "v", e),
    );
    renamed.unwrap();
    assert_eq!(kind(added), ErrorKind::NotFound);
    assert_eq!(Host::exported(&rt), Vec::<String>::new());
    assert_eq!(Host::size_of(&rt, "w"), Some(8 * MIB));
}

/// An export added while a resize is in its window is served only after
/// the resize: the size it was exported with is the size the volume keeps.
#[test]
fn export_add_cannot_slip_into_a_resize() {
    let h = Host::start("resize");
    let (rt, rt2, e) = (h.rt(), h.rt(), h.export());
    let (resized, exported_at) = race(
        || rt.resize_volume("p0", "v", 16 * MIB, false),
        move || {
            rt2.add_export("p0", "v", e)
                .map(|()| Host::size_of(&rt2, "v"))
        },
    );
    resized.unwrap();
    assert_eq!(exported_at.unwrap(), Some(16 * MIB));
    assert_eq!(Host::exported(&rt), ["v"]);
    assert_eq!(Host::size_of(&rt, "v"), Some(16 * MIB));
}

/// A delete during an export's removal waits until the export has stopped
/// (its socket gone), so no frontend is still attached to what it deletes.
#[test]
fn delete_waits_for_the_export_to_stop() {
    let h = Host::start("unexport");
    let (rt, rt2) = (h.rt(), h.rt());
    rt.add_export("p0", "v", h.export()).unwrap();
    let socket = h.socket();
    assert!(socket.exists());
    let (removed, deleted) = race(
        || rt.remove_export("p0", "v"),
        move || rt2.delete_volume("p0", "v").map(|()| socket.exists()),
    );
    removed.unwrap();
    assert!(!deleted.unwrap(), "the socket was gone when the delete ran");
    assert_eq!(Host::exported(&rt), Vec::<String>::new());
    assert_eq!(Host::size_of(&rt, "v"), None);
}

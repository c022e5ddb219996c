//! The database goes away under load (issue 4): `rebound serve` runs as a real process, 8 LMTP clients push
//! unique messages and retry each one until it is answered 250 (as an MTA does), and in the middle of the
//! stream the database stops taking writes, for a while, then comes back:
//!
//! - a private Postgres (initdb into a temporary directory, its own port on 127.0.0.1) is stopped with
//!   `pg_ctl stop -m fast` and started again; the machine's shared Postgres is never touched;
//! - the SQLite database and its WAL are made immutable (`chattr +i`, which stops root too), then writable;
//! - the SQLite database sits on a small tmpfs that is shrunk to what it holds (disk full), then grown.
//!
//! In every case: clients get 451 4.3.0 while the database is away (never 250 for a message that was not
//! committed), the server does not exit, and it resumes by itself when the database returns: every message
//! ends up stored exactly once, and every acknowledged one was stored. Each scenario skips, saying why, when
//! the machine does not allow it (no initdb, no chattr, no mount).
//!
//! Knob: REBOUND_OUTAGE_MESSAGES (per client, default 100).

mod common;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::load::{Fleet, env_u64};
use common::{Immutable, Server, block_on, sqlite_url};

const CLIENTS: usize = 8;
/// Phases: before the outage, during it, after it.
const PHASES: [&str; 3] = ["before", "outage", "after"];
/// Messages acknowledged before the database is taken away.
const WARM: u64 = 80;
/// The outage lasts at least this long, and until the clients have seen a few 451s.
const OUTAGE: Duration = Duration::from_secs(3);
/// The whole scenario fails rather than hang past this.
const DEADLINE: Duration = Duration::from_secs(300);

/// Runs the fleet against a server on `url`, calls `take_away` once `WARM` messages are acknowledged,
/// `give_back` after the outage, checks the outcome and prints the figures per phase.
/// `wal_room`: the outage leaves the SQLite WAL room to commit in (a full disk does: the WAL file is
/// reused after each checkpoint, so commits go on until it must grow), and messages committed then are
/// rightly acknowledged; otherwise at most one message per client, committed just before, is.
fn outage(label: &str, dir: &Path, url: &str, wal_room: bool, take_away: impl FnOnce(), give_back: impl FnOnce()) {
    let per_client = env_u64("REBOUND_OUTAGE_MESSAGES", 100) as usize;
    let fleet = Fleet::new("outage", CLIENTS, per_client, PHASES.len(), Duration::from_secs(60));
    let mut server = Server::launch(dir, url, "", "", "warn,rebound::serve=info");
    *fleet.addr.lock().unwrap() = Some(server.addr);
    let start = Instant::now();
    let threads = fleet.start();
    let wait = |what: &str, done: &dyn Fn() -> bool| {
        while !done() {
            assert!(start.elapsed() < DEADLINE, "{label}: {what} not reached after {DEADLINE:?}; log:\n{}", server.log());
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    wait("warm-up", &|| fleet.counts(0).1 >= WARM);
    let stored_before = fleet.check_acknowledged(url, "before the outage");

    take_away();
    // The outage phase starts once the database is gone (stopping Postgres takes a while, and commits
    // finished meanwhile are rightly acknowledged).
    fleet.phase.store(1, Ordering::Relaxed);
    let outage_start = Instant::now();
    wait("451 answers during the outage", &|| outage_start.elapsed() >= OUTAGE && fleet.counts(1).2 >= CLIENTS as u64);
    fleet.phase.store(2, Ordering::Relaxed);
    give_back();
    let restored = Instant::now();
    wait("the end of the stream", &|| fleet.running.load(Ordering::Relaxed) == 0);
    for t in threads {
        t.join().unwrap();
    }
    assert!(server.wait(Duration::from_millis(100)).is_none(), "{label}: the server exited; log:\n{}", server.log());
    fleet.check_complete(url);

    let stored = common::load::stored(url).len();
    for (phase, name) in PHASES.iter().enumerate() {
        let (sent, acked, deferred) = fleet.counts(phase);
        eprintln!("db_outage ({label}) {name:>6}: sent {sent:>4}  acknowledged {acked:>4}  answered 4xx {deferred:>4}");
    }
    let (sent, acked, deferred) = fleet.totals();
    eprintln!(
        "db_outage ({label}): stored {stored_before} before the outage; outage {:.1} s; all {} messages stored once \
         {:.1} s after the database returned; in all {sent} sent, {acked} acknowledged, {deferred} answered 4xx, \
         {stored} stored",
        restored.duration_since(outage_start).as_secs_f64(),
        CLIENTS * per_client,
        restored.elapsed().as_secs_f64()
    );
    let (_, acked_outage, deferred_outage) = fleet.counts(1);
    assert!(deferred_outage > 0, "{label}: no client was answered 4xx during the outage");
    // Every acknowledged message is stored (check_complete above); messages committed just before the
    // outage may be answered 250 in it.
    if !wal_room {
        assert!(acked_outage <= CLIENTS as u64, "{label}: {acked_outage} messages acknowledged during the outage");
    }
    let log = server.log();
    assert!(log.contains("answering 451"), "{label}: the server did not log its 451s:\n{log}");
}

#[test]
fn sqlite_made_read_only_gives_451_and_service_resumes_by_itself() {
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_url(dir.path());
    // Probe first: chattr needs root on ext4/xfs.
    let probe = dir.path().join("probe");
    std::fs::write(&probe, b"").unwrap();
    if Immutable::set(vec![probe]).is_none() {
        eprintln!("skipping: chattr +i is not permitted here (needs root on ext4/xfs)");
        return;
    }
    let files = vec![dir.path().join("rebound.db"), dir.path().join("rebound.db-wal")];
    let guard = std::cell::RefCell::new(None);
    outage(
        "sqlite read-only",
        dir.path(),
        &url,
        false,
        || *guard.borrow_mut() = Some(Immutable::set(files).expect("chattr +i")),
        || drop(guard.borrow_mut().take()),
    );
    assert_eq!(integrity(&url), "ok");
}

/// A tmpfs mounted on a directory; unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Option<Tmpfs> {
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Tmpfs(dir.to_path_buf()))
    }

    /// Resize; false when refused (e.g. smaller than what it holds).
    fn resize(&self, size: &str) -> bool {
        Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Shrink to what it holds now plus a few pages (the database grows meanwhile: try a few times).
    fn fill_up(&self) {
        for slack in 1..=50 {
            if self.resize(&(self.used() + slack * 16 * 4096).to_string()) {
                return;
            }
        }
        panic!("cannot shrink the tmpfs to its contents");
    }

    /// Bytes in use.
    fn used(&self) -> u64 {
        let out = Command::new("df").args(["--output=used", "-B1"]).arg(&self.0).output().unwrap();
        String::from_utf8_lossy(&out.stdout).lines().nth(1).and_then(|l| l.trim().parse().ok()).expect("df output")
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn sqlite_on_a_full_disk_gives_451_and_service_resumes_by_itself() {
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let Some(fs) = Tmpfs::mount(&mnt, "256m") else {
        eprintln!("skipping: cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN)");
        return;
    };
    let url = sqlite_url(&mnt);
    outage(
        "sqlite disk full",
        &mnt,
        &url,
        true,
        || fs.fill_up(),
        || assert!(fs.resize("256m"), "cannot grow the tmpfs again"),
    );
    assert_eq!(integrity(&url), "ok");
}

fn integrity(url: &str) -> String {
    block_on(async {
        let pool = sqlx::SqlitePool::connect(url).await.unwrap();
        let v = sqlx::query_scalar("PRAGMA integrity_check").fetch_one(&pool).await.unwrap();
        pool.close().await;
        v
    })
}

/// A Postgres cluster of our own: initdb into a temporary directory, listening on a free port of 127.0.0.1
/// only. Run as the `postgres` user when we are root (Postgres refuses to run as root). Stopped and removed
/// when dropped.
struct PrivatePostgres {
    bin: PathBuf,
    data: PathBuf,
    port: u16,
    as_root: bool,
    _dir: tempfile::TempDir,
}

impl PrivatePostgres {
    /// `None`, with the reason printed, when there is no initdb or it cannot be run.
    fn start() -> Option<PrivatePostgres> {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .filter_map(|e| Some(e.ok()?.path().join("bin")))
            .filter(|b| b.join("initdb").exists())
            .max();
        let Some(bin) = bin else {
            eprintln!("skipping: no /usr/lib/postgresql/*/bin/initdb");
            return None;
        };
        let as_root = Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0\n"));
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        if as_root {
            // The postgres user must reach the data directory.
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
            std::fs::create_dir(&data).unwrap();
            let chown = Command::new("chown").args(["postgres:", data.to_str().unwrap()]).status();
            if !chown.is_ok_and(|s| s.success()) {
                eprintln!("skipping: running as root and there is no postgres user to run initdb as");
                return None;
            }
        }
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let pg = PrivatePostgres { bin, data, port, as_root, _dir: dir };
        let out = pg.run("initdb", &["-D", pg.data.to_str().unwrap(), "-A", "trust", "-U", "postgres", "--no-sync"]);
        if !out.status.success() {
            eprintln!("skipping: initdb failed: {}", String::from_utf8_lossy(&out.stderr));
            return None;
        }
        pg.pg_ctl(&["start"]);
        Some(pg)
    }

    /// Run a program of the Postgres bin directory (as postgres when we are root).
    fn run(&self, program: &str, args: &[&str]) -> std::process::Output {
        let path = self.bin.join(program);
        let mut cmd = if self.as_root {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        };
        cmd.args(args).current_dir("/").stdin(Stdio::null()).output().unwrap()
    }

    /// `pg_ctl start|stop`, waiting for it to finish.
    fn pg_ctl(&self, action: &[&str]) {
        let options = format!("-p {} -c listen_addresses=127.0.0.1 -k {}", self.port, self.data.display());
        let log = self.data.join("log").display().to_string();
        let data = self.data.display().to_string();
        let mut args = vec!["-D", &data, "-w", "-t", "60", "-l", &log, "-o", &options];
        args.extend_from_slice(action);
        let out = self.run("pg_ctl", &args);
        assert!(
            out.status.success(),
            "pg_ctl {action:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let data = self.data.display().to_string();
        let _ = self.run("pg_ctl", &["-D", &data, "-w", "-m", "immediate", "stop"]);
    }
}

#[test]
fn postgres_stopped_and_started_gives_451_and_service_resumes_by_itself() {
    let Some(pg) = PrivatePostgres::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    outage(
        "postgres stopped",
        dir.path(),
        &pg.url(),
        false,
        || pg.pg_ctl(&["-m", "fast", "stop"]),
        || pg.pg_ctl(&["start"]),
    );
}

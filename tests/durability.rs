//! Durability under kill -9 (issue 4): `rebound serve` runs as a real process, 8 LMTP client threads push
//! unique messages and retry each one until it is answered 250 (as an MTA does), and the server is killed
//! with SIGKILL at random moments (seeded RNG) and restarted on the same database, 10 times. After every kill
//! each message acknowledged so far must be in the database; at the end every message must be there exactly
//! once. SQLite always; Postgres too when REBOUND_TEST_POSTGRES_URL is set (a fresh schema).
//!
//! Knobs (environment): REBOUND_DURABILITY_SEED (default 4), REBOUND_DURABILITY_MESSAGES (per client,
//! default 250), REBOUND_DURABILITY_ROUNDS (default 10).

mod common;

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use common::load::{Fleet, env_u64};
use common::{Server, block_on};

const CLIENTS: usize = 8;
/// The whole test fails rather than hang past this.
const DEADLINE: Duration = Duration::from_secs(600);

/// The kill -9 loop against the database at `url`.
fn kill_rounds(dir: &Path, url: &str, label: &str) {
    let seed = env_u64("REBOUND_DURABILITY_SEED", 4);
    let per_client = env_u64("REBOUND_DURABILITY_MESSAGES", 250) as usize;
    let rounds = env_u64("REBOUND_DURABILITY_ROUNDS", 10) as usize;
    let mut rng = StdRng::seed_from_u64(seed);
    eprintln!("durability ({label}): seed {seed}, {CLIENTS} clients x {per_client} messages, {rounds} kill rounds");
    // One phase per round; the final drain is phase `rounds`.
    let fleet = Fleet::new("durability", CLIENTS, per_client, rounds + 1, Duration::from_secs(30));
    let start = Instant::now();
    let threads = fleet.start();
    // Quiet logs (debug logging would slow the server down), but the start-up line names the port.
    let launch = || Server::launch(dir, url, "", "", "warn,rebound::serve=info");

    let mut kills = 0;
    for round in 0..=rounds {
        let mut server = launch();
        *fleet.addr.lock().unwrap() = Some(server.addr);
        let last = round == rounds;
        if last {
            // Final round: no kill; let every client finish.
            if !fleet.wait_done(DEADLINE.saturating_sub(start.elapsed())) {
                panic!("durability ({label}): clients not done after {DEADLINE:?}; log:\n{}", server.log());
            }
        } else {
            std::thread::sleep(Duration::from_millis(rng.gen_range(150..1200)));
        }
        *fleet.addr.lock().unwrap() = None;
        server.signal("KILL");
        let status = server.wait(Duration::from_secs(10)).expect("server did not die on SIGKILL");
        if !last {
            kills += 1;
            assert!(status.code().is_none(), "the server exited by itself before the kill: {status:?}\n{}", server.log());
        }
        fleet.phase.store(round + 1, Ordering::Relaxed);
        let rows = fleet.check_acknowledged(url, &format!("after round {round}"));
        // Committed but killed before the 250 went out: the client resends, and gets 250 for the copy.
        let unanswered = rows - fleet.acknowledged.lock().unwrap().len();
        let (sent, acked, deferred) = fleet.counts(round);
        eprintln!(
            "durability ({label}) round {round:>2}{}: sent {sent:>4}  acknowledged {acked:>4}  deferred {deferred:>3}  \
             stored (total) {rows:>5}  stored but unanswered {unanswered:>2}  [{:.1}s]",
            if last { " (drain)" } else { "" },
            start.elapsed().as_secs_f64()
        );
    }
    for t in threads {
        t.join().unwrap();
    }
    // Every message, acknowledged or not, was retried until stored, and is there exactly once.
    fleet.check_complete(url);
    let total = CLIENTS * per_client;
    if url.starts_with("sqlite:") {
        let check: String = block_on(async {
            let pool = sqlx::SqlitePool::connect(url).await.unwrap();
            let v = sqlx::query_scalar("PRAGMA integrity_check").fetch_one(&pool).await.unwrap();
            pool.close().await;
            v
        });
        assert_eq!(check, "ok", "SQLite integrity check after {kills} kills");
    }
    let (sent, _, deferred) = fleet.totals();
    eprintln!(
        "durability ({label}): {kills} kills, {total} messages, {sent} data transfers ({} resent), {deferred} \
         answered 4xx, {total} acknowledged, {total} stored once each, {:.1}s",
        sent as usize - total,
        start.elapsed().as_secs_f64()
    );
}

#[test]
fn every_acknowledged_message_survives_kill_9_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = common::sqlite_url(dir.path());
    kill_rounds(dir.path(), &url, "sqlite");
}

#[test]
fn every_acknowledged_message_survives_kill_9_on_postgres() {
    let Some(schema) = common::postgres_schema("durability") else { return };
    let dir = tempfile::tempdir().unwrap();
    kill_rounds(dir.path(), &schema.url, "postgres");
}

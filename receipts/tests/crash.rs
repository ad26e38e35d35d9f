//! Crash suite: a child process (this test binary, re-executed) appends from
//! several threads and reports each acknowledgement on a pipe; the parent
//! SIGKILLs it at a random moment. After every kill the file's complete lines
//! verify and hold every acknowledged receipt; the next child recovers the
//! file (cutting a torn line) and continues the same chain.

mod support;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use rand::Rng;
use receipts::{LineVerifier, LogOptions, ReceiptLog, UnverifiedChain};
use support::*;

const CHILD_ENV: &str = "RECEIPTS_CRASH_CHILD_PATH";
const REPETITIONS: usize = 60;

/// The child's body, run by the parent below in a process of its own (with
/// `--ignored`). Not a test by itself: ignored, so a plain run never counts
/// it as passed.
#[test]
#[ignore = "the crash suite's child process: sigkill_at_random_moments_loses_no_acknowledged_receipt runs it"]
fn crash_child() {
    let path = std::env::var_os(CHILD_ENV).unwrap_or_else(|| {
        panic!(
            "crash_child is the crash suite's child process: it needs {CHILD_ENV} from \
             sigkill_at_random_moments_loses_no_acknowledged_receipt, which runs it"
        )
    });
    let (log, _) = ReceiptLog::open_existing(Path::new(&path), fixed_key(), LogOptions::default())
        .expect("child: recover");
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let log = log.clone();
            std::thread::spawn(move || {
                for i in 0.. {
                    let a = log
                        .append(decision_entry(t * 1_000_000 + i))
                        .expect("append");
                    // Acknowledged means durable: only now tell the parent.
                    let mut out = std::io::stdout().lock();
                    writeln!(out, "ack {} {}", a.seq, hex::encode(a.hash)).expect("pipe");
                    out.flush().expect("pipe");
                }
            })
        })
        .collect();
    // And receipts nobody waits for (a call's usage), queued to ride with
    // the next signing turn: never acknowledged to the parent.
    let deferring = std::thread::spawn(move || {
        for i in 0.. {
            let _ = log.submit_deferred(decision_entry(9_000_000 + i));
            std::thread::sleep(Duration::from_micros(500));
        }
    });
    for t in threads {
        let _ = t.join();
    }
    let _ = deferring.join();
}

/// When to kill: a delay from spawn (may land in startup or recovery), or a
/// delay after the child's first acknowledgement (lands mid-append).
enum KillAt {
    AfterSpawn(Duration),
    AfterFirstAck(Duration),
}

fn run_child_and_kill(path: &Path, at: KillAt) -> BTreeMap<u64, String> {
    let mut child = Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "crash_child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, path)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn child");
    let stdout = child.stdout.take().expect("piped");
    let (first_ack, first_ack_rx) = std::sync::mpsc::channel::<()>();
    let reader = std::thread::spawn(move || {
        let mut acks = BTreeMap::new();
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            // A line cut by the kill has no hash of full length: ignore it.
            let mut parts = line.split(' ');
            if let (Some("ack"), Some(seq), Some(hash)) = (parts.next(), parts.next(), parts.next())
            {
                if let (Ok(seq), 64) = (seq.parse::<u64>(), hash.len()) {
                    acks.insert(seq, hash.to_owned());
                    let _ = first_ack.send(());
                }
            }
        }
        acks
    });
    match at {
        KillAt::AfterSpawn(after) => std::thread::sleep(after),
        KillAt::AfterFirstAck(after) => {
            // Startup speed varies wildly on a loaded machine; wait for it.
            let _ = first_ack_rx.recv_timeout(Duration::from_secs(60));
            std::thread::sleep(after);
        }
    }
    child.kill().expect("SIGKILL"); // std's kill sends SIGKILL
    child.wait().expect("reap");
    reader.join().expect("reader")
}

/// Verifies the complete lines of a (possibly torn, unended) chain and
/// returns their hashes by seq, and whether a torn tail was present. The
/// file is preallocated: its NUL tail is the unwritten end, not a torn line.
fn complete_lines(path: &PathBuf) -> (Vec<String>, bool) {
    let file = std::fs::read(path).expect("read chain");
    let bytes = receipts::written_part(&file);
    assert!(
        file[bytes.len()..].iter().all(|&b| b == 0),
        "only NULs after the first NUL (a killed process loses no written page)"
    );
    let complete = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let mut v = LineVerifier::new(fixed_key().verifying_key());
    let mut hashes = Vec::new();
    for line in bytes[..complete.saturating_sub(1)].split(|&b| b == b'\n') {
        let r = v.push(line).expect("every complete line verifies");
        hashes.push(hex::encode(r.hash));
    }
    (hashes, complete < bytes.len())
}

#[test]
fn sigkill_at_random_moments_loses_no_acknowledged_receipt() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("receipts.jsonl");
    drop(ReceiptLog::create(&path, fixed_key(), session_start("crash")).expect("create"));
    let mut rng = rand::thread_rng();
    let mut all_acks: BTreeMap<u64, String> = BTreeMap::new();
    let mut torn_seen = 0;
    let mut kills_with_acks = 0;
    for rep in 0..REPETITIONS {
        let at = if rep % 2 == 0 {
            KillAt::AfterFirstAck(Duration::from_micros(rng.gen_range(0..60_000)))
        } else {
            KillAt::AfterSpawn(Duration::from_micros(rng.gen_range(0..300_000)))
        };
        let acks = run_child_and_kill(&path, at);
        if !acks.is_empty() {
            kills_with_acks += 1;
        }
        let (hashes, torn) = complete_lines(&path);
        torn_seen += usize::from(torn);
        for (seq, hash) in &acks {
            let on_disk = hashes.get(*seq as usize);
            assert_eq!(
                on_disk,
                Some(hash),
                "rep {rep}: acknowledged receipt {seq} missing or different after SIGKILL"
            );
        }
        // An earlier run's acks must survive later recoveries too.
        for (seq, hash) in &all_acks {
            assert_eq!(
                hashes.get(*seq as usize),
                Some(hash),
                "rep {rep}: lost {seq}"
            );
        }
        all_acks.extend(acks);
    }
    assert!(
        kills_with_acks >= REPETITIONS / 2,
        "children rarely got to append ({kills_with_acks}/{REPETITIONS}): the test is not testing"
    );
    // Close the chain and verify it as an auditor would.
    let (log, _) = ReceiptLog::open_existing(&path, fixed_key(), LogOptions::default())
        .expect("final recover");
    log.finish().expect("finish");
    let chain = UnverifiedChain::from_bytes(std::fs::read(&path).expect("read"))
        .verify(&fixed_key().verifying_key())
        .expect("recovered chain verifies");
    for (seq, hash) in &all_acks {
        assert_eq!(&hex::encode(chain.receipts[*seq as usize].hash), hash);
    }
    let bytes = std::fs::read(&path).expect("read");
    let unsigned = lines(&bytes).iter().filter(|l| !is_signed(l)).count();
    assert!(
        unsigned > 0,
        "no line rode with another's signature: the suite did not test groups"
    );
    eprintln!(
        "crash suite: {REPETITIONS} kills, {} acknowledged receipts kept, {} lines ({unsigned} covered by a later line's signature), {torn_seen} torn tails recovered",
        all_acks.len(),
        chain.receipts.len()
    );
}

//! The hard state's order against the log, seen from the journal: what a
//! crash could leave is what the journal has made durable (its own copy of
//! the hard state is the newest durable record), so each case reads that
//! copy on the shard's reactor at the moment the contract is about.

use super::cluster::machine::ClusterMachine;
use super::cluster::ClusterTypes;
use super::log::{HardState, RaftLog};
use super::shard::{op_of, Queue};
use super::types::{LeaderId, LogId, Payload, Vote};
use openraft::storage::{
    IOFlushed, RaftLogStorage, RaftLogStorageExt, RaftSnapshotBuilder, RaftStateMachine,
};
use openraft::{EntryPayload, RaftLogReader};

type Log = RaftLog<ClusterTypes, ClusterMachine>;
type Entry = openraft::Entry<LeaderId, Payload<ClusterTypes>>;

const CLUSTER: uuid::Uuid = uuid::Uuid::from_u128(0x5eed_cafe_0000_4000_8000_0000_0000_0016);

fn log_id(term: u64, index: u64) -> LogId {
    LogId::new(LeaderId { term, node_id: 1 }, index)
}

fn blank(term: u64, index: u64) -> Entry {
    Entry {
        log_id: log_id(term, index),
        payload: EntryPayload::Blank,
    }
}

/// A node's shard in a fresh directory on the real disk (O_DIRECT).
fn open(dir: &std::path::Path) -> (Log, super::RaftMachine<ClusterTypes, ClusterMachine>) {
    let stores = super::open::<ClusterTypes, ClusterMachine>(
        dir,
        CLUSTER,
        1,
        super::Creation::IfMissing,
        Box::new(|b| b.segment_bytes(4 << 20).slot_count(1 << 10)),
    )
    .expect("open the raft shard");
    (stores.log, stores.machine)
}

fn temp_dir() -> tempfile::TempDir {
    tempfile::tempdir_in(concat!(env!("CARGO_MANIFEST_DIR"), "/../target")).expect("temp dir")
}

/// The hard state the journal has made durable.
async fn durable_hard_state(log: &Log) -> HardState {
    let bytes = log
        .thread()
        .call(|shard| Box::pin(async move { shard.journal.hard_state() }))
        .await
        .expect("the reactor runs");
    if bytes.is_empty() {
        HardState::default()
    } else {
        HardState::decode(&bytes).expect("the hard state decodes")
    }
}

/// openraft answers a vote request once `save_vote` returns, so the vote
/// must be durable then. An append posted just before it (openraft does
/// not wait for its flush) takes the changed hard state into its own
/// write; the vote's call must still wait for that write. The reactor is
/// held on a gate job until the vote's job is queued, so the append's job
/// runs after the vote changed the hard state; the durable copy is read by
/// a job queued right behind the vote's, so it runs as soon as the vote's
/// call is done, before a write that was not waited for could finish.
/// (Before the fix, the vote's call found nothing left to queue and
/// returned at once.)
#[test]
fn a_vote_is_durable_when_its_save_returns_even_if_an_append_took_it() {
    let root = temp_dir();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let (mut log, _machine) = open(&root.path().join("node"));
        for round in 0..20u64 {
            let vote = Vote::new(round + 1, 1);
            let (open_gate, gate) = futures_channel::oneshot::channel::<()>();
            log.thread()
                .post(move |_| {
                    Box::pin(async move {
                        let _ = gate.await;
                    })
                })
                .await
                .expect("the reactor runs");
            log.append([blank(round + 1, round)], IOFlushed::noop())
                .await
                .expect("append");
            // Polled in order: the vote's job is queued first, then the
            // gate opens and the read is queued behind it.
            let probe = log.clone();
            let (saved, durable) = futures_lite::future::zip(log.save_vote(&vote), async move {
                open_gate.send(()).expect("the gate job waits");
                durable_hard_state(&probe).await
            })
            .await;
            saved.expect("save the vote");
            assert_eq!(
                durable.vote,
                Some(vote),
                "round {round}: the vote was not durable when save_vote returned"
            );
        }
    });
}

/// openraft saves the committed id as soon as the entries it covers are
/// submitted, before they are written; the record that carries it must not
/// reach the disk ahead of them, or a crash could leave a committed id
/// above the log, which openraft cannot start from. A record queued before
/// the entries keeps the committed id queued last; the one queued after
/// them carries the new one.
#[test]
fn a_committed_id_is_never_written_ahead_of_the_entries_it_covers() {
    let root = temp_dir();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let (mut log, _machine) = open(&root.path().join("node"));
        log.blocking_append((0..3).map(|i| blank(1, i)))
            .await
            .expect("append");
        log.save_committed(Some(log_id(1, 2)))
            .await
            .expect("save committed");
        // Written with the next entry, which is queued before it.
        log.blocking_append([blank(1, 3)]).await.expect("append");
        assert_eq!(durable_hard_state(&log).await.committed, Some(log_id(1, 2)));
        // A vote (a record written at once) while the committed id is
        // ahead of every queued entry: the record keeps the one queued
        // before, and the change stays queued for a later record.
        log.save_committed(Some(log_id(1, 9)))
            .await
            .expect("save committed");
        log.save_vote(&Vote::new(1, 1))
            .await
            .expect("save the vote");
        let durable = durable_hard_state(&log).await;
        assert_eq!(durable.vote, Some(Vote::new(1, 1)));
        assert_eq!(
            durable.committed,
            Some(log_id(1, 2)),
            "a committed id above the log was written"
        );
        // Once the entries are queued, the next record carries it.
        log.blocking_append((4..10).map(|i| blank(1, i)))
            .await
            .expect("append");
        let durable = durable_hard_state(&log).await;
        assert_eq!(durable.committed, Some(log_id(1, 9)));
        // And a reopen starts from a committed id inside its log.
        drop(log);
        drop(_machine);
        let (mut log, _machine) = open(&root.path().join("node"));
        assert_eq!(
            log.read_committed().await.expect("read"),
            Some(log_id(1, 9))
        );
    });
}

/// The queueing rule itself: with nothing queued, a committed id is held
/// back (none was queued before) and the change stays queued; a purged id
/// at or above it lets it through (a purge after a snapshot install: the
/// snapshot covers it).
#[test]
fn a_record_holds_a_committed_id_only_within_what_is_queued_or_purged() {
    let root = temp_dir();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let (mut log, _machine) = open(&root.path().join("node"));
        log.save_committed(Some(log_id(1, 4)))
            .await
            .expect("save committed");
        let still_unqueued = log
            .thread()
            .call(|shard| {
                Box::pin(async move {
                    let queued: Option<ringstore_journal::QueuedHardState> =
                        shard.queue_hard_state(Queue::Always).await?;
                    let unqueued = shard.hard_state.lock().map(|c| c.unqueued).unwrap_or(false);
                    if let Some(queued) = queued {
                        queued.durable().await?;
                    }
                    Ok::<bool, ringstore_journal::Error>(unqueued)
                })
            })
            .await
            .expect("the reactor runs")
            .expect("queue the hard state");
        assert!(still_unqueued, "the held-back change stays queued");
        assert_eq!(durable_hard_state(&log).await.committed, None);
        // A purged id above it (the purge's record, written at once).
        log.set_purged_only(log_id(1, 9))
            .await
            .expect("purge's step");
        let durable = durable_hard_state(&log).await;
        assert_eq!(durable.purged, Some(log_id(1, 9)));
        assert_eq!(durable.committed, Some(log_id(1, 4)));
    });
}

/// A node in `dir` whose log ends at index 3, with a snapshot up to index
/// 9 (a leader's, as one installed on a lagging follower) and a purge up
/// to 9 cut short after its first step (the purged id, durable), closed.
async fn purge_cut_after_its_first_step(dir: &std::path::Path) {
    let (mut log, mut machine) = open(dir);
    log.blocking_append((0..4).map(|i| blank(1, i)))
        .await
        .expect("append");
    machine
        .apply(futures_lite::stream::iter(
            (0..10).map(|i| Ok((blank(1, i), None))),
        ))
        .await
        .expect("apply");
    machine
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .expect("snapshot");
    log.set_purged_only(log_id(1, 9)).await.expect("first step");
}

/// A purge is two steps, the purged id and then the watermark; a crash
/// between them (here: the first step alone, then a close) must not leave
/// a log openraft refuses ("inverted log order": its last id below the
/// purged one). The open finishes the purge.
#[test]
fn a_purge_cut_short_after_its_first_step_is_finished_by_the_open() {
    let root = temp_dir();
    let dir = root.path().join("node");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        purge_cut_after_its_first_step(&dir).await;
        let (mut log, _machine) = open(&dir);
        let state = log.get_log_state().await.expect("log state");
        assert_eq!(state.last_purged_log_id, Some(log_id(1, 9)));
        assert_eq!(state.last_log_id, Some(log_id(1, 9)));
        let read = log.try_get_log_entries(0..20).await.expect("read");
        assert!(
            read.is_empty(),
            "entries at or below the purged id: {read:?}"
        );
        // The log goes on above it.
        log.blocking_append([blank(2, 10)]).await.expect("append");
        let state = log.get_log_state().await.expect("log state");
        assert_eq!(state.last_log_id, Some(log_id(2, 10)));
    });
}

/// The open finishes an interrupted purge only once the snapshot it loads
/// covers the purged id: with that snapshot gone (damaged and passed over,
/// or deleted), it refuses, and the entries the older state would need are
/// still in the journal.
#[test]
fn an_interrupted_purge_is_not_finished_past_the_snapshot_that_loads() {
    let root = temp_dir();
    let dir = root.path().join("node");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        purge_cut_after_its_first_step(&dir).await;
        for entry in std::fs::read_dir(dir.join("snapshots")).expect("list") {
            std::fs::remove_file(entry.expect("entry").path()).expect("remove the snapshot");
        }
        let refused = super::open::<ClusterTypes, ClusterMachine>(
            &dir,
            CLUSTER,
            1,
            super::Creation::IfMissing,
            Box::new(|b| b.segment_bytes(4 << 20).slot_count(1 << 10)),
        );
        assert!(
            refused.is_err(),
            "opened without the snapshot that covers the purge"
        );
    });
    // `ringstore snapshot verify` refuses it too, by the same rule.
    let verified = crate::snapshot::inspect::inspect_shard(
        &dir,
        crate::snapshot::inspect::Check::Full,
        &mut |_| {},
    )
    .expect("inspect");
    assert!(
        matches!(
            verified.refusal,
            Some(crate::Error::SnapshotBehindJournal { .. })
        ),
        "verify passed a node its open refuses: {:?}",
        verified.refusal
    );
    // The journal still holds the entries, below a watermark left as it was.
    let journal_dir = dir.join("journal");
    let (watermark, present) = glommio::LocalExecutorBuilder::default()
        .spawn(move || async move {
            let journal = ringstore_journal::Journal::builder(&journal_dir)
                .segment_bytes(4 << 20)
                .slot_count(1 << 10)
                .open()
                .await
                .expect("open the journal");
            let mut present = 0;
            for op in 1..=4 {
                present += u64::from(journal.read(op).await.expect("read").is_some());
            }
            let watermark = journal.watermark();
            journal.close().await.expect("close");
            (watermark, present)
        })
        .expect("executor")
        .join()
        .expect("the executor ran");
    assert_eq!((watermark, present), (0, 4));
}

/// What a crash of the node in `dir` would leave now, copied to `to`: the
/// files as they are on disk (the journal writes with O_DIRECT, and
/// nothing is in flight between two calls of a test).
fn crash_image(dir: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).expect("create the image's directory");
    for entry in std::fs::read_dir(dir).expect("list") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            crash_image(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy a file");
        }
    }
}

/// Damages the first entry header of the journal's last write in node
/// directory `dir`: recovery cuts that write (nothing after it vouches for
/// it), as it cuts one torn by a crash.
fn damage_last_write(dir: &std::path::Path) {
    let journal_dir = dir.join("journal");
    let (path, offset) = ringstore_journal::inspect::last_write(&journal_dir)
        .expect("scan the journal")
        .expect("the journal has a write");
    let mut bytes = std::fs::read(&path).expect("read the segment");
    bytes[offset as usize + 40] ^= 0xff;
    std::fs::write(&path, bytes).expect("write the segment");
}

/// A node's durable hard state, read on its reactor, and whether it
/// awaits repair.
async fn awaiting(log: &Log) -> Option<u64> {
    log.awaiting_repair().await.expect("the reactor runs")
}

/// A node whose journal's last write holds its vote for term 3 alone
/// (entries of terms 1 and 2 and a vote for term 2 before it), as a crash
/// leaves it in `crashed`, that write damaged: its open cuts the vote's
/// record.
fn cut_after_a_vote(
    runtime: &tokio::runtime::Runtime,
    root: &std::path::Path,
    crashed: &std::path::Path,
) {
    let dir = root.join("node");
    runtime.block_on(async {
        let (mut log, _machine) = open(&dir);
        log.blocking_append((0..4).map(|i| blank(1, i)))
            .await
            .expect("append");
        log.save_vote(&Vote::new(2, 2)).await.expect("vote 2");
        log.blocking_append((4..8).map(|i| blank(2, i)))
            .await
            .expect("append");
        log.save_vote(&Vote::new(3, 3)).await.expect("vote 3");
        assert_eq!(awaiting(&log).await, None);
        crash_image(&dir, crashed);
    });
    damage_last_write(crashed);
}

/// A cut of the journal's tail may take entries the node acknowledged, and
/// records of its hard state. Its vote must outlive the cut (a vote lost
/// so would let it vote twice in a term): a vote is copied into the
/// journal's superblock before it is granted. The open that cut the tail
/// records durably (before the cut itself is recorded) that the node
/// awaits repair below the highest term it knows; a second cut keeps it; a
/// committed id of a later term, written after the entries it covers,
/// ends the repair, with no other write needed.
#[test]
fn a_vote_outlives_a_cut_tail_and_the_node_awaits_repair_until_a_later_term_commits() {
    let root = temp_dir();
    let crashed = root.path().join("crashed");
    let crashed_again = root.path().join("crashed-again");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    cut_after_a_vote(&runtime, root.path(), &crashed);
    runtime.block_on(async {
        let (mut log, _machine) = open(&crashed);
        assert_eq!(
            log.read_vote().await.expect("vote"),
            Some(Vote::new(3, 3)),
            "the vote the cut write held is lost"
        );
        assert_eq!(awaiting(&log).await, Some(3));
        let state = log.get_log_state().await.expect("log state");
        assert_eq!(state.last_log_id, Some(log_id(2, 7)));
        // Another write, then a crash that cuts it too: that open marks the
        // node again.
        log.blocking_append([blank(2, 8)]).await.expect("append");
        crash_image(&crashed, &crashed_again);
    });
    damage_last_write(&crashed_again);
    runtime.block_on(async {
        let (mut log, _machine) = open(&crashed_again);
        assert_eq!(
            awaiting(&log).await,
            Some(3),
            "a second cut forgot the repair"
        );
        let state = log.get_log_state().await.expect("log state");
        assert_eq!(state.last_log_id, Some(log_id(2, 7)), "the second cut");
        // Entries of term 3, committed: not yet a later term.
        log.blocking_append([blank(3, 8)]).await.expect("append");
        log.save_committed(Some(log_id(3, 8)))
            .await
            .expect("committed");
        log.blocking_append([blank(3, 9)]).await.expect("append");
        assert_eq!(awaiting(&log).await, Some(3));
        // Term 4's first entry committed: the record of it ends the repair,
        // written at once (no other write need come: an idle cluster's
        // commit arrives with a heartbeat).
        log.blocking_append([blank(4, 10)]).await.expect("append");
        log.save_committed(Some(log_id(4, 10)))
            .await
            .expect("committed");
        let started = std::time::Instant::now();
        while awaiting(&log).await.is_some() {
            assert!(
                started.elapsed() < std::time::Duration::from_secs(5),
                "the repair did not end without another write"
            );
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        // Repaired, a committed id rides with the next write again.
        log.blocking_append([blank(4, 11)]).await.expect("append");
        let records_before = log.journal_stats().await.expect("stats").hard_states;
        log.save_committed(Some(log_id(4, 11)))
            .await
            .expect("committed");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert_eq!(
            log.journal_stats().await.expect("stats").hard_states,
            records_before,
            "a committed id after the repair got a write of its own"
        );
        let closed = log.closed();
        drop((log, _machine));
        closed.await;
        let (log, _machine) = open(&crashed_again);
        assert_eq!(awaiting(&log).await, None);
    });
}

/// The repair ends with the record that writes a later term's committed
/// id, not with one that holds it back (its entries not queued before it).
#[test]
fn a_repair_ends_only_with_a_record_of_a_later_terms_committed_id() {
    let state = HardState {
        vote: Some(Vote::new(4, 1)),
        committed: Some(log_id(4, 10)),
        purged: None,
        awaiting_repair: Some(3),
    };
    let bytes = state.encode().expect("encode");
    let decoded = |bytes: &[u8]| HardState::decode(bytes).expect("decode");
    // Entry 10 not queued yet: the record keeps the committed id queued
    // before (of term 3) and the repair.
    let held = super::log::record_after(&bytes, op_of(9), Some(log_id(3, 8)));
    assert!(!held.whole);
    assert_eq!(decoded(&held.bytes).committed, Some(log_id(3, 8)));
    assert_eq!(decoded(&held.bytes).awaiting_repair, Some(3));
    // Entry 10 queued: the record ends the repair.
    let written = super::log::record_after(&bytes, op_of(10), Some(log_id(3, 8)));
    assert!(written.whole);
    assert_eq!(decoded(&written.bytes).committed, Some(log_id(4, 10)));
    assert_eq!(decoded(&written.bytes).awaiting_repair, None);
    // A committed id of the term awaited below does not end it.
    let same_term = HardState {
        committed: Some(log_id(3, 9)),
        ..state
    };
    let record = super::log::record_after(
        &same_term.encode().expect("encode"),
        op_of(10),
        Some(log_id(3, 8)),
    );
    assert_eq!(decoded(&record.bytes).awaiting_repair, Some(3));
}

/// An operator may waive a repair (every node of a cluster lost power at
/// once and awaits it): durable, and the node no longer awaits it.
#[test]
fn a_waived_repair_stays_waived() {
    let root = temp_dir();
    let crashed = root.path().join("crashed");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    cut_after_a_vote(&runtime, root.path(), &crashed);
    runtime.block_on(async {
        let (log, _machine) = open(&crashed);
        assert_eq!(awaiting(&log).await, Some(3));
        log.waive_repair().await.expect("waive");
        assert_eq!(awaiting(&log).await, None);
        let closed = log.closed();
        drop((log, _machine));
        closed.await;
        let (log, _machine) = open(&crashed);
        assert_eq!(awaiting(&log).await, None);
    });
}

/// What the open keeps after a cut: the mark below the highest term the
/// hard state names, and a committed id no higher than the purged one (the
/// superblock's copy, a vote's, can outlive the entries it covered, and
/// the entries at its index may be of another term after the cut), unless
/// the purged id covers it. A hard state that does not decode is kept as
/// it is.
#[test]
fn the_open_after_a_cut_marks_the_node_and_lowers_the_committed_id_to_the_purged_one() {
    let mark = super::shard::awaiting_repair_after_cut;
    let state = HardState {
        vote: Some(Vote::new(5, 2)),
        committed: Some(log_id(4, 9)),
        purged: Some(log_id(3, 4)),
        awaiting_repair: None,
    };
    let bytes = state.encode().expect("encode");
    // The log still holds index 9 (op 10), but perhaps not the committed
    // entry: a cut that took a truncation record brings back the entries
    // it discarded, of an older term, at the same indexes, and openraft
    // re-applies up to the committed id by index. Down to the purged id.
    let kept = HardState::decode(&mark(&bytes, op_of(9))).expect("decode");
    assert_eq!(kept.awaiting_repair, Some(5));
    assert_eq!(kept.committed, Some(log_id(3, 4)));
    // The cut took index 9: down to the purged id.
    let cut = HardState::decode(&mark(&bytes, op_of(8))).expect("decode");
    assert_eq!(cut.awaiting_repair, Some(5));
    assert_eq!(cut.committed, Some(log_id(3, 4)));
    assert_eq!(cut.vote, Some(Vote::new(5, 2)));
    // A purged id at or above it covers it.
    let covered = HardState {
        purged: Some(log_id(4, 9)),
        ..state.clone()
    };
    let after =
        HardState::decode(&mark(&covered.encode().expect("encode"), op_of(2))).expect("decode");
    assert_eq!(after.committed, Some(log_id(4, 9)));
    // Marked again: the larger term holds.
    let again = HardState::decode(&mark(&mark(&bytes, op_of(9)), op_of(9))).expect("decode");
    assert_eq!(again.awaiting_repair, Some(5));
    // An empty hard state is marked below term 0; bytes that do not decode
    // are left as they are.
    assert_eq!(
        HardState::decode(&mark(&[], 0))
            .expect("decode")
            .awaiting_repair,
        Some(0)
    );
    assert_eq!(mark(&[0xff, 0xff], 3), vec![0xff, 0xff]);
}

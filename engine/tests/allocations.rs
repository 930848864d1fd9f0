//! Counts the heap allocations a submitted command costs the engine (not
//! the command itself, which its caller builds): the shard encodes it into
//! a buffer kept between submits and the broker machine looks its topic
//! and group up by borrowed keys, so a commit-offset command allocates
//! nothing of its own; a group commit's few allocations are shared by the
//! commands in it.
//!
//! Counted by a global allocator that counts per thread, on the reactor
//! thread that runs the shard.
#[path = "../../journal/tests/support/counting_alloc.rs"]
mod counting_alloc;

use counting_alloc::{allocations, Counting};
use ringstore::broker::{Command, GroupCommand, Metadata, StreamCommand, TopicCommand};
use ringstore::{CheckpointPolicy, Shard};
use ringstore_journal::storage::MemStorage;

#[global_allocator]
static COUNTING: Counting = Counting;

/// Tasks submitting at once.
const TASKS: usize = 32;
/// Commands each task submits in a measured run.
const ROUNDS: usize = 50;
/// Partitions of the topic the commands commit offsets to.
const PARTITIONS: u32 = 8;
/// Allocations a commit-offset command may cost the engine, per-batch
/// costs spread over the commands. Measured: 0.06, the in-memory disk's
/// two per write shared by a group commit's commands (the journal's own
/// per-write task, completion and ticket are gone); 0.19 before that, and
/// 7.15 before the encode buffer was kept between submits (2 per command)
/// and the broker's maps were searched by borrowed keys (5: the topic's
/// and the group's owned keys, built for each lookup).
const ALLOCATIONS_PER_COMMAND_MAX: f64 = 0.15;

fn commit_offset(task: usize, offset: u64) -> Command {
    Command::Group(GroupCommand::CommitOffset {
        stream: "s".into(),
        topic: "t".into(),
        group: "g".into(),
        partition: task as u32 % PARTITIONS,
        offset,
    })
}

/// Allocations per command while every task submits [`ROUNDS`] commands,
/// built before counting starts.
async fn allocations_per_command(shard: &Shard<Metadata, MemStorage>, first_offset: u64) -> f64 {
    let mut running = Vec::with_capacity(TASKS);
    for task in 0..TASKS {
        let shard = shard.clone();
        let commands: Vec<Command> = (0..ROUNDS as u64)
            .map(|round| commit_offset(task, first_offset + round))
            .collect();
        running.push(glommio::spawn_local(async move {
            for command in commands {
                shard.submit(command).await.unwrap().unwrap();
            }
        }));
    }
    // The tasks and their commands exist but nothing ran yet.
    let before = allocations();
    for task in running.iter_mut() {
        task.await;
    }
    (allocations() - before) as f64 / (TASKS * ROUNDS) as f64
}

#[test]
fn a_submitted_command_costs_the_engine_few_allocations() {
    let executor = glommio::LocalExecutorBuilder::default()
        .make()
        .expect("an executor");
    executor.run(async {
        let shard = Shard::<Metadata>::builder("/mem/shard")
            .storage(MemStorage::new())
            .journal(|j| j.slot_count(1 << 16).segment_bytes(64 << 20))
            .checkpoint_policy(CheckpointPolicy {
                automatic: false,
                ..CheckpointPolicy::default()
            })
            .open()
            .await
            .expect("open the shard");
        for command in [
            Command::Stream(StreamCommand::Create { name: "s".into() }),
            Command::Topic(TopicCommand::Create {
                stream: "s".into(),
                name: "t".into(),
                partitions: PARTITIONS,
                config: Default::default(),
            }),
            Command::Group(GroupCommand::Create {
                stream: "s".into(),
                topic: "t".into(),
                name: "g".into(),
            }),
        ] {
            shard.submit(command).await.unwrap().unwrap();
        }
        // Warm up: kept buffers grow to the largest batch.
        allocations_per_command(&shard, 0).await;
        let per_command = allocations_per_command(&shard, 1_000).await;
        println!("allocations per submitted command: {per_command:.2}");
        assert!(
            per_command <= ALLOCATIONS_PER_COMMAND_MAX,
            "a command costs the engine {per_command:.2} allocations (at most \
             {ALLOCATIONS_PER_COMMAND_MAX} expected)"
        );
        shard.close().await.expect("close");
    });
}

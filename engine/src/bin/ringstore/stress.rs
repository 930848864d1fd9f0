//! `ringstore stress` and `ringstore check`: the kill-anywhere durability
//! check a person can run by hand.
//!
//! `stress` writes commands across every shard until stopped and appends
//! each command's id to the ack log only after the command is acknowledged
//! (durable and applied). `check` reopens the data directory and confirms
//! every id in the log is there with the right content. Killing `stress`
//! with SIGKILL at any moment and then running `check` must always pass.
//!
//! # What an id is
//!
//! Id `i` is the committed offset `content(i)` of partition `i % 65536` of
//! consumer group `g<i / 65536>` (a "block") on topic `t` of stream
//! `stress-<block % 16>`. Every id has its own slot, so nothing a later
//! command does overwrites what an earlier one wrote, and a block's stream
//! decides its shard. A run starts at the block after the highest one in
//! the data directory, so a second run continues with fresh ids even after
//! a kill, including ids whose commands were durable but never
//! acknowledged.
//!
//! The ack log is plain text, one decimal id per line, written with one
//! `write` per line (`O_APPEND`): a kill can only cut the last line, which
//! `check` ignores when it has no newline.

use crate::{CliError, Context, Outcome};
use ringstore::broker::{
    Command, GroupCommand, Metadata, Rejection, StreamCommand, TopicCommand, PARTITIONS_MAX,
};
use ringstore::runtime::{shard_for_key, Client, Engine};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Streams the stress load spreads over (blocks go round-robin).
const STREAMS: u64 = 16;
/// Ids per block: one per partition of the topic.
const IDS_PER_BLOCK: u64 = PARTITIONS_MAX as u64;
/// The topic in every stress stream.
const TOPIC: &str = "t";
/// Default concurrent submitters.
const CLIENTS_DEFAULT: usize = 32;

/// `ringstore stress`.
#[derive(Debug, clap::Args)]
pub struct StressArgs {
    /// Where to append the id of every acknowledged command.
    #[arg(long, value_name = "FILE")]
    pub ack_log: PathBuf,
    /// Shards (default: what the data dir holds, else the config's count).
    #[arg(long)]
    pub shards: Option<usize>,
    /// Concurrent submitters (threads using the client handle).
    #[arg(long, default_value_t = CLIENTS_DEFAULT)]
    pub clients: usize,
    /// Stop after this many seconds (default: run until killed).
    #[arg(long, value_name = "SECONDS", value_parser = parse_duration)]
    pub duration: Option<Duration>,
}

/// `ringstore check`.
#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// The ack log `stress` wrote.
    #[arg(long, value_name = "FILE")]
    pub ack_log: PathBuf,
}

/// Longest `--duration`: a year.
const DURATION_SECS_MAX: f64 = 365.0 * 24.0 * 3600.0;

/// `--duration`: seconds, above 0 and at most [`DURATION_SECS_MAX`].
fn parse_duration(text: &str) -> Result<Duration, String> {
    let seconds: f64 = text
        .parse()
        .map_err(|e| format!("{text:?}: not a number of seconds: {e}"))?;
    if !(seconds > 0.0 && seconds <= DURATION_SECS_MAX) {
        return Err(format!(
            "{text:?}: seconds above 0 and at most {DURATION_SECS_MAX} (a year)"
        ));
    }
    Ok(Duration::from_secs_f64(seconds))
}

fn stream_of(block: u64) -> String {
    format!("stress-{}", block % STREAMS)
}

fn group_of(block: u64) -> String {
    format!("g{block}")
}

/// The offset id `id` commits: a bijective mix of the id, so a value
/// belonging to another id never passes.
fn content(id: u64) -> u64 {
    let mut z = id.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Starts the engine on the data dir: the shard count the dir records, else
/// `requested`, else the config's.
pub fn start_engine(
    context: &Context,
    requested: Option<usize>,
) -> Result<Engine<Metadata>, CliError> {
    let recorded = ringstore::runtime::startup::read_manifest(&context.data_dir)?;
    let shards = requested
        .or(recorded)
        .unwrap_or(context.config.engine.shards);
    let checkpoint = context.config.checkpoint.clone();
    let pin = std::env::var_os("RINGSTORE_NO_PIN").is_none();
    let mut builder = Engine::<Metadata>::builder();
    // Snapshots to object storage when the config has an [object_store].
    if let Some(section) = &context.config.object_store {
        builder = builder.object_store(section.settings(&context.data_dir)?);
    }
    builder
        .data_dir(&context.data_dir)
        .shards(shards)
        .pin(pin)
        .configure_shards(move |_, shard| {
            let mut policy = ringstore::CheckpointPolicy {
                bytes_max: checkpoint.bytes_max,
                ..Default::default()
            };
            policy.ops_max = checkpoint.ops_max;
            shard.checkpoint_policy(policy)
        })
        .start()
        .map_err(|e| {
            CliError(format!(
                "starting the engine in {}: {e}",
                context.data_dir.display()
            ))
        })
}

fn submit(client: &Client<Metadata>, command: Command) -> Result<(), CliError> {
    let key = command.routing_key().to_string();
    match client.submit_blocking(&key, command) {
        Ok(Ok(_)) | Ok(Err(Rejection::Duplicate { .. })) => Ok(()),
        Ok(Err(rejection)) => Err(CliError(format!("setup command refused: {rejection}"))),
        Err(e) => Err(CliError(format!("setup command failed: {e}"))),
    }
}

/// The highest block any shard holds (0: none).
fn highest_block(client: &Client<Metadata>) -> Result<u64, CliError> {
    let mut highest = 0;
    for shard in 0..client.shards() {
        let found = futures_lite::future::block_on(client.read_shard(shard, |m: &Metadata| {
            m.groups()
                .iter()
                .filter(|(key, _)| key.stream.starts_with("stress-") && key.topic == TOPIC)
                .filter_map(|(key, _)| key.group.strip_prefix('g')?.parse::<u64>().ok())
                .max()
                .unwrap_or(0)
        }))?;
        highest = highest.max(found);
    }
    Ok(highest)
}

/// Runs `ringstore stress`.
pub fn run_stress(context: &Context, args: StressArgs) -> Result<Outcome, CliError> {
    if args.clients == 0 {
        return Err(CliError("--clients must be at least 1".into()));
    }
    let engine = start_engine(context, args.shards)?;
    let client = engine.client();
    for stream in 0..STREAMS {
        let name = stream_of(stream);
        submit(
            &client,
            Command::Stream(StreamCommand::Create { name: name.clone() }),
        )?;
        submit(
            &client,
            Command::Topic(TopicCommand::Create {
                stream: name,
                name: TOPIC.into(),
                partitions: PARTITIONS_MAX,
                config: Vec::new(),
            }),
        )?;
    }
    let first_block = highest_block(&client)? + 1;
    let ack_log = open_ack_log(&args.ack_log)?;
    eprintln!(
        "stress: {} shards, {} clients, ids from {} (block {first_block}); ack log {}",
        engine.shards(),
        args.clients,
        first_block * IDS_PER_BLOCK,
        args.ack_log.display()
    );

    let shared = Arc::new(StressShared {
        next_block: AtomicU64::new(first_block),
        acknowledged: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        ack_log,
        ack_log_path: args.ack_log.clone(),
    });
    let started = Instant::now();
    let submitters: Vec<_> = (0..args.clients)
        .map(|_| {
            let client = client.clone();
            let shared = shared.clone();
            std::thread::spawn(move || submitter(&client, &shared))
        })
        .collect();
    let deadline = args.duration;
    let progress = crate::output::spinner("acknowledged", context.json);
    while deadline.is_none_or(|d| started.elapsed() < d) && !shared.stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(100));
        progress.set_position(shared.acknowledged.load(Ordering::Relaxed));
    }
    shared.stop.store(true, Ordering::Relaxed);
    progress.finish_and_clear();
    let mut failure = None;
    for submitter in submitters {
        match submitter.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                failure.get_or_insert(e);
            }
            Err(_) => {
                failure.get_or_insert(CliError("a submitter thread panicked".into()));
            }
        }
    }
    engine
        .shutdown(false)
        .map_err(|e| CliError(format!("shutting down: {e}")))?;
    if let Some(e) = failure {
        return Err(e);
    }
    let acknowledged = shared.acknowledged.load(Ordering::Relaxed);
    let seconds = started.elapsed().as_secs_f64();
    let mut out = crate::output::Out::new();
    if context.json {
        out.json(&serde_json::json!({
            "acknowledged": acknowledged,
            "seconds": seconds,
            "commands_per_second": acknowledged as f64 / seconds,
        }))?;
    } else {
        out.line(format!(
            "stress: {acknowledged} commands acknowledged in {seconds:.1} s ({:.0}/s)",
            acknowledged as f64 / seconds
        ))?;
    }
    out.flush()?;
    Ok(Outcome::Ok)
}

struct StressShared {
    next_block: AtomicU64,
    acknowledged: AtomicU64,
    stop: AtomicBool,
    ack_log: std::fs::File,
    ack_log_path: PathBuf,
}

fn submitter(client: &Client<Metadata>, shared: &StressShared) -> Result<(), CliError> {
    while !shared.stop.load(Ordering::Relaxed) {
        let block = shared.next_block.fetch_add(1, Ordering::Relaxed);
        let stream = stream_of(block);
        let group = group_of(block);
        let create = Command::Group(GroupCommand::Create {
            stream: stream.clone(),
            topic: TOPIC.into(),
            name: group.clone(),
        });
        match client.submit_blocking(&stream, create) {
            Ok(Ok(_)) => {}
            Ok(Err(rejection)) => {
                return Err(CliError(format!(
                    "creating group {group} refused: {rejection}"
                )))
            }
            Err(ringstore::Error::Closed) => return Ok(()),
            Err(e) => return Err(CliError(format!("creating group {group}: {e}"))),
        }
        for partition in 0..PARTITIONS_MAX {
            if shared.stop.load(Ordering::Relaxed) {
                return Ok(());
            }
            let id = block * IDS_PER_BLOCK + u64::from(partition);
            let commit = Command::Group(GroupCommand::CommitOffset {
                stream: stream.clone(),
                topic: TOPIC.into(),
                group: group.clone(),
                partition,
                offset: content(id),
            });
            match client.submit_blocking(&stream, commit) {
                Ok(Ok(_)) => {}
                Ok(Err(rejection)) => {
                    return Err(CliError(format!("id {id} refused: {rejection}")))
                }
                Err(ringstore::Error::Closed) => return Ok(()),
                Err(e) => return Err(CliError(format!("id {id}: {e}"))),
            }
            // Acknowledged: only now does the id reach the log.
            (&shared.ack_log)
                .write_all(format!("{id}\n").as_bytes())
                .map_err(|e| {
                    CliError(format!(
                        "appending to {}: {e}",
                        shared.ack_log_path.display()
                    ))
                })?;
            shared.acknowledged.fetch_add(1, Ordering::Relaxed);
        }
    }
    Ok(())
}

/// Opens the ack log for appending, first cutting a last line a kill left
/// without its newline (appending after it would glue two ids into one).
fn open_ack_log(path: &Path) -> Result<std::fs::File, CliError> {
    let failed =
        |e: std::io::Error| CliError(format!("opening the ack log {}: {e}", path.display()));
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(failed)?;
    let text = std::fs::read(path).map_err(failed)?;
    let complete = text
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |end| end + 1);
    if complete < text.len() {
        file.set_len(complete as u64).map_err(failed)?;
    }
    Ok(file)
}

/// The ids of an ack log in order; a last line without its newline (cut by
/// a kill) is ignored, any other malformed line is an error naming it.
pub fn read_ack_log(path: &Path) -> Result<Vec<u64>, CliError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| CliError(format!("reading the ack log {}: {e}", path.display())))?;
    let complete = match text.rfind('\n') {
        Some(end) => &text[..=end],
        None => "",
    };
    complete
        .lines()
        .enumerate()
        .map(|(index, line)| {
            line.parse().map_err(|_| {
                CliError(format!(
                    "{}: line {} is not an id: {line:?}",
                    path.display(),
                    index + 1
                ))
            })
        })
        .collect()
}

/// Runs `ringstore check`.
pub fn run_check(context: &Context, args: CheckArgs) -> Result<Outcome, CliError> {
    let ids = read_ack_log(&args.ack_log)?;
    if ringstore::runtime::startup::read_manifest(&context.data_dir)?.is_none() {
        return Err(CliError(format!(
            "{} is not an engine data directory (no `engine` manifest)",
            context.data_dir.display()
        )));
    }
    let started = Instant::now();
    let engine = start_engine(context, None)?;
    let opened = started.elapsed();
    let client = engine.client();
    let shards = client.shards();
    // Each shard checks its own ids: (position in the log, id).
    let mut per_shard: BTreeMap<usize, Vec<(usize, u64)>> = BTreeMap::new();
    for (position, &id) in ids.iter().enumerate() {
        let shard = shard_for_key(stream_of(id / IDS_PER_BLOCK).as_bytes(), shards);
        per_shard.entry(shard).or_default().push((position, id));
    }
    let mut first_bad: Option<(usize, u64, String)> = None;
    for (shard, ids) in per_shard {
        let bad = futures_lite::future::block_on(client.read_shard(shard, move |m: &Metadata| {
            ids.into_iter().find_map(|(position, id)| {
                let block = id / IDS_PER_BLOCK;
                let partition = (id % IDS_PER_BLOCK) as u32;
                let problem = match m.group(&stream_of(block), TOPIC, &group_of(block)) {
                    None => Some(format!("group {} missing", group_of(block))),
                    Some(group) => match group.offsets.get(&partition) {
                        None => Some(format!("no offset for partition {partition}")),
                        Some(&offset) if offset != content(id) => {
                            Some(format!("offset {offset}, expected {}", content(id)))
                        }
                        Some(_) => None,
                    },
                };
                problem.map(|p| (position, id, p))
            })
        }))?;
        if let Some(bad) = bad {
            if first_bad.as_ref().is_none_or(|first| bad.0 < first.0) {
                first_bad = Some(bad);
            }
        }
    }
    engine
        .shutdown(false)
        .map_err(|e| CliError(format!("shutting down: {e}")))?;
    let mut out = crate::output::Out::new();
    match &first_bad {
        None => {
            if context.json {
                out.json(&serde_json::json!({
                    "ok": true, "ids": ids.len(), "open_seconds": opened.as_secs_f64(),
                }))?;
            } else {
                out.line(format!(
                    "check: all {} acknowledged ids present with the right content \
                     (engine opened in {:.2} s)",
                    ids.len(),
                    opened.as_secs_f64()
                ))?;
            }
        }
        Some((position, id, problem)) => {
            if context.json {
                out.json(&serde_json::json!({
                    "ok": false, "ids": ids.len(), "first_missing": id,
                    "line": position + 1, "problem": problem,
                }))?;
            } else {
                out.line(format!(
                    "check: FAILED: acknowledged id {id} (ack log line {}) is missing: {problem}",
                    position + 1
                ))?;
            }
        }
    }
    out.flush()?;
    Ok(Outcome::from_damaged(first_bad.is_some()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cut_last_line_is_ignored_and_a_bad_line_is_named() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("acks");
        std::fs::write(&path, "1\n2\n3").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(read_ack_log(&path).ok(), Some(vec![1, 2]));
        std::fs::write(&path, "1\nx\n3\n").unwrap_or_else(|e| panic!("{e}"));
        let err = read_ack_log(&path).err().map(|e| e.0).unwrap_or_default();
        assert!(err.contains("line 2"), "{err}");
    }

    #[test]
    fn reopening_the_ack_log_cuts_a_torn_last_line() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("acks");
        std::fs::write(&path, "1\n2\n12").unwrap_or_else(|e| panic!("{e}"));
        let mut file = open_ack_log(&path).unwrap_or_else(|e| panic!("{}", e.0));
        file.write_all(b"345\n").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(read_ack_log(&path).ok(), Some(vec![1, 2, 345]));
    }

    #[test]
    fn content_tells_ids_apart() {
        let values: std::collections::HashSet<u64> = (0..100_000).map(content).collect();
        assert_eq!(values.len(), 100_000);
    }
}

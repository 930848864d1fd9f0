//! A load client for the `broker` example: many connections committing
//! consumer-group offsets, pipelined, with per-request latency.
//!
//! Setup creates `--streams-per-shard` streams on every shard (names chosen
//! so that each shard owns the same number), each with a topic `load` of
//! `--partitions` partitions and a group `load`; a rerun on the same data
//! directory finds them there and goes on. Then each of `--connections`
//! connections picks a stream, connects to the shard that owns it and
//! keeps up to `--window` commit-offset commands outstanding, for
//! `--duration` seconds or `--requests` commands in all. At the end it
//! prints the throughput, the latency percentiles (send to reply, measured
//! by the client), the shards' group-commit figures over the run, and one
//! JSON line for scripts.
//!
//! ```text
//! cargo build --release -p ringstore --example broker --example broker_load
//! cargo run --release -p ringstore --example broker -- --shards 2 --duration 30 &
//! sleep 1 && cargo run --release -p ringstore --example broker_load -- --shards 2 --duration 5
//! ```
//!
//! `--shards` and `--base-port` must match the broker's (checked at
//! setup: every shard reports its shard count).

mod broker_proto;
// The `ringstore` tool's log setup (stderr, `RUST_LOG`, warnings by
// default), so the load client logs as the tool does.
#[path = "../src/bin/ringstore/logging.rs"]
mod logging;

use broker_proto::{
    decode_payload, encode_frame, frame_len, shard_addr, shard_for_key, BlockingClient, Query,
    RejectionCode, Request, Response, ShardReport, TopicInfo, BASE_PORT_DEFAULT,
    FRAME_HEADER_BYTES,
};
use clap::Parser;
use hdrhistogram::Histogram;
use ringstore::broker::{
    Command, GroupCommand, Reply, StreamCommand, TopicCommand, PARTITIONS_MAX,
};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};

/// The topic and the group of every load stream.
const TOPIC: &str = "load";
const GROUP: &str = "load";
/// Candidate stream names tried to give every shard its streams.
const NAME_CANDIDATES_MAX: usize = 1 << 20;
/// Setup's wait for one reply, and the connections' connect timeout.
const SETUP_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest latency the histogram tracks, in µs (larger ones are
/// clamped to it).
const LATENCY_US_MAX: u64 = 60_000_000;
/// The run's length when neither `--duration` nor `--requests` is given.
const DURATION_SECS_DEFAULT: u64 = 5;

/// Loads the broker example with pipelined commit-offset commands.
#[derive(Parser, Debug)]
struct Args {
    /// Connections, spread over the streams (so over the shards).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u16).range(1..=4096))]
    connections: u16,
    /// Run for this many seconds (default 5).
    #[arg(long, conflicts_with = "requests")]
    duration: Option<u64>,
    /// Send this many commands in all, instead of running for a time.
    #[arg(long)]
    requests: Option<u64>,
    /// The broker's shard count. Default: one per CPU, like the broker's.
    #[arg(long, default_value_t = default_shards())]
    shards: usize,
    /// The broker's port of shard 0.
    #[arg(long, default_value_t = BASE_PORT_DEFAULT)]
    base_port: u16,
    /// The broker's host.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Commands outstanding per connection.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=64))]
    window: u16,
    /// Streams per shard.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=1024))]
    streams_per_shard: u16,
    /// Partitions of each stream's topic.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=i64::from(PARTITIONS_MAX)))]
    partitions: u32,
    /// Client threads (tokio workers).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=256))]
    threads: u16,
}

fn default_shards() -> usize {
    ringstore::runtime::startup::available_cpus().len().max(1)
}

/// A stream the load commits to, and where it lives.
#[derive(Debug, Clone)]
struct Target {
    stream: String,
    shard: usize,
    addr: SocketAddr,
    partitions: u32,
}

/// When a connection stops sending.
#[derive(Debug, Clone, Copy)]
enum Plan {
    Until(Instant),
    Count(u64),
}

impl Plan {
    fn may_send(self, sent: u64) -> bool {
        match self {
            Plan::Until(deadline) => Instant::now() < deadline,
            Plan::Count(count) => sent < count,
        }
    }
}

/// What one connection saw.
struct ConnectionResult {
    latency_us: Histogram<u64>,
    committed: u64,
    refused: u64,
    first_refusal: Option<String>,
}

fn main() -> ExitCode {
    logging::init_logging();
    let args = Args::parse();
    match run(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("broker_load: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the load; `Ok(false)` if some connection failed or a command was
/// refused.
fn run(args: &Args) -> Result<bool, String> {
    if args.shards == 0 {
        return Err("--shards must be at least 1".into());
    }
    let addrs: Vec<SocketAddr> = (0..args.shards)
        .map(|shard| {
            shard_addr(&args.host, args.base_port, shard)
                .ok_or_else(|| format!("no address for shard {shard} on {}", args.host))
        })
        .collect::<Result<_, _>>()?;
    let targets = setup(args, &addrs)?;
    let before = shard_reports(&addrs)?;

    let connections = usize::from(args.connections);
    let plans: Vec<Plan> = match (args.requests, args.duration) {
        (Some(requests), _) => (0..connections as u64)
            .map(|c| {
                let share = requests / connections as u64;
                Plan::Count(share + u64::from(c < requests % connections as u64))
            })
            .collect(),
        (None, duration) => {
            let seconds = duration.unwrap_or(DURATION_SECS_DEFAULT);
            let deadline = Instant::now() + Duration::from_secs(seconds);
            vec![Plan::Until(deadline); connections]
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(usize::from(args.threads))
        .enable_all()
        .build()
        .map_err(|e| format!("start the client runtime: {e}"))?;
    let window = usize::from(args.window);
    let (results, elapsed) = runtime.block_on(async {
        let started = Instant::now();
        let tasks: Vec<_> = plans
            .into_iter()
            .enumerate()
            .map(|(c, plan)| {
                let target = targets[c % targets.len()].clone();
                tokio::spawn(drive(target, plan, window, c as u64))
            })
            .collect();
        let mut results = Vec::with_capacity(tasks.len());
        for task in tasks {
            results.push(
                task.await
                    .unwrap_or_else(|e| Err(format!("task failed: {e}"))),
            );
        }
        (results, started.elapsed())
    });
    let after = shard_reports(&addrs)?;

    let mut latency_us = new_histogram()?;
    let (mut committed, mut refused) = (0u64, 0u64);
    let mut failures = Vec::new();
    let mut first_refusal = None;
    for result in results {
        match result {
            Ok(result) => {
                latency_us
                    .add(&result.latency_us)
                    .map_err(|e| format!("merge histograms: {e}"))?;
                committed += result.committed;
                refused += result.refused;
                first_refusal = first_refusal.or(result.first_refusal);
            }
            Err(e) => failures.push(e),
        }
    }
    let seconds = elapsed.as_secs_f64();
    let per_second = committed as f64 / seconds.max(f64::EPSILON);
    let quantile_us = |q: f64| latency_us.value_at_quantile(q);
    let ms = |us: u64| us as f64 / 1000.0;
    println!(
        "{connections} connections (window {window}) over {} streams on {} shards, {seconds:.2} s",
        targets.len(),
        args.shards
    );
    println!("  {committed} offsets committed, {refused} refused: {per_second:.0} requests/s");
    println!(
        "  latency: p50 {:.3} ms, p99 {:.3} ms, p999 {:.3} ms, max {:.3} ms",
        ms(quantile_us(0.5)),
        ms(quantile_us(0.99)),
        ms(quantile_us(0.999)),
        ms(latency_us.max())
    );
    for (before, after) in before.iter().zip(&after) {
        let commands = after.commands_applied - before.commands_applied;
        let writes = after.journal_writes - before.journal_writes;
        let entries = after.journal_entries - before.journal_entries;
        println!(
            "  shard {}: {commands} commands, {writes} journal writes ({:.1} entries per write, \
             most {}), {} fsyncs, {} checkpoints, {} waits for a full ring",
            after.shard,
            entries as f64 / writes.max(1) as f64,
            after.batch_entries_max,
            after.journal_fsyncs - before.journal_fsyncs,
            after.checkpoints - before.checkpoints,
            after.ring_full_waits - before.ring_full_waits,
        );
    }
    if let Some(refusal) = &first_refusal {
        println!("  first refusal: {refusal}");
    }
    for failure in &failures {
        eprintln!("broker_load: a connection failed: {failure}");
    }
    let summary = serde_json::json!({
        "connections": connections,
        "window": window,
        "shards": args.shards,
        "streams": targets.len(),
        "seconds": seconds,
        "requests": committed,
        "refused": refused,
        "failed_connections": failures.len(),
        "requests_per_sec": per_second,
        "p50_us": quantile_us(0.5),
        "p99_us": quantile_us(0.99),
        "p999_us": quantile_us(0.999),
        "max_us": latency_us.max(),
    });
    println!("{summary}");
    Ok(failures.is_empty() && refused == 0)
}

fn new_histogram() -> Result<Histogram<u64>, String> {
    Histogram::new_with_bounds(1, LATENCY_US_MAX, 3).map_err(|e| format!("histogram: {e}"))
}

/// Creates the load's streams, topics and groups (or finds them from an
/// earlier run), `--streams-per-shard` on every shard.
fn setup(args: &Args, addrs: &[SocketAddr]) -> Result<Vec<Target>, String> {
    let per_shard = usize::from(args.streams_per_shard);
    let mut names: Vec<Vec<String>> = vec![Vec::new(); args.shards];
    let mut missing = args.shards;
    for n in 0..NAME_CANDIDATES_MAX {
        let name = format!("load-{n}");
        let shard = shard_for_key(name.as_bytes(), args.shards);
        if names[shard].len() < per_shard {
            names[shard].push(name);
            if names[shard].len() == per_shard {
                missing -= 1;
                if missing == 0 {
                    break;
                }
            }
        }
    }
    if missing > 0 {
        return Err(format!(
            "found no {per_shard} stream names for each of {} shards",
            args.shards
        ));
    }
    let mut targets = Vec::new();
    for (shard, (&addr, names)) in addrs.iter().zip(names).enumerate() {
        let mut client = BlockingClient::connect(addr, SETUP_TIMEOUT)
            .map_err(|e| format!("connect to shard {shard} at {addr}: {e}"))?;
        let report = stats(&mut client, shard, addr)?;
        if report.shards != args.shards {
            return Err(format!(
                "the broker at {addr} runs {} shards; --shards says {}",
                report.shards, args.shards
            ));
        }
        for stream in names {
            let commands = [
                Command::Stream(StreamCommand::Create {
                    name: stream.clone(),
                }),
                Command::Topic(TopicCommand::Create {
                    stream: stream.clone(),
                    name: TOPIC.into(),
                    partitions: args.partitions,
                    config: Vec::new(),
                }),
                Command::Group(GroupCommand::Create {
                    stream: stream.clone(),
                    topic: TOPIC.into(),
                    name: GROUP.into(),
                }),
            ];
            for command in commands {
                match call(&mut client, &Request::Submit(command), addr)? {
                    Response::Applied(Reply::Created { .. }) => {}
                    Response::Rejected {
                        code: RejectionCode::Duplicate,
                        ..
                    } => {} // an earlier run created it
                    other => return Err(format!("setup of {stream} on {addr}: {other:?}")),
                }
            }
            // The topic may be from an earlier run with another count.
            let describe = Request::Read(Query::DescribeTopic {
                stream: stream.clone(),
                topic: TOPIC.into(),
            });
            let partitions = match call(&mut client, &describe, addr)? {
                Response::Topic(Some(TopicInfo { partitions, .. })) => partitions,
                other => return Err(format!("describe {stream}/{TOPIC} on {addr}: {other:?}")),
            };
            targets.push(Target {
                stream,
                shard,
                addr,
                partitions,
            });
        }
    }
    Ok(targets)
}

fn call(
    client: &mut BlockingClient,
    request: &Request,
    addr: SocketAddr,
) -> Result<Response, String> {
    client
        .call(request)
        .map_err(|e| format!("{request:?} to {addr}: {e}"))
}

fn stats(
    client: &mut BlockingClient,
    shard: usize,
    addr: SocketAddr,
) -> Result<ShardReport, String> {
    match call(client, &Request::Read(Query::Stats), addr)? {
        Response::Stats(report) if report.shard == shard => Ok(report),
        Response::Stats(report) => Err(format!(
            "{addr} is shard {}, expected shard {shard}: check --base-port",
            report.shard
        )),
        other => Err(format!("stats of {addr}: {other:?}")),
    }
}

/// Every shard's counters, in shard order.
fn shard_reports(addrs: &[SocketAddr]) -> Result<Vec<ShardReport>, String> {
    addrs
        .iter()
        .enumerate()
        .map(|(shard, &addr)| {
            let mut client = BlockingClient::connect(addr, SETUP_TIMEOUT)
                .map_err(|e| format!("connect to shard {shard} at {addr}: {e}"))?;
            stats(&mut client, shard, addr)
        })
        .collect()
}

/// One connection: keeps `window` commits outstanding until `plan` says
/// stop, then waits for the last replies.
async fn drive(
    target: Target,
    plan: Plan,
    window: usize,
    seed: u64,
) -> Result<ConnectionResult, String> {
    let context = |what: &str, e: &dyn std::fmt::Display| {
        format!(
            "{} (shard {}, {}): {what}: {e}",
            target.stream, target.shard, target.addr
        )
    };
    let socket = tokio::time::timeout(SETUP_TIMEOUT, tokio::net::TcpStream::connect(target.addr))
        .await
        .map_err(|e| context("connect", &e))?
        .map_err(|e| context("connect", &e))?;
    socket
        .set_nodelay(true)
        .map_err(|e| context("nodelay", &e))?;
    let (reader, mut writer) = socket.into_split();
    let mut reader = BufReader::new(reader);
    let mut result = ConnectionResult {
        latency_us: new_histogram()?,
        committed: 0,
        refused: 0,
        first_refusal: None,
    };
    let mut sent_at: VecDeque<Instant> = VecDeque::with_capacity(window);
    let (mut out, mut payload) = (Vec::new(), Vec::new());
    let mut sent = 0u64;
    loop {
        while sent_at.len() < window && plan.may_send(sent) {
            let commit = Command::Group(GroupCommand::CommitOffset {
                stream: target.stream.clone(),
                topic: TOPIC.into(),
                group: GROUP.into(),
                partition: ((seed + sent) % u64::from(target.partitions)) as u32,
                offset: sent,
            });
            encode_frame(&Request::Submit(commit), &mut out).map_err(|e| context("encode", &e))?;
            sent_at.push_back(Instant::now());
            sent += 1;
        }
        if !out.is_empty() {
            writer
                .write_all(&out)
                .await
                .map_err(|e| context("send", &e))?;
            out.clear();
        }
        let Some(started) = sent_at.pop_front() else {
            break;
        };
        let response = read_response(&mut reader, &mut payload)
            .await
            .map_err(|e| context("receive", &e))?;
        let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        result
            .latency_us
            .saturating_record(micros.clamp(1, LATENCY_US_MAX));
        match response {
            Response::Applied(Reply::OffsetCommitted) => result.committed += 1,
            Response::Rejected { message, .. } | Response::Failed { message } => {
                result.refused += 1;
                result.first_refusal.get_or_insert(message);
            }
            other => return Err(context("unexpected reply", &format!("{other:?}"))),
        }
    }
    writer.shutdown().await.map_err(|e| context("close", &e))?;
    Ok(result)
}

/// Reads one reply frame.
async fn read_response(
    reader: &mut BufReader<tokio::net::tcp::OwnedReadHalf>,
    payload: &mut Vec<u8>,
) -> Result<Response, String> {
    let mut header = [0u8; FRAME_HEADER_BYTES];
    reader
        .read_exact(&mut header)
        .await
        .map_err(|e| e.to_string())?;
    payload.resize(frame_len(header).map_err(|e| e.to_string())?, 0);
    reader
        .read_exact(payload)
        .await
        .map_err(|e| e.to_string())?;
    decode_payload(payload).map_err(|e| e.to_string())
}

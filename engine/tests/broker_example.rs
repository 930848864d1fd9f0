//! The `broker` example's server, end to end: one shard behind a listener
//! on an ephemeral port, driven over plain `std::net::TcpStream`s with the
//! example's own protocol module (`examples/broker_proto`).
//!
//! Pins: commands are applied and durable (they survive a reopen), a
//! duplicate create is rejected with its code, a committed offset reads
//! back, pipelined requests are answered in order with reads seeing the
//! connection's earlier writes, another shard's key is refused, and hostile
//! frames (an oversized length, an undecodable payload, a huge length
//! inside the payload, trailing bytes, a connection cut inside a frame)
//! close only their own connection with a `ProtocolError`, never the
//! server.

#[path = "../examples/broker_proto/mod.rs"]
mod broker_proto;

use broker_proto::server::{serve, Route};
use broker_proto::{
    encode_frame, read_frame, shard_for_key, write_frame, BlockingClient, FrameError, Query,
    RejectionCode, Request, Response, FRAME_BYTES_MAX,
};
use ringstore::broker::{Command, GroupCommand, Metadata, Reply, StreamCommand, TopicCommand};
use ringstore::Shard;
use std::io::Write;
use std::net::{Shutdown, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The server in these tests is shard 0 of 2, so keys of shard 1 are
/// refused.
const ROUTE: Route = Route {
    shard: 0,
    shards: 2,
};
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// A shard serving a listener on its own reactor thread.
struct Server {
    addr: SocketAddr,
    stop: async_channel::Sender<()>,
    reactor: glommio::ExecutorJoinHandle<()>,
}

impl Server {
    fn start(dir: &Path) -> Server {
        let dir = dir.to_owned();
        let (ready, listening) = std::sync::mpsc::channel();
        let (stop, stopping) = async_channel::bounded::<()>(1);
        let reactor = glommio::LocalExecutorBuilder::default()
            .name("broker-example-test")
            .spawn(move || async move {
                let shard = Shard::<Metadata>::builder(&dir)
                    .open()
                    .await
                    .expect("open shard");
                let listener =
                    glommio::net::TcpListener::bind("127.0.0.1:0").expect("bind a listener");
                ready
                    .send(listener.local_addr().expect("listener address"))
                    .expect("test thread waiting");
                let stop = async move {
                    let _ = stopping.recv().await;
                };
                serve(shard.clone(), listener, ROUTE, stop).await;
                shard.close().await.expect("close shard");
            })
            .expect("start reactor");
        let addr = listening.recv().expect("the server listens");
        Server {
            addr,
            stop,
            reactor,
        }
    }

    fn connect(&self) -> BlockingClient {
        BlockingClient::connect(self.addr, REPLY_TIMEOUT).expect("connect")
    }

    /// Stops the listener, closes the shard and joins the reactor
    /// (propagating its panics).
    fn stop(self) {
        drop(self.stop);
        self.reactor.join().expect("the server's reactor panicked");
    }
}

fn temp_dir() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temp dir")
}

/// A stream name that routes to `shard` of [`ROUTE`]'s shards.
fn stream_on(shard: usize) -> String {
    (0..)
        .map(|n| format!("orders-{n}"))
        .find(|name| shard_for_key(name.as_bytes(), ROUTE.shards) == shard)
        .expect("some name routes to every shard")
}

fn create_all(client: &mut BlockingClient, stream: &str) {
    let commands = [
        Command::Stream(StreamCommand::Create {
            name: stream.into(),
        }),
        Command::Topic(TopicCommand::Create {
            stream: stream.into(),
            name: "eu".into(),
            partitions: 4,
            config: vec![("retention.ms".into(), "604800000".into())],
        }),
        Command::Group(GroupCommand::Create {
            stream: stream.into(),
            topic: "eu".into(),
            name: "billing".into(),
        }),
    ];
    for command in commands {
        let reply = client.call(&Request::Submit(command)).expect("reply");
        assert!(
            matches!(reply, Response::Applied(Reply::Created { .. })),
            "{reply:?}"
        );
    }
}

fn commit(stream: &str, partition: u32, offset: u64) -> Request {
    Request::Submit(Command::Group(GroupCommand::CommitOffset {
        stream: stream.into(),
        topic: "eu".into(),
        group: "billing".into(),
        partition,
        offset,
    }))
}

fn offset_of(stream: &str, partition: u32) -> Request {
    Request::Read(Query::CommittedOffset {
        stream: stream.into(),
        topic: "eu".into(),
        group: "billing".into(),
        partition,
    })
}

/// The next reply on a connection the server is about to close: a
/// protocol error, then the end of the stream.
fn expect_protocol_error_then_close(client: &mut BlockingClient) -> String {
    let message = match read_frame::<Response>(client.stream()) {
        Ok(Some(Response::ProtocolError { message })) => message,
        other => panic!("expected a protocol error, got {other:?}"),
    };
    match read_frame::<Response>(client.stream()) {
        Ok(None) => {}
        // The close may come as a reset; either way the connection is gone.
        Err(FrameError::Io(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("expected the connection to close, got {other:?}"),
    }
    message
}

#[test]
fn commands_reads_rejections_and_routing() {
    let dir = temp_dir();
    let server = Server::start(dir.path());
    let stream = stream_on(0);
    let mut client = server.connect();
    create_all(&mut client, &stream);

    let duplicate = Request::Submit(Command::Stream(StreamCommand::Create {
        name: stream.clone(),
    }));
    match client.call(&duplicate).expect("reply") {
        Response::Rejected { code, message } => {
            assert_eq!(code, RejectionCode::Duplicate);
            assert!(message.contains(&stream), "{message}");
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
    assert_eq!(
        client.call(&commit(&stream, 2, 42)).expect("reply"),
        Response::Applied(Reply::OffsetCommitted)
    );
    assert_eq!(
        client.call(&offset_of(&stream, 2)).expect("reply"),
        Response::Offset(Some(42))
    );
    assert_eq!(
        client.call(&offset_of(&stream, 3)).expect("reply"),
        Response::Offset(None)
    );
    match client
        .call(&Request::Read(Query::DescribeStream {
            stream: stream.clone(),
        }))
        .expect("reply")
    {
        Response::Stream(Some(info)) => assert_eq!(info.topics, 1),
        other => panic!("expected the stream, got {other:?}"),
    }
    match client
        .call(&Request::Read(Query::DescribeTopic {
            stream: stream.clone(),
            topic: "eu".into(),
        }))
        .expect("reply")
    {
        Response::Topic(Some(info)) => {
            assert_eq!(info.partitions, 4);
            assert_eq!(
                info.config,
                vec![("retention.ms".to_owned(), "604800000".to_owned())]
            );
        }
        other => panic!("expected the topic, got {other:?}"),
    }

    // Pipelined: three requests in one write, three replies in order; the
    // read sees the commit sent just before it on this connection.
    let mut frames = Vec::new();
    for request in [
        commit(&stream, 1, 7),
        offset_of(&stream, 1),
        commit(&stream, 99, 1),
    ] {
        encode_frame(&request, &mut frames).expect("encode");
    }
    client.stream().write_all(&frames).expect("send");
    let replies: Vec<Response> = (0..3)
        .map(|_| read_frame(client.stream()).expect("reply").expect("open"))
        .collect();
    assert_eq!(replies[0], Response::Applied(Reply::OffsetCommitted));
    assert_eq!(replies[1], Response::Offset(Some(7)));
    assert!(
        matches!(
            replies[2],
            Response::Rejected {
                code: RejectionCode::PartitionOutOfRange,
                ..
            }
        ),
        "{:?}",
        replies[2]
    );

    // Another shard's stream is refused, and nothing is created.
    let foreign = stream_on(1);
    let create = Request::Submit(Command::Stream(StreamCommand::Create {
        name: foreign.clone(),
    }));
    assert_eq!(
        client.call(&create).expect("reply"),
        Response::WrongShard {
            key: foreign.clone(),
            owner: 1,
            shard: 0,
            shards: 2,
        }
    );
    match client.call(&Request::Read(Query::Stats)).expect("reply") {
        Response::Stats(report) => {
            assert_eq!((report.shard, report.shards), (0, 2));
            // Three creates, a duplicate, three commits (one refused).
            assert_eq!(report.commands_applied, 7);
            assert_eq!(report.commands_rejected, 2);
        }
        other => panic!("expected stats, got {other:?}"),
    }
    drop(client);
    server.stop();

    // Acknowledged means durable: the offsets are there after a reopen.
    let offsets = reopen_and_read(dir.path().to_owned(), stream);
    assert_eq!(offsets, vec![(1, 7), (2, 42)]);
}

fn reopen_and_read(dir: PathBuf, stream: String) -> Vec<(u32, u64)> {
    glommio::LocalExecutorBuilder::default()
        .spawn(move || async move {
            let shard = Shard::<Metadata>::builder(&dir)
                .open()
                .await
                .expect("reopen");
            let offsets = shard.read(|m| {
                m.group(&stream, "eu", "billing")
                    .map(|g| g.offsets.iter().map(|(&p, &o)| (p, o)).collect())
                    .unwrap_or_default()
            });
            shard.close().await.expect("close");
            offsets
        })
        .expect("start reactor")
        .join()
        .expect("reactor")
}

#[test]
fn hostile_frames_close_only_their_connection() {
    let dir = temp_dir();
    let server = Server::start(dir.path());
    let stream = stream_on(0);
    let mut good = server.connect();
    create_all(&mut good, &stream);

    // A length far above the limit: refused before anything is allocated.
    let mut oversized = server.connect();
    oversized
        .stream()
        .write_all(&u32::MAX.to_le_bytes())
        .expect("send");
    let message = expect_protocol_error_then_close(&mut oversized);
    assert!(message.contains("FRAME_BYTES_MAX"), "{message}");

    // Just above the limit, too.
    let mut above = server.connect();
    let len = u32::try_from(FRAME_BYTES_MAX + 1).expect("fits");
    above.stream().write_all(&len.to_le_bytes()).expect("send");
    expect_protocol_error_then_close(&mut above);

    // Bytes that are no request.
    let mut garbage = server.connect();
    let mut frame = 5u32.to_le_bytes().to_vec();
    frame.extend_from_slice(&[0xff; 5]);
    garbage.stream().write_all(&frame).expect("send");
    let message = expect_protocol_error_then_close(&mut garbage);
    assert!(message.contains("does not decode"), "{message}");

    // A stream name claiming 2^40 bytes inside a small frame: a decode
    // error, not an allocation. Submit, Stream, Create, then the length
    // (bincode varint: 253 then a little-endian u64).
    let mut huge_name = server.connect();
    let mut payload = vec![0u8, 0, 0, 253];
    payload.extend_from_slice(&(1u64 << 40).to_le_bytes());
    let mut frame = u32::try_from(payload.len())
        .expect("small")
        .to_le_bytes()
        .to_vec();
    frame.extend_from_slice(&payload);
    huge_name.stream().write_all(&frame).expect("send");
    expect_protocol_error_then_close(&mut huge_name);

    // A valid request followed by a stray byte inside the same frame.
    let mut trailing = server.connect();
    let mut frame = Vec::new();
    encode_frame(&offset_of(&stream, 2), &mut frame).expect("encode");
    let payload_len = u32::from_le_bytes(frame[..4].try_into().expect("header")) + 1;
    frame[..4].copy_from_slice(&payload_len.to_le_bytes());
    frame.push(0);
    trailing.stream().write_all(&frame).expect("send");
    let message = expect_protocol_error_then_close(&mut trailing);
    assert!(message.contains("left over"), "{message}");

    // A connection cut inside a frame; the request before it is answered
    // first.
    let mut cut = server.connect();
    write_frame(cut.stream(), &commit(&stream, 0, 5)).expect("send");
    cut.stream()
        .write_all(&[100, 0, 0, 0, 1, 2, 3])
        .expect("send");
    cut.stream().shutdown(Shutdown::Write).expect("half-close");
    assert_eq!(
        read_frame::<Response>(cut.stream()).expect("reply"),
        Some(Response::Applied(Reply::OffsetCommitted))
    );
    let message = expect_protocol_error_then_close(&mut cut);
    assert!(message.contains("inside a frame"), "{message}");

    // The server, and the connection that behaved, are fine.
    assert_eq!(
        good.call(&offset_of(&stream, 0)).expect("reply"),
        Response::Offset(Some(5))
    );
    let mut fresh = server.connect();
    assert_eq!(
        fresh.call(&commit(&stream, 3, 9)).expect("reply"),
        Response::Applied(Reply::OffsetCommitted)
    );
    drop((good, fresh));
    server.stop();
}

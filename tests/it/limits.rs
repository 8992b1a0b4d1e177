//! Limits on connections and streams (`--max-connections`,
//! `--handshake-timeout`, `--idle-timeout`, `--keepalive-*`,
//! `--stream-idle-timeout`, `--stream-max-duration`): a client that opens
//! connections and sends nothing, stops answering, or keeps a stream open
//! cannot hold the server's resources forever.

use std::time::Duration;

use bytes::Bytes;
use consentd::{
    connection::ConnectionLimits,
    pb::{StreamEligibilityRequest, eligibility_service_client::EligibilityServiceClient},
    server::Settings,
};
use tokio::{
    io::AsyncReadExt as _,
    io::AsyncWriteExt as _,
    net::TcpStream,
    sync::mpsc,
    time::{Instant, timeout},
};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

use crate::common::*;

/// The HTTP/2 client connection preface, then an empty SETTINGS frame.
const PREFACE_AND_SETTINGS: &[u8] =
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

fn settings_with(connections: ConnectionLimits) -> Settings {
    Settings {
        connections,
        ..Settings::default()
    }
}

/// Reads until the server closes the connection; how long that took, or
/// `None` when it was still open after `patience`.
async fn closed_within(socket: &mut TcpStream, patience: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut buf = [0u8; 4096];
    let read_all = async {
        loop {
            match socket.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    timeout(patience, read_all).await.ok()?;
    Some(started.elapsed())
}

/// Whether the server answered the socket with its HTTP/2 SETTINGS (it was
/// taken on) rather than closing it at once.
async fn taken_on(socket: &mut TcpStream) -> bool {
    let mut header = [0u8; 9];
    match timeout(Duration::from_secs(5), socket.read_exact(&mut header)).await {
        // The frame type of the server's first frame is SETTINGS (4).
        Ok(Ok(_)) => header[3] == 4,
        _ => false,
    }
}

#[tokio::test]
async fn connections_that_send_nothing_are_closed_after_the_handshake_timeout() {
    let app = spawn_app_with(settings_with(ConnectionLimits {
        max_connections: 512,
        handshake_timeout: Duration::from_secs(1),
        idle_timeout: Duration::from_secs(600),
    }))
    .await;
    let mut silent = Vec::new();
    for _ in 0..200 {
        silent.push(TcpStream::connect(app.addr).await.expect("connect"));
    }
    // One sends the preface and settings, and then no request.
    let mut preface_only = TcpStream::connect(app.addr).await.expect("connect");
    preface_only
        .write_all(PREFACE_AND_SETTINGS)
        .await
        .expect("send the preface");
    silent.push(preface_only);
    for socket in &mut silent {
        let closed = closed_within(socket, Duration::from_secs(10)).await;
        assert!(
            closed.is_some(),
            "a connection that sent no request is still open 10 s after it was opened"
        );
    }
    // Other clients are served all the while.
    check_one(&app, "p-1").await;
}

#[tokio::test]
async fn connections_beyond_the_limit_are_closed_at_once_until_one_ends() {
    let app = spawn_app_with(settings_with(ConnectionLimits {
        max_connections: 4,
        handshake_timeout: Duration::from_secs(60),
        idle_timeout: Duration::from_secs(600),
    }))
    .await;
    // The harness's channel may hold one connection: fill the rest.
    check_one(&app, "p-1").await;
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut socket = TcpStream::connect(app.addr).await.expect("connect");
        assert!(taken_on(&mut socket).await, "within the limit");
        held.push(socket);
    }
    let mut extra = TcpStream::connect(app.addr).await.expect("connect");
    let closed = closed_within(&mut extra, Duration::from_secs(5)).await;
    assert!(
        closed.is_some(),
        "a connection beyond --max-connections is closed at once"
    );
    // The ones within the limit are still open.
    for socket in &mut held {
        assert_eq!(
            closed_within(socket, Duration::from_millis(200)).await,
            None
        );
    }
    // One ends: its place is free again.
    drop(held.pop());
    let started = Instant::now();
    loop {
        let mut socket = TcpStream::connect(app.addr).await.expect("connect");
        if taken_on(&mut socket).await {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the place of a closed connection was not given back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An HTTP/2 client on a connection of its own, and whether the server has
/// closed that connection.
struct RawClient {
    send: h2::client::SendRequest<Bytes>,
    connection: tokio::task::JoinHandle<()>,
}

impl RawClient {
    async fn connect(app: &TestApp) -> Self {
        let socket = TcpStream::connect(app.addr).await.expect("connect");
        let (send, connection) = h2::client::handshake(socket).await.expect("handshake");
        let connection = tokio::spawn(async move {
            let _ = connection.await;
        });
        Self { send, connection }
    }

    /// Starts a gRPC call of `path` with an empty request message; the
    /// response stream.
    async fn call(&mut self, path: &str) -> h2::RecvStream {
        let request = http::Request::post(format!("http://localhost{path}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())
            .expect("request");
        let mut send = self.send.clone().ready().await.expect("ready");
        let (response, mut body) = send.send_request(request, false).expect("send");
        // One empty message: no compression, length 0.
        body.send_data(Bytes::from_static(&[0, 0, 0, 0, 0]), true)
            .expect("send the message");
        let response = response.await.expect("response headers");
        assert_eq!(response.status(), 200);
        response.into_body()
    }

    /// How long until the server closed the connection, or `None` when it
    /// was still open after `patience`.
    async fn closed_within(&mut self, patience: Duration) -> Option<Duration> {
        let started = Instant::now();
        timeout(patience, &mut self.connection).await.ok()?.ok()?;
        Some(started.elapsed())
    }
}

#[tokio::test]
async fn a_connection_is_closed_after_the_idle_timeout_but_not_during_a_request() {
    let app = spawn_app_with(settings_with(ConnectionLimits {
        max_connections: 512,
        handshake_timeout: Duration::from_secs(1),
        idle_timeout: Duration::from_secs(1),
    }))
    .await;
    let mut client = RawClient::connect(&app).await;
    // A watch of the health status is one long request: the connection
    // stays open while it is in flight, for many idle timeouts.
    let mut watch = client.call("/grpc.health.v1.Health/Watch").await;
    let first = timeout(Duration::from_secs(5), watch.data())
        .await
        .expect("the first status in time");
    assert!(first.is_some_and(|data| data.is_ok()), "a status message");
    assert_eq!(
        client.closed_within(Duration::from_secs(3)).await,
        None,
        "a connection with a request in flight was closed"
    );
    // The watch ends (the client cancels it): the idle timeout starts then.
    drop(watch);
    let closed = client.closed_within(Duration::from_secs(10)).await;
    let closed = closed.expect("an idle connection is closed after --idle-timeout");
    assert!(
        closed >= Duration::from_millis(900),
        "closed {closed:?} after the request ended, before the idle timeout"
    );
}

#[tokio::test]
async fn a_peer_that_does_not_answer_keepalive_pings_is_closed() {
    let app = spawn_app_with(Settings {
        connections: ConnectionLimits {
            max_connections: 512,
            handshake_timeout: Duration::from_secs(600),
            idle_timeout: Duration::from_secs(600),
        },
        keepalive_interval: Duration::from_millis(500),
        keepalive_timeout: Duration::from_millis(500),
        ..Settings::default()
    })
    .await;
    // A peer that sends the preface and then answers nothing, not even the
    // server's pings; only the keep-alive can find it out.
    let mut socket = TcpStream::connect(app.addr).await.expect("connect");
    socket
        .write_all(PREFACE_AND_SETTINGS)
        .await
        .expect("send the preface");
    let closed = closed_within(&mut socket, Duration::from_secs(10)).await;
    assert!(
        closed.is_some(),
        "a peer that answers no ping is still connected after 10 s"
    );
}

fn chunk(ids: &[&str]) -> StreamEligibilityRequest {
    StreamEligibilityRequest {
        tenant: TENANT.into(),
        channel: consentd::pb::Channel::Email.into(),
        profile_ids: ids.iter().map(|id| (*id).to_owned()).collect(),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_stream_whose_client_stops_sending_is_ended_after_its_idle_timeout() {
    let app = spawn_app_with(Settings {
        stream_idle_timeout: Duration::from_secs(1),
        ..Settings::default()
    })
    .await;
    let (chunks, outbound) = mpsc::channel(4);
    chunks.send(chunk(&["p-1"])).await.expect("queue chunk 1");
    let mut answers = EligibilityServiceClient::new(app.channel.clone())
        .stream_eligibility(ReceiverStream::new(outbound))
        .await
        .expect("open the stream")
        .into_inner();
    let first = answers
        .message()
        .await
        .expect("answer 1")
        .expect("an answer");
    assert_eq!(first.decisions.len(), 1);
    // Late: after the idle timeout, the stream is over.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let _ = chunks.send(chunk(&["p-2"])).await;
    let ended = answers
        .message()
        .await
        .expect_err("the late chunk is not answered");
    assert_eq!(ended.code(), Code::DeadlineExceeded, "{ended:?}");
    assert!(
        ended.message().contains("--stream-idle-timeout"),
        "{}",
        ended.message()
    );
}

#[tokio::test]
async fn a_stream_is_ended_after_its_maximum_duration() {
    let app = spawn_app_with(Settings {
        stream_idle_timeout: Duration::from_secs(10),
        stream_max_duration: Duration::from_secs(2),
        ..Settings::default()
    })
    .await;
    let (chunks, outbound) = mpsc::channel(4);
    let mut answers = EligibilityServiceClient::new(app.channel.clone())
        .stream_eligibility(ReceiverStream::new(outbound))
        .await
        .expect("open the stream")
        .into_inner();
    let started = Instant::now();
    let mut answered = 0;
    let ended = loop {
        // A busy client: a chunk every 200 ms, each answered in time.
        let _ = chunks.send(chunk(&["p-1"])).await;
        match answers.message().await {
            Ok(Some(_)) => answered += 1,
            Ok(None) => panic!("the stream ended without a status"),
            Err(status) => break status,
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the stream outlived --stream-max-duration"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(answered >= 3, "{answered} chunks answered before the end");
    assert_eq!(ended.code(), Code::DeadlineExceeded, "{ended:?}");
    assert!(
        ended.message().contains("--stream-max-duration"),
        "{}",
        ended.message()
    );
}

/// One eligibility check over the harness's channel (the server serves).
async fn check_one(app: &TestApp, id: &str) {
    let mut client = EligibilityServiceClient::new(app.channel.clone());
    client
        .check_eligibility(consentd::pb::CheckEligibilityRequest {
            tenant: TENANT.into(),
            profile_id: id.into(),
            channel: consentd::pb::Channel::Email.into(),
            ..Default::default()
        })
        .await
        .expect("served");
}

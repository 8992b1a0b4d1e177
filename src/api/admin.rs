//! `consent.v1.AdminService`: the online backup (server side), and the client
//! that `consentd backup` uses.
//!
//! The server takes a consistent view of the records as of one moment
//! (`App::snapshot`: writes pause only while it is registered, and nothing is
//! copied), then reads and encodes the records in the export format off the
//! async workers and streams them in chunks of whole lines. The stream is
//! bounded: the encoder waits while the client has not taken the chunks
//! already sent, for `--stream-idle-timeout` at most; then the backup ends
//! with DEADLINE_EXCEEDED and its view is dropped.

use std::time::Instant;

use tokio_stream::StreamExt as _;
use tonic::{
    Request, Response, Status,
    metadata::MetadataValue,
    transport::{Channel, Endpoint},
};

use super::{
    convert::Check,
    stream_limits::{Answers, Ended, StreamLimits, outbox},
};
use crate::{
    app::App,
    data::{DataError, export::write_records, record::Header},
    error::Error,
    pb::{self, admin_service_client::AdminServiceClient, admin_service_server::AdminService},
};

/// Bytes of JSON lines gathered before a chunk is sent (a chunk ends at a
/// line boundary, so it can exceed this by one line).
pub const BACKUP_CHUNK_BYTES: usize = 256 * 1024;
/// Chunks encoded ahead of the client before the encoder waits.
const BACKUP_CHUNKS_BUFFERED: usize = 4;

/// Serves administration.
#[derive(Debug, Clone)]
pub(crate) struct AdminApi {
    /// The application.
    pub(crate) app: App,
}

#[tonic::async_trait]
impl AdminService for AdminApi {
    type BackupStream = Answers<pb::BackupResponse>;

    async fn backup(
        &self,
        request: Request<pb::BackupRequest>,
    ) -> Result<Response<Self::BackupStream>, Status> {
        let req = request.into_inner();
        let tenant = if req.tenant.is_empty() {
            None
        } else {
            let mut check = Check::default();
            let tenant = check.tenant(&req.tenant);
            let (tenant,) = check.finish((tenant,))?;
            Some(tenant)
        };
        let snapshot = self.app.snapshot(tenant.clone()).await?;
        let records_total = u64::try_from(snapshot.len()).unwrap_or(u64::MAX);
        tracing::info!(
            records = records_total,
            writes_paused_ms = snapshot.paused().as_secs_f64() * 1000.0,
            "backup: consistent view taken, records counted"
        );
        let header = Header::new(tenant.as_ref(), self.app.now());
        let (mut answers, stream) = outbox(
            StreamLimits::idle_only(self.app.settings()),
            BACKUP_CHUNKS_BUFFERED,
        );
        let span = tracing::Span::current();
        let runtime = tokio::runtime::Handle::current();
        tokio::task::spawn_blocking(move || {
            span.in_scope(|| {
                let started = Instant::now();
                let mut chunk = Vec::with_capacity(BACKUP_CHUNK_BYTES + 64 * 1024);
                let mut records = 0u64;
                let mut header_line = true;
                let mut send = |data: Vec<u8>, records: u64| {
                    runtime
                        .block_on(answers.send(pb::BackupResponse {
                            data,
                            records,
                            records_total,
                        }))
                        .map_err(|Ended| {
                            std::io::Error::other(
                                "the client went away, or took no chunk for --stream-idle-timeout",
                            )
                        })
                };
                let written = write_records(&header, snapshot.items(), |line| {
                    chunk.extend_from_slice(line);
                    if header_line {
                        header_line = false;
                    } else {
                        records += 1;
                    }
                    if chunk.len() >= BACKUP_CHUNK_BYTES {
                        let full = std::mem::replace(
                            &mut chunk,
                            Vec::with_capacity(BACKUP_CHUNK_BYTES + 64 * 1024),
                        );
                        send(full, std::mem::take(&mut records))?;
                    }
                    Ok(())
                });
                let result = written.and_then(|summary| {
                    if !chunk.is_empty() {
                        send(chunk, records).map_err(DataError::io("streaming the backup"))?;
                    }
                    Ok(summary)
                });
                match result {
                    Ok(summary) => tracing::info!(
                        records = summary.total(),
                        elapsed_ms = started.elapsed().as_secs_f64() * 1000.0,
                        "backup: streamed"
                    ),
                    Err(DataError::Store(e)) => answers.end(Status::from(Error::Storage(e))),
                    Err(error) => tracing::warn!(%error, "backup: stopped"),
                }
            });
        });
        Ok(Response::new(stream))
    }
}

/// Why a backup could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// The server address is not a URI, or the connection failed.
    #[error("cannot connect to the server: {0}")]
    Connect(#[from] tonic::transport::Error),
    /// The API key cannot be sent as a header value.
    #[error("the API key contains characters not allowed in a header")]
    ApiKey,
    /// The server refused or failed the backup.
    #[error("the server answered {}: {}", .0.code(), .0.message())]
    Status(#[from] Status),
    /// Writing the backup failed.
    #[error("cannot write the backup: {0}")]
    Write(#[from] std::io::Error),
}

/// Fetches a backup from the server at `server` (`http://host:port`): one
/// tenant or all, sending `authorization: Bearer <api_key>` when a key is
/// given. Hands each chunk's bytes to `write`, with the records received so
/// far and the total; returns the records received.
pub async fn fetch_backup(
    server: &str,
    tenant: Option<&str>,
    api_key: Option<&str>,
    mut write: impl FnMut(&[u8], u64, u64) -> std::io::Result<()>,
) -> Result<u64, BackupError> {
    let channel: Channel = Endpoint::from_shared(server.to_owned())?.connect().await?;
    let mut client = AdminServiceClient::new(channel);
    let mut request = Request::new(pb::BackupRequest {
        tenant: tenant.unwrap_or_default().to_owned(),
    });
    if let Some(key) = api_key {
        let value =
            MetadataValue::try_from(format!("Bearer {key}")).map_err(|_| BackupError::ApiKey)?;
        request.metadata_mut().insert("authorization", value);
    }
    let mut stream = client.backup(request).await?.into_inner();
    let mut received = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        received += chunk.records;
        write(&chunk.data, received, chunk.records_total)?;
    }
    Ok(received)
}
